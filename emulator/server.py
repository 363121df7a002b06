"""The HTTPS server and the command line (`python -m emulator`, `dvconnect emulator`).

A `ThreadingHTTPServer` on 127.0.0.1 with a `trustme` certificate: one thread per keep-alive
connection, the TLS handshake done in that thread, `TCP_NODELAY`, a lean HTTP/1.1 request parser,
and each response written in one piece, so a fault can also close a connection without writing
anything. On start it prints
the environment lines a client needs, then serves until SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import ssl
import sys
import tempfile
import threading
from datetime import datetime
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import unquote

import trustme
from cryptography import x509

from emulator import messages, seed, twin
from emulator.app import Emulator, SeedOptions
from emulator.clock import Clock, parse_wire
from emulator.context import UNTRACKED_BY_DEFAULT, Config, Context
from emulator.faults import FaultPlan, FaultRule, FaultSpecError, parse_spec
from emulator.identity import Identity
from emulator.limits import Limits
from emulator.schema import SCHEMA
from emulator.storage import Store
from emulator.wire import Request, Response

DEFAULT_TENANT = "00000000-0000-0000-0000-0000000000aa"
HOST = "127.0.0.1"
NO_BODY = frozenset({204, 304})
MAX_LINE = 65_536
MAX_HEADERS = 100

logger = logging.getLogger("emulator")


class _Handler(socketserver.StreamRequestHandler):
    """A lean HTTP/1.1 keep-alive loop: parse a request, hand it to the emulator, write the
    response in one send, or drop the connection without answering."""

    timeout = 300
    server: EmulatorServer

    def handle(self) -> None:
        self.close_connection = False
        while not self.close_connection:
            try:
                request = self._read()
            except TimeoutError:
                return
            if request is None:
                return
            response = self.server.emulator.handle(request)
            if response.drop:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._write(response, request.method)

    def _read(self) -> Request | None:
        """The next request on the connection; None when it closed or sent something unusable."""
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(line) > MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._refuse(400, "Bad request line")
            return None
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(raw) > MAX_LINE or len(headers) >= MAX_HEADERS:
                self._refuse(431, "Request header fields too large")
                return None
            name, _, value = raw.decode("latin-1").partition(":")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._refuse(411, "Content-Length required")
            return None
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = headers.get("content-length", "0")
        body = self.rfile.read(int(length)) if length.isdigit() and int(length) > 0 else b""
        raw_path, _, query = target.partition("?")
        return Request(
            method=method,
            path=unquote(raw_path),
            raw_path=raw_path,
            query=query,
            headers=headers,
            body=body,
            peer=self.client_address[0],
        )

    def _refuse(self, status: int, reason: str) -> None:
        self.close_connection = True
        self._write(Response(status, (("Content-Type", "text/plain"),), reason.encode()), "GET")

    def _write(self, response: Response, method: str) -> None:
        status = response.status
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{key}: {value}" for key, value in response.headers]
        body = b"" if status in NO_BODY or method == "HEAD" else response.body
        if status not in NO_BODY:
            lines.append(f"Content-Length: {len(response.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)


class EmulatorServer(ThreadingHTTPServer):
    """HTTPS on one loopback port; TLS is set up per connection in the connection's thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port: int, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.emulator: Emulator
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = self.socket.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # TLS failures, resets and timeouts of single connections
            logger.debug("connection from %s ended: %s", client_address, error)
        else:
            logger.exception("error handling a connection from %s", client_address)


def tls_context(data_dir: Path) -> ssl.SSLContext:
    """A server context signed by the data dir's CA (created on first use, reused after)."""
    cert_path, key_path = data_dir / "ca.pem", data_dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        authority = trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    else:
        authority = trustme.CA(organization_name="dvconnect emulator")
        authority.cert_pem.write_to_path(str(cert_path))
        authority.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    authority.issue_cert(HOST, "localhost").configure_cert(context)
    return context


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emulator", description="Serve a local Dataverse Web API emulator over HTTPS."
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 picks a free one)")
    add("--seed", type=int, default=42, help="seed of the generated data")
    add("--leads", type=int, default=20_000, help="leads to seed")
    add("--contacts", type=int, default=10_000, help="contacts to seed")
    add(
        "--rows",
        type=Path,
        metavar="FILE",
        help="seed from this rows file (JSON lines) instead of generated data: a twin of an org "
        "(--seed, --leads and --contacts are then unused; `dvconnect emulator --from-store "
        "[--mask]` writes the file from the synced store)",
    )
    add("--data-dir", type=Path, help="keep the database and CA here (default: a temp dir)")
    add("--reseed", action="store_true", help="reseed even when the data dir has a database")
    add("--tenant-id", default=DEFAULT_TENANT, help="tenant printed for clients (any is accepted)")
    add("--client-id", default="emulator-client")
    add(
        "--client-secret",
        default=os.environ.get("EMULATOR_CLIENT_SECRET", "emulator-secret"),
        help="client secret (default: $EMULATOR_CLIENT_SECRET or emulator-secret)",
    )
    add("--client-certificate", type=Path, help="PEM certificate accepted for client assertions")
    add("--token-lifetime", type=int, default=3599, help="access token lifetime in seconds")
    add("--retention-days", type=int, default=7, help="change-tracking retention")
    add("--faults", default="", help="fault rules, e.g. '429:every=5,drop:at=3;7'")
    add("--fault-seed", type=int, default=0, help="seed of the fault RNG")
    add(
        "--service-protection",
        default="",
        help="limits per caller: 'off', or e.g. 'requests=1200,window=60,execution-ms=240000,"
        "concurrency=10' (the defaults: the real limits scaled down by five)",
    )
    add(
        "--no-change-tracking",
        default="",
        help="tables without change tracking, e.g. lead,contact (email and interactionforemail "
        "have none by default; PATCH /_emulator/config can switch it on)",
    )
    add("--now", help="start the emulator clock at this ISO-8601 time")
    add("--log-level", default="WARNING", help="logging level on stderr")
    return parser


