"""A twin of the org from the synced store: its rows for the emulator, personal data masked or not.

`export_rows` streams every table of the mapping out of the store (mapped columns and lookup
types; a page of rows in memory at a time) as the emulator's rows file (`--rows`): JSON lines
`{"table": …, "row": …}`. Ids are kept, so relationships hold and a journey computes the same
deterministic ids in the twin as in the org. With a `Masker`, personal data becomes fakes: names,
e-mail addresses, phone numbers and free text (descriptions, address lines, activity subjects)
of every table. The same value gives the same fake within one twin (so duplicates stay
duplicates, whatever their case or padding); e-mails stay unique and valid-looking (their case
and padding are kept); fakes come from a key drawn for each twin, so they cannot be reversed by
hashing guesses. Values that segments and journeys read as data (lead topics, job titles,
company names, choices, dates, flags) are kept.

`serve_twin` is `dvconnect emulator --from-store [--mask] [emulator options]`: it writes the rows
file to a temporary folder and runs the emulator on it (the emulator never imports dvconnect;
the file is the seam).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import inspect, select

from connector.clock import stamp
from connector.errors import ConfigError
from connector.mapping.tables import TableMapping
from connector.settings import Settings
from jobs.context import Context, build_context

FIRST_NAMES = (
    "alex", "billie", "casey", "dana", "eli", "frankie", "gale", "harper", "indy", "jesse",
    "kai", "lee", "morgan", "noel", "oakley", "piper", "quinn", "riley", "sam", "tatum",
    "uma", "val", "wren", "yael", "zion",
)  # fmt: skip
LAST_NAMES = (
    "ashdown", "brookfield", "calder", "dunmore", "ellery", "fairholme", "glenrock", "hartwell",
    "ivers", "jarrow", "kestrel", "larkspur", "merriman", "northcott", "ormsby", "pemberton",
    "quillon", "redfern", "stanmore", "thornbury", "underhill", "vantage", "westbrook", "yarrow",
)  # fmt: skip
FIRST_PARTS = ("firstname", "middlename", "nickname", "yomifirstname", "yomimiddlename")
LAST_PARTS = ("lastname", "yomilastname")
FULL_NAMES = ("fullname", "yomifullname")
EMAILS = ("internalemailaddress", "personalemailaddress", "domainname", "emailaddress")
ACTIVITY_KEY = "activityid"  # activities' subjects name people ("Call Zoë Ångström about …")


class Masker:
    """Deterministic fakes for personal data, keyed by a secret of this twin."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def _digest(self, kind: str, value: str) -> bytes:
        text = f"{kind}\x00{value.strip().casefold()}".encode()
        return hmac.new(self._key, text, hashlib.sha256).digest()

    def _pick(self, names: tuple[str, ...], kind: str, value: str) -> str:
        return names[int.from_bytes(self._digest(kind, value)[:4], "big") % len(names)]

    def first(self, value: str) -> str:
        return self._pick(FIRST_NAMES, "first", value).capitalize()

    def last(self, value: str) -> str:
        return self._pick(LAST_NAMES, "last", value).capitalize()

    def full(self, value: str) -> str:
        return f"{self.first(value)} {self.last(value)}"

    def email(self, value: str) -> str:
        """A unique, valid-looking address with the original's case and padding."""
        digest = self._digest("email", value)
        if "@" not in value:  # kept invalid, as the original
            return f"masked-{digest.hex()[:12]}"
        first = FIRST_NAMES[digest[0] % len(FIRST_NAMES)]
        last = LAST_NAMES[digest[1] % len(LAST_NAMES)]
        fake = f"{first}.{last}.{digest.hex()[2:14]}@example.org"
        core = value.strip()
        if core.isupper():
            fake = fake.upper()
        elif core[:1].isupper():
            fake = fake.title()
        lead = len(value) - len(value.lstrip())
        trail = len(value) - len(value.rstrip())
        return value[:lead] + fake + value[len(value) - trail :]

    def phone(self, value: str) -> str:
        """A North American number of the range kept for fiction (555-0100 to 555-0199)."""
        number = int.from_bytes(self._digest("phone", value)[:8], "big")
        return f"+1 {200 + number % 800} 555 01{number // 800 % 100:02d}"

    def text(self, value: str) -> str:
        return f"Masked text {self._digest('text', value).hex()[:10]}"

    def maskers(self, mapping: TableMapping) -> dict[str, Callable[[str], str]]:
        """Column → its fake maker, for the string columns of `mapping` that hold personal data."""
        found: dict[str, Callable[[str], str]] = {}
        activity = mapping.primary_key == ACTIVITY_KEY
        for column, kind in mapping.columns.items():
            if kind != "string":
                continue
            if column in FIRST_PARTS:
                found[column] = self.first
            elif column in LAST_PARTS:
                found[column] = self.last
            elif column in FULL_NAMES:
                found[column] = self.full
            elif column.startswith(EMAILS):
                found[column] = self.email
            elif "phone" in column or column == "fax":
                found[column] = self.phone
            elif (
                column == "description"
                or column.startswith("address")
                or (activity and column == "subject")
            ):
                found[column] = self.text
        return found

    def row(self, row: dict[str, Any], maskers: dict[str, Callable[[str], str]]) -> dict[str, Any]:
        masked = dict(row)
        for column, fake in maskers.items():
            if isinstance(row.get(column), str) and row[column].strip():
                masked[column] = fake(row[column])
        for column in FULL_NAMES:  # a full name made of the masked parts, as Dataverse makes it
            if column in maskers and isinstance(row.get(column), str):
                parts = [masked.get(p) for p in ("firstname", "lastname") if row.get(p)]
                if parts:
                    masked[column] = " ".join(str(p) for p in parts)
        return masked


