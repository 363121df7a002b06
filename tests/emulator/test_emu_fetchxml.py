"""FetchXML through `?fetchXml=` (§3.9, §4.4), sent URL-encoded as client libraries send it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

import requests

from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api, error

PAGING = 'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'


def fetch(web: Api, entity_set: str, xml: str, prefer: str | None = None) -> requests.Response:
    return web.get(f"{entity_set}?fetchXml={quote(xml, safe='')}", prefer)


def rows(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["value"]  # type: ignore[no-any-return]


def test_attributes_order_and_filter_leave_null_columns_out(web: Api) -> None:
    xml = """<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">
      <entity name="contact">
        <attribute name="fullname" />
        <attribute name="jobtitle" />
        <attribute name="parentcustomerid" />
        <order attribute="fullname" descending="false" />
        <filter type="and">
          <condition attribute="statecode" operator="eq" value="0" />
          <condition attribute="lastname" operator="like" value="o'%" />
        </filter>
      </entity>
    </fetch>"""
    response = fetch(web, "contacts", xml)
    found = rows(response)
    expected = sorted(
        (r for r in web.rows("contact").values() if (r["lastname"] or "").lower().startswith("o'")),
        key=lambda r: (r["fullname"].lower(), r["contactid"]),
    )
    assert [r["contactid"] for r in found] == [r["contactid"] for r in expected]
    assert response.json()["@odata.context"].endswith(
        "$metadata#contacts(fullname,jobtitle,_parentcustomerid_value,contactid)"
    )
    for row, stored in zip(found, expected, strict=True):
        assert row["@odata.etag"] == f'W/"{stored["versionnumber"]}"'
        for column in ("fullname", "jobtitle", "_parentcustomerid_value"):
            assert row.get(column) == stored[column]
            assert (column in row) == (stored[column] is not None)


def test_paging_follows_the_cookie_across_pages(web: Api) -> None:
    template = """<fetch count="40" page="{page}"{cookie}><entity name="contact">
      <attribute name="lastname" /><order attribute="contactid" /></entity></fetch>"""
    seen: list[str] = []
    page, cookie, pages = 1, "", 0
    while True:
        body = fetch(web, "contacts", template.format(page=page, cookie=cookie), PAGING).json()
        seen += [row["contactid"] for row in body["value"]]
        pages += 1
        if not body["@Microsoft.Dynamics.CRM.morerecords"]:
            assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body
            break
        outer = body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"]
        assert outer.startswith(f'<cookie pagenumber="{page + 1}" pagingcookie="%253ccookie')
        inner = outer.split('pagingcookie="', 1)[1].split('"', 1)[0]
        cookie = f" paging-cookie={quoteattr(unquote(unquote(inner)))}"
        page += 1
    assert pages == 4
    assert seen == sorted(web.rows("contact"))


def test_null_comparisons_follow_u54_and_the_views_null_branch(web: Api) -> None:
    contacts = web.rows("contact")
    web.admin(
        "POST",
        "/tables/contact",
        {"rows": [{**next(iter(contacts.values())), "marketingonly": None}]},
    )
    contacts = web.rows("contact")

    def ids(condition: str) -> set[str]:
        xml = f'<fetch><entity name="contact"><attribute name="contactid" />{condition}</entity></fetch>'
        return {row["contactid"] for row in rows(fetch(web, "contacts", xml))}

    no = {k for k, r in contacts.items() if r["marketingonly"] is False}
    unknown = {k for k, r in contacts.items() if r["marketingonly"] is None}
    assert unknown
    assert (
        ids('<filter><condition attribute="marketingonly" operator="ne" value="1" /></filter>')
        == no
    )
    assert (
        ids('<filter><condition attribute="marketingonly" operator="null" /></filter>') == unknown
    )
    either = (
        '<filter type="or"><condition attribute="marketingonly" operator="eq" value="0" />'
        '<condition attribute="marketingonly" operator="null" /></filter>'
    )
    assert ids(either) == no | unknown


def test_in_values_and_date_operators(web: Api) -> None:
    leads = web.rows("lead")
    xml = """<fetch><entity name="lead"><attribute name="leadid" /><filter>
      <condition attribute="leadsourcecode" operator="in"><value>7</value><value>8</value></condition>
      <condition attribute="createdon" operator="last-x-days" value="90" /></filter></entity></fetch>"""
    fetched = {row["leadid"] for row in rows(fetch(web, "leads", xml))}
    odata = web.get(
        "leads?$select=leadid&$filter=Microsoft.Dynamics.CRM.In(PropertyName='leadsourcecode',"
        "PropertyValues=['7','8']) and Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',"
        "PropertyValue=90)"
    ).json()["value"]
    assert fetched == {row["leadid"] for row in odata}
    assert fetched < {k for k, r in leads.items() if r["leadsourcecode"] in (7, 8)}


def test_link_entities_join_inner_or_outer(web: Api) -> None:
    leads = web.rows("lead")
    contacts = web.rows("contact")
    template = """<fetch><entity name="lead"><attribute name="subject" />
      <link-entity name="contact" from="contactid" to="parentcontactid" alias="c" link-type="{kind}">
        <attribute name="fullname" /></link-entity></entity></fetch>"""
    inner = rows(fetch(web, "leads", template.format(kind="inner")))
    linked = {k for k, r in leads.items() if r["_parentcontactid_value"]}
    assert {row["leadid"] for row in inner} == linked
    for row in inner:
        assert (
            row["c.fullname"]
            == contacts[leads[row["leadid"]]["_parentcontactid_value"]]["fullname"]
        )
    outer = rows(fetch(web, "leads", template.format(kind="outer")))
    assert {row["leadid"] for row in outer} == set(leads)
    assert all("c.fullname" not in row for row in outer if row["leadid"] not in linked)


def test_aggregates_group_count_and_sum(web: Api) -> None:
    leads = web.rows("lead")
    xml = """<fetch aggregate="true"><entity name="lead">
      <attribute name="leadsourcecode" alias="source" groupby="true" />
      <attribute name="leadid" alias="n" aggregate="count" />
      <order alias="source" /></entity></fetch>"""
    found = rows(fetch(web, "leads", xml))
    expected: dict[Any, int] = {}
    for row in leads.values():
        expected[row["leadsourcecode"]] = expected.get(row["leadsourcecode"], 0) + 1
    assert {row.get("source"): row["n"] for row in found} == expected
    accounts = [
        r["numberofemployees"] for r in web.rows("account").values() if r["numberofemployees"]
    ]
    totals = rows(
        fetch(
            web,
            "accounts",
            '<fetch aggregate="true"><entity name="account">'
            '<attribute name="numberofemployees" alias="total" aggregate="sum" />'
            '<attribute name="numberofemployees" alias="most" aggregate="max" />'
            '<attribute name="accountid" alias="rows" aggregate="countcolumn" />'
            "</entity></fetch>",
        )
    )
    assert totals[0]["total"] == sum(accounts)
    assert totals[0]["most"] == max(accounts)
    assert totals[0]["rows"] == len(web.rows("account"))


def test_fetchxml_runs_inside_batch(web: Api) -> None:
    xml = quote(
        '<fetch top="2"><entity name="lead"><attribute name="subject" /></entity></fetch>', safe=""
    )
    payload = bw.body("batch_x", bw.op("GET", f"/api/data/v9.2/leads?fetchXml={xml}"))
    response = web.session.post(
        web.url("$batch"),
        data=payload,
        headers={"Content-Type": 'multipart/mixed; boundary="batch_x"'},
        timeout=30,
    )
    (part,) = bw.parse(response)
    assert part.status == 200
    assert len(part.json()["value"]) == 2


def test_bad_fetchxml_gets_dataverse_errors(web: Api) -> None:
    assert error(fetch(web, "leads", "<fetch><entity name='lead'>")) == (
        400,
        "0x80040201",
        "Invalid XML.",
    )
    assert error(fetch(web, "leads", "not xml at all")) == (400, "0x80040201", "Invalid XML.")
    bomb = '<!DOCTYPE f [<!ENTITY a "aaaa">]><fetch><entity name="lead">&a;</entity></fetch>'
    assert error(fetch(web, "leads", bomb)) == (400, "0x80040201", "Invalid XML.")
    unknown = '<fetch><entity name="lead"><attribute name="nosuch" /></entity></fetch>'
    assert error(fetch(web, "leads", unknown)) == (
        400,
        "0x80041103",
        "'lead' entity doesn't contain attribute with Name = 'nosuch' and NameMapping = 'Logical' "
        "(look up attribute by name is case-sensitive).",
    )
    in_condition = (
        '<fetch><entity name="lead"><filter><condition attribute="_parentcontactid_value" '
        'operator="null" /></filter></entity></fetch>'
    )
    assert error(fetch(web, "leads", in_condition))[:2] == (400, "0x80041103")
    cookie = '<fetch count="5" page="2" paging-cookie="not a cookie"><entity name="lead" /></fetch>'
    assert error(fetch(web, "leads", cookie)) == (
        400,
        "0x8004112A",
        "The paging cookie is invalid.",
    )
    other = '<fetch><entity name="contact" /></fetch>'
    assert error(fetch(web, "leads", other))[:2] == (400, "0x80040203")
    operator = '<fetch><entity name="lead"><filter><condition attribute="subject" operator="sounds-like" value="x" /></filter></entity></fetch>'
    assert error(fetch(web, "leads", operator))[:2] == (400, "0x80040203")
    assert error(web.get("leads?fetchXml=%3Cfetch%2F%3E&$select=subject"))[:2] == (
        400,
        "0x80060888",
    )