def _seed_if_needed(ctx: Context, args: argparse.Namespace) -> None:
    if ctx.store.meta("seeded") is not None and not args.reseed:
        logger.info("using the existing database in %s", ctx.store.path)
        return
    anchor = ctx.clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
    with ctx.store.write(ctx.now()) as tx:
        tx.clear()
        if args.rows is not None:
            counts = twin.load(ctx, tx, args.rows)
            tx.set_meta("seeded", json.dumps({"rows": str(args.rows), **counts}))
            return
        counts = seed.seed(
            tx, seed=args.seed, leads=args.leads, contacts=args.contacts, anchor=anchor,
            client_id=ctx.client_id,
        )  # fmt: skip
        tx.set_meta("seeded", json.dumps({"seed": args.seed, **counts}))


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad options."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or bad usage (argparse printed why)
        return int(exit_.code or 0)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        rules = parse_spec(args.faults)
    except FaultSpecError as error:
        print(f"emulator: --faults: {error}", file=sys.stderr)
        return 2
    try:
        limits = Limits.parse(args.service_protection)
    except ValueError as error:
        print(f"emulator: --service-protection: {error}", file=sys.stderr)
        return 2
    untracked = frozenset(
        name.strip() for name in args.no_change_tracking.split(",") if name.strip()
    )
    unknown = untracked - set(SCHEMA.by_name)
    if unknown:
        print(
            f"emulator: --no-change-tracking: unknown table(s) {', '.join(sorted(unknown))}",
            file=sys.stderr,
        )
        return 2
    certificate = None
    if args.client_certificate is not None:
        try:
            certificate = x509.load_pem_x509_certificate(args.client_certificate.read_bytes())
        except (OSError, ValueError) as error:
            print(f"emulator: --client-certificate: {error}", file=sys.stderr)
            return 2
    start: datetime | None = None
    if args.now:
        try:
            start = parse_wire(args.now)
        except ValueError:
            print(f"emulator: --now: not an ISO-8601 time: {args.now!r}", file=sys.stderr)
            return 2
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="dvconnect-emulator-")) if temporary else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _serve(args, data_dir.resolve(), rules, untracked, limits, certificate, start)
    except sqlite3.DatabaseError as error:
        print(
            f"emulator: --data-dir {data_dir}: its data cannot be read ({error}); "
            "remove the folder to start from a new seed",
            file=sys.stderr,
        )
        return 2
    except twin.RowsError as error:
        print(f"emulator: --rows: {error}", file=sys.stderr)
        return 2
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


def _serve(
    args: argparse.Namespace,
    data_dir: Path,
    rules: tuple[FaultRule, ...],
    untracked: frozenset[str],
    limits: Limits,
    certificate: x509.Certificate | None,
    start: datetime | None,
) -> int:
    try:
        server = EmulatorServer(args.port, tls_context(data_dir))
    except OSError as error:  # the port is taken, or not ours to bind
        print(f"emulator: --port {args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    origin = f"https://{HOST}:{server.server_port}"
    config = Config(
        untracked=untracked | UNTRACKED_BY_DEFAULT,
        token_lifetime=args.token_lifetime,
        retention_days=args.retention_days,
        limits=limits,
        tables=tuple(SCHEMA.by_name),
    )
    ctx = Context(
        schema=SCHEMA,
        store=Store(data_dir / "emulator.sqlite3", SCHEMA),
        clock=Clock(start),
        origin=origin,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        config=config,
    )
    _seed_if_needed(ctx, args)
    with ctx.store.write(ctx.now()) as tx:
        messages.sync(ctx, tx)
    server.emulator = Emulator(
        ctx,
        Identity(ctx, args.client_secret, certificate),
        FaultPlan(rules, args.fault_seed),
        SeedOptions(args.seed, args.leads, args.contacts, args.rows),
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="emulator-server", daemon=True
    )
    thread.start()
    print(
        f"DVCONNECT_DATAVERSE_URL={origin}\n"
        f"DVCONNECT_TENANT_ID={args.tenant_id}\n"
        f"DVCONNECT_AUTHORITY={origin}/{args.tenant_id}\n"
        f"DVCONNECT_CLIENT_ID={args.client_id}\n"
        f"REQUESTS_CA_BUNDLE={data_dir / 'ca.pem'}\n"
        f"EMULATOR_ADMIN_URL={origin}/_emulator\n"
        "emulator ready",
        flush=True,
    )
    while not stop.wait(0.1):
        pass
    server.shutdown()
    server.server_close()
    return 0