def export_rows(
    ctx: Context, out: IO[str], masker: Masker | None = None, since: datetime | None = None
) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Write every mapped table's rows to `out` (the emulator's rows file); returns the rows per
    table, and the (table, id) of rows created at or after `since` (a store ahead of the clock)."""
    if not ctx.store.exists:
        raise ConfigError("the store is empty: run `dvconnect run sync` first")
    present = set(inspect(ctx.store.engine).get_table_names())
    counts: dict[str, int] = {}
    late: set[tuple[str, str]] = set()
    after = stamp(since) if since is not None else None
    for name, mapping in ctx.mapping.tables.items():
        if name not in present:
            continue
        table = ctx.store.tables[name]
        columns = [table.c[c] for c in (*mapping.select, *mapping.lookup_types)]
        maskers = masker.maskers(mapping) if masker is not None else {}
        count = 0
        query = select(*columns).order_by(table.c[mapping.primary_key])
        for row in ctx.store.stream(query):
            if after is not None and str(row.get("createdon") or "") >= after:
                late.add((name, row[mapping.primary_key]))
            if masker is not None:
                row = masker.row(row, maskers)
            out.write(json.dumps({"table": name, "row": row}, ensure_ascii=False) + "\n")
            count += 1
        counts[name] = count
    return counts, late


def serve_twin(settings: Settings, argv: list[str]) -> int:
    """`dvconnect emulator --from-store [--mask] …`: the emulator seeded from the store."""
    from emulator.server import main as emulator_main

    if any(arg == "--rows" or arg.startswith("--rows=") for arg in argv):
        raise ConfigError("--from-store writes the rows itself: leave --rows out")
    options = [arg for arg in argv if arg not in ("--from-store", "--mask")]
    masker = Masker() if "--mask" in argv else None
    ctx = build_context(settings)
    folder = Path(tempfile.mkdtemp(prefix="dvconnect-twin-"))
    try:
        rows = folder / "rows.jsonl"
        with rows.open("w", encoding="utf-8") as out:
            export_rows(ctx, out, masker)
        return emulator_main([*options, "--rows", str(rows)])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
