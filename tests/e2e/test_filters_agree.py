"""A segment filter selects the same leads whether the connector evaluates it on a store synced by
the real CLI, or the emulator evaluates it as `$filter` (relative dates on the emulator's clock)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import select

from connector.filters import parse_filter
from connector.mapping import load_mapping
from tests.e2e.conftest import ROOT, Cli

FN = "Microsoft.Dynamics.CRM."
# (segment filter as the connector takes it, the same condition as a client may send it)
FILTERS = [
    (
        f"{FN}LastXDays(PropertyName='createdon',PropertyValue=60) and leadsourcecode in (7,8)",
        f"{FN}LastXDays(PropertyName='createdon',PropertyValue=60) and "
        f"{FN}In(PropertyName='leadsourcecode',PropertyValues=['7','8'])",
    ),
    (
        f"{FN}LastXDays(PropertyName='modifiedon',PropertyValue=7) or statecode in (1, 2)",
        f"{FN}LastXDays(PropertyName='modifiedon',PropertyValue=7) or {FN}In(PropertyName='statecode',PropertyValues=[\"1\",\"2\"])",
    ),
    (
        f"{FN}LastXMonths(PropertyName='createdon',PropertyValue=3) and not "
        f"{FN}LastXHours(PropertyName='modifiedon',PropertyValue=300)",
        None,
    ),
    (f"{FN}OlderThanXDays(PropertyName='modifiedon',PropertyValue=200)", None),
    (f"{FN}ThisYear(PropertyName='createdon') and donotemail eq false", None),
    (f"{FN}On(PropertyName='createdon',PropertyValue='{{day}}')", None),
]


def emulator_ids(cli: Cli, text: str) -> set[str]:
    session = requests.Session()
    session.verify = cli.emulator.ca_bundle
    session.trust_env = False
    headers = {"Authorization": f"Bearer {cli.emulator.token()}", "Accept": "application/json"}
    url = f"{cli.emulator.api_url}/leads?$select=leadid&$filter={quote(text, safe='')}"
    found: set[str] = set()
    while url:
        response = session.get(url, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        found |= {row["leadid"] for row in body["value"]}
        url = body.get("@odata.nextLink")
    return found


@pytest.mark.parametrize(("segment", "client"), FILTERS)
def test_the_store_and_the_emulator_select_the_same_leads(
    cli: Cli, segment: str, client: str | None
) -> None:
    assert cli.run("run", "sync").returncode == 0
    now = datetime.fromisoformat(cli.emulator.admin("GET", "/clock")["now"].replace("Z", "+00:00"))
    day = min(row["createdon"] for row in cli.emulator.rows("lead"))[:10]
    segment, client = segment.format(day=day), (client or segment).format(day=day)
    compiled = parse_filter(segment, load_mapping(ROOT / "mappings").tables["lead"].columns)
    store = cli.store()
    table = store.tables["lead"]
    with store.engine.connect() as conn:
        stored = {
            row[0]
            for row in conn.execute(select(table.c.leadid).where(compiled.condition(table, now)))
        }
    assert stored == emulator_ids(cli, client)
    assert stored or "ThisYear" in segment  # each filter picks some of the 300 seeded leads
