"""The yardstick: the cheapest honest full sync, written for the benchmark (no dvconnect code).

`requests` pages through each table with the same `$select` and page size as dvconnect
(`Prefer: odata.maxpagesize`, following `@odata.nextLink`; the lookup-type annotation is asked
for too, so the pages are the same bytes), the stdlib `json` parser decodes each page, and one
`executemany` per page writes it, committed per page: `INSERT OR REPLACE` into SQLite, or
`INSERT ... ON CONFLICT DO UPDATE` into PostgreSQL with psycopg. Nothing else: no validation,
no sync state, no deletions, no retries.

    python -m benchmarks.yardstick --sqlite PATH | --postgres CONNINFO

reads the connection settings from the DVCONNECT_* variables (`EmulatorProcess.env()`); TLS is
verified with REQUESTS_CA_BUNDLE, which `requests` honours. The tables and columns come from
mappings/tables.yaml, all of them, as dvconnect reads. Prints `{"rows": N, "requests": M}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import requests
import yaml

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings" / "tables.yaml"
PAGE_SIZE = 5000  # dvconnect's default (and Dataverse's maximum)
ANNOTATION = "@Microsoft.Dynamics.CRM.lookuplogicalname"
PREFER = (
    f"odata.maxpagesize={PAGE_SIZE},"
    'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'
)
SQL_TYPES = {"integer": "INTEGER", "bigint": "BIGINT", "number": "DOUBLE PRECISION"}


def _mappings() -> dict[str, dict[str, Any]]:
    """Every mapped table: its entity set, primary key and columns (name: type)."""
    tables: dict[str, dict[str, Any]] = yaml.safe_load(MAPPINGS.read_text())["tables"]
    return tables


def _token(session: requests.Session) -> str:
    base = os.environ["DVCONNECT_DATAVERSE_URL"]
    response = session.post(
        f"{os.environ['DVCONNECT_AUTHORITY']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": os.environ["DVCONNECT_CLIENT_ID"],
            "client_secret": os.environ["DVCONNECT_CLIENT_SECRET"],
            "scope": f"{base}/.default",
        },
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def sync(database: Any, placeholder: str, postgres: bool) -> dict[str, int]:
    """Read every table into `database` (a DB-API connection); returns rows and requests."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {_token(session)}"
    session.headers["Prefer"] = PREFER
    session.headers["Accept"] = "application/json"
    api = f"{os.environ['DVCONNECT_DATAVERSE_URL']}/api/data/v9.2"
    rows = requests_sent = 0
    for table, mapping in _mappings().items():
        entity_set, key = mapping["entity_set"], mapping["primary_key"]
        columns: dict[str, str] = mapping["columns"]
        names = list(columns)
        selected = [n for n in names if columns[n] != "lookuptype"]
        # a lookup type comes from the annotation on its lookup value column
        sources = [
            f"_{n.removesuffix('type')}_value{ANNOTATION}" if columns[n] == "lookuptype" else n
            for n in names
        ]
        ddl = ", ".join(
            f"{n} {'BOOLEAN' if columns[n] == 'boolean' else SQL_TYPES.get(columns[n], 'TEXT')}"
            for n in names
        )
        cursor = database.cursor()
        cursor.execute(f"CREATE TABLE {table} ({ddl}, PRIMARY KEY ({key}))")
        marks = ", ".join([placeholder] * len(names))
        if postgres:
            updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != key)
            sql = (
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
            )
        else:
            sql = f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({marks})"
        database.commit()
        url: str | None = f"{api}/{entity_set}"
        params: dict[str, str] | None = {"$select": ",".join(selected)}
        while url is not None:
            response = session.get(url, params=params, timeout=120)
            response.raise_for_status()
            requests_sent += 1
            body = json.loads(response.content)
            page = body["value"]
            cursor.executemany(sql, [tuple(row.get(s) for s in sources) for row in page])
            database.commit()
            rows += len(page)
            url, params = body.get("@odata.nextLink"), None
    return {"rows": rows, "requests": requests_sent}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.yardstick")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite", metavar="PATH")
    target.add_argument("--postgres", metavar="CONNINFO")
    args = parser.parse_args()
    if args.sqlite:
        database: Any = sqlite3.connect(args.sqlite)
        database.execute("PRAGMA synchronous=NORMAL")  # as dvconnect's store
        result = sync(database, "?", postgres=False)
    else:
        import psycopg

        database = psycopg.connect(args.postgres)
        result = sync(database, "%s", postgres=True)
    database.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
