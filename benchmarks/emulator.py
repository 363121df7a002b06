"""Emulator throughput: simple GETs per second and rows per second in 5,000-row pages.

The emulator runs in its own process; load comes from client processes, each holding one
keep-alive HTTPS connection (plain `http.client`, so the client's own cost stays small) for a
fixed time. Requests are bounded in time and go to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from multiprocessing import Pool
from typing import Any
from urllib.parse import urlsplit

from benchmarks.common import print_table, scratch_org, write_result

LEADS = 50_000
SECONDS = 6.0
SIMPLE_CLIENTS = 2
PAGE_CLIENTS = 2


def _connection(base_url: str, ca_bundle: str) -> http.client.HTTPSConnection:
    host = urlsplit(base_url)
    context = ssl.create_default_context(cafile=ca_bundle)
    return http.client.HTTPSConnection(host.hostname or "127.0.0.1", host.port, context=context)


def _simple_gets(job: tuple[str, str, str, list[str]]) -> int:
    """GET one lead by id, again and again, for SECONDS; returns how many answered 200."""
    base_url, ca_bundle, token, ids = job
    conn = _connection(base_url, ca_bundle)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    done = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        conn.request(
            "GET", f"/api/data/v9.2/leads({ids[done % len(ids)]})?$select=fullname", headers=headers
        )
        response = conn.getresponse()
        response.read()
        done += response.status == 200
    conn.close()
    return done


def _pages(job: tuple[str, str, str]) -> int:
    """Follow 5,000-row pages of all lead columns for SECONDS, starting over at the end."""
    base_url, ca_bundle, token = job
    conn = _connection(base_url, ca_bundle)
    headers = {"Authorization": f"Bearer {token}", "Prefer": "odata.maxpagesize=5000"}
    path = "/api/data/v9.2/leads"
    rows = 0
    deadline = time.monotonic() + SECONDS
    link: str | None = path
    while time.monotonic() < deadline:
        conn.request("GET", link or path, headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read())
        rows += len(body["value"])
        next_link = body.get("@odata.nextLink")
        link = urlsplit(next_link)._replace(scheme="", netloc="").geturl() if next_link else None
    conn.close()
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    del quick  # one size: the figures are rates
    # raw speed, not the limits
    with scratch_org(LEADS, 1000, ["--service-protection", "off"]) as (_, emulator):
        token = emulator.token()
        ids = [row["leadid"] for row in emulator.rows("lead")[:500]]
        base = (emulator.base_url, emulator.ca_bundle, token)
        with Pool(max(SIMPLE_CLIENTS, PAGE_CLIENTS)) as pool:
            gets = sum(pool.map(_simple_gets, [(*base, ids)] * SIMPLE_CLIENTS))
            rows = sum(pool.map(_pages, [base] * PAGE_CLIENTS))
    figures = {
        "leads": LEADS,
        "seconds_per_measure": SECONDS,
        "simple_get_clients": SIMPLE_CLIENTS,
        "simple_gets_per_s": round(gets / SECONDS),
        "page_clients": PAGE_CLIENTS,
        "rows_per_s_5000_row_pages": round(rows / SECONDS),
    }
    print_table(
        "emulator throughput (its own process; keep-alive HTTPS clients in other processes)",
        [
            {
                "GETs/s": figures["simple_gets_per_s"],
                "rows/s (5,000-row pages)": figures["rows_per_s_5000_row_pages"],
            }
        ],
    )
    write_result("emulator", figures)
    return figures
