"""`$apply` aggregation (§3.8) over HTTP."""

from __future__ import annotations

from typing import Any

from tests.emulator.conftest import Api, error


def test_apply_groups_and_aggregates(web: Api) -> None:
    leads = web.rows("lead")
    body = web.get(
        "leads?$apply=filter(statecode eq 0)/groupby((leadsourcecode),aggregate($count as n))"
    ).json()
    expected: dict[Any, int] = {}
    for row in leads.values():
        if row["statecode"] == 0:
            expected[row["leadsourcecode"]] = expected.get(row["leadsourcecode"], 0) + 1
    assert {row["leadsourcecode"]: row["n"] for row in body["value"]} == expected
    assert body["@odata.context"].endswith("$metadata#leads(leadsourcecode,n)")
    sizes = [r["numberofemployees"] for r in web.rows("account").values() if r["numberofemployees"]]
    totals = web.get(
        "accounts?$apply=aggregate(numberofemployees with sum as total,"
        "numberofemployees with average as mean,numberofemployees with max as most,"
        "industrycode with countdistinct as industries)"
    ).json()["value"]
    assert totals[0]["total"] == sum(sizes)
    assert totals[0]["most"] == max(sizes)
    assert abs(totals[0]["mean"] - sum(sizes) / len(sizes)) < 1e-6
    descending = web.get(
        "leads?$apply=groupby((statecode,statuscode),aggregate($count as n))&$orderby=statecode desc"
    ).json()["value"]
    assert [row["statecode"] for row in descending] == sorted(
        (row["statecode"] for row in descending), reverse=True
    )


def test_bad_apply_gets_odata_errors(web: Api) -> None:
    assert error(web.get("leads?$apply=groupby((nosuch))")) == (
        400,
        "0x80060888",
        "Could not find a property named 'nosuch' on type 'Microsoft.Dynamics.CRM.lead'.",
    )
    assert error(web.get("leads?$apply=aggregate(subject with median as m)"))[:2] == (
        400,
        "0x80060888",
    )
    assert error(web.get("leads?$apply=pivot(x)"))[:2] == (400, "0x80060888")
    assert error(web.get("leads?$apply=groupby((statecode),aggregate($count as n))&$orderby=n"))[
        :2
    ] == (
        400,
        "0x80060888",
    )
