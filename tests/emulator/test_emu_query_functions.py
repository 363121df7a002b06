"""Query functions `Microsoft.Dynamics.CRM.*` in `$filter` (§3.3) and parameter aliases, over HTTP."""

from __future__ import annotations

import uuid

from tests.emulator.conftest import Api, created_id, error

NOW = "2024-06-12T10:30:00Z"  # a Wednesday
FN = "Microsoft.Dynamics.CRM."


def ids(web: Api, path: str, key: str = "activityid") -> set[str]:
    response = web.get(path)
    assert response.status_code == 200, response.text
    return {row[key] for row in response.json()["value"]}


def tasks(web: Api, **due: str | None) -> dict[str, str]:
    """One task per name, due at the given time; the clock is set to NOW first."""
    web.admin("POST", "/clock", {"now": NOW})
    web.renew()
    made = {}
    for name, when in due.items():
        made[name] = created_id(web.post("tasks", {"subject": name, "scheduledend": when}))
    return made


def due(web: Api, function: str) -> set[str]:
    found = ids(web, f"tasks?$select=subject&$filter={FN}{function}")
    subjects = {row_id: row["subject"] for row_id, row in web.rows("task").items()}
    return {subjects[i] for i in found}


def test_relative_dates_are_ranges_of_the_emulator_clock(web: Api) -> None:
    tasks(
        web,
        earlier_today="2024-06-12T00:00:00Z",
        now="2024-06-12T10:30:00Z",
        tonight="2024-06-12T23:59:59Z",
        yesterday="2024-06-11T08:00:00Z",
        tomorrow="2024-06-13T08:00:00Z",
        sunday="2024-06-09T00:00:00Z",
        last_saturday="2024-06-08T23:00:00Z",
        last_sunday="2024-06-02T00:00:00Z",
        may="2024-05-31T12:00:00Z",
        last_year="2023-12-31T23:59:59Z",
        next_week="2024-06-16T09:00:00Z",
        never=None,
    )
    assert due(web, "Today(PropertyName='scheduledend')") == {"earlier_today", "now", "tonight"}
    assert due(web, "Yesterday(PropertyName='scheduledend')") == {"yesterday"}
    assert due(web, "Tomorrow(PropertyName='scheduledend')") == {"tomorrow"}
    assert due(web, "ThisWeek(PropertyName='scheduledend')") == {
        "sunday", "yesterday", "earlier_today", "now", "tonight", "tomorrow"
    }  # fmt: skip
    assert due(web, "LastWeek(PropertyName='scheduledend')") == {"last_saturday", "last_sunday"}
    assert due(web, "NextWeek(PropertyName='scheduledend')") == {"next_week"}
    assert due(web, "LastMonth(PropertyName='scheduledend')") == {"may"}
    assert due(web, "LastYear(PropertyName='scheduledend')") == {"last_year"}
    assert due(web, "LastXHours(PropertyName='scheduledend',PropertyValue=3)") == {"now"}
    assert due(web, "NextXHours(PropertyName='scheduledend',PropertyValue=14)") == {
        "now", "tonight"
    }  # fmt: skip
    assert due(web, "LastXDays(PropertyName='scheduledend',PropertyValue=1)") == {
        "yesterday", "earlier_today", "now"
    }  # fmt: skip
    assert due(web, "NextXDays(PropertyName='scheduledend',PropertyValue=1)") == {
        "now", "tonight", "tomorrow"
    }  # fmt: skip
    assert due(web, "OlderThanXDays(PropertyName='scheduledend',PropertyValue=11)") == {
        "may", "last_year"
    }  # fmt: skip
    assert due(web, "OlderThanXMonths(PropertyName='scheduledend',PropertyValue=5)") == {
        "last_year"
    }
    assert due(web, "On(PropertyName='scheduledend',PropertyValue='2024-06-11')") == {"yesterday"}
    assert due(web, "OnOrBefore(PropertyName='scheduledend',PropertyValue='2024-06-02')") == {
        "last_sunday", "may", "last_year"
    }  # fmt: skip
    assert due(web, "OnOrAfter(PropertyName='scheduledend',PropertyValue='2024-06-13')") == {
        "tomorrow", "next_week"
    }  # fmt: skip
    between = 'Between(PropertyName=\'scheduledend\',PropertyValues=["2024-06-08","2024-06-09"])'
    assert due(web, between) == {"last_saturday", "sunday"}
    web.admin("POST", "/clock", {"advance_seconds": 86_400})
    web.renew()
    assert due(web, "Yesterday(PropertyName='scheduledend')") == {"earlier_today", "now", "tonight"}


def test_in_takes_both_collection_quotings_and_not_in_leaves_nulls_out(web: Api) -> None:
    leads = web.rows("lead")
    wanted = {k for k, r in leads.items() if r["leadsourcecode"] in (7, 8)}
    double = f'leads?$select=leadid&$filter={FN}In(PropertyName=\'leadsourcecode\',PropertyValues=["7","8"])'
    single = f"leads?$select=leadid&$filter={FN}In(PropertyName='leadsourcecode',PropertyValues=['7','8'])"
    assert ids(web, double, "leadid") == wanted
    assert ids(web, single, "leadid") == wanted
    outside = {k for k, r in leads.items() if r["leadsourcecode"] not in (7, 8, None)}
    not_in = f"leads?$select=leadid&$filter={FN}NotIn(PropertyName='leadsourcecode',PropertyValues=['7','8'])"
    assert ids(web, not_in, "leadid") == outside
    one = f"leads?$select=leadid&$filter={FN}In(PropertyName='leadsourcecode',PropertyValues=['8'])"
    assert ids(web, one, "leadid") == {k for k, r in leads.items() if r["leadsourcecode"] == 8}
    topics = {k for k, r in leads.items() if (r["subject"] or "").lower() == "free trial"}
    by_text = f"leads?$select=leadid&$filter={FN}In(PropertyName='subject',PropertyValues=['FREE TRIAL','x'])"
    assert ids(web, by_text, "leadid") == topics


def test_between_is_inclusive_on_numbers(web: Api) -> None:
    for size in (4, 5, 2000, 2001, None):
        web.post("accounts", {"name": f"Size {size}", "numberofemployees": size})
    found = ids(
        web,
        f"accounts?$select=name&$filter={FN}Between(PropertyName='numberofemployees',"
        "PropertyValues=['5','2000'])&$orderby=numberofemployees",
        "accountid",
    )
    names = {r["accountid"]: r["name"] for r in web.rows("account").values()}
    assert {names[i] for i in found if names[i].startswith("Size")} == {"Size 5", "Size 2000"}
    outside = ids(
        web,
        f"accounts?$filter={FN}NotBetween(PropertyName='numberofemployees',PropertyValues=['5','2000'])",
        "accountid",
    )
    assert {names[i] for i in outside if names[i].startswith("Size")} == {"Size 4", "Size 2001"}


def test_equal_user_id_is_the_caller(web: Api) -> None:
    mine = created_id(web.post("contacts", {"lastname": "Mine"}))
    me = web.get("WhoAmI").json()["UserId"]
    owned = {k for k, r in web.rows("contact").items() if r["_ownerid_value"] == me}
    assert mine in owned
    found = ids(web, f"contacts?$filter={FN}EqualUserId(PropertyName='ownerid')", "contactid")
    assert found == owned
    others = ids(web, f"contacts?$filter={FN}NotEqualUserId(PropertyName='ownerid')", "contactid")
    assert others == set(web.rows("contact")) - owned


def test_under_and_above_walk_the_account_hierarchy(web: Api) -> None:
    top = created_id(web.post("accounts", {"name": "Top"}))
    middle = created_id(
        web.post("accounts", {"name": "Middle", "parentaccountid@odata.bind": f"/accounts({top})"})
    )
    low = created_id(
        web.post("accounts", {"name": "Low", "parentaccountid@odata.bind": f"/accounts({middle})"})
    )

    def walk(function: str, record: str) -> set[str]:
        return ids(
            web,
            f"accounts?$filter={FN}{function}(PropertyName='accountid',PropertyValue='{record}')",
            "accountid",
        )

    assert walk("Under", top) == {middle, low}
    assert walk("UnderOrEqual", middle) == {middle, low}
    assert walk("Above", low) == {middle, top}
    assert walk("AboveOrEqual", middle) == {middle, top}
    assert top in walk("NotUnder", top)
    assert middle not in walk("NotUnder", top)


def test_parameter_aliases_stand_for_values_names_and_collections(web: Api) -> None:
    leads = web.rows("lead")
    smiths = {k for k, r in leads.items() if (r["lastname"] or "").lower() == "smith"}
    assert ids(web, "leads?$filter=lastname eq @name&@name='Smith'", "leadid") == smiths
    assert (
        ids(web, "leads?$filter=Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)"
            "&@p1='lastname'&@p2=[\"Smith\"]", "leadid")
        == smiths
    )  # fmt: skip
    conference = {k for k, r in leads.items() if "conference" in (r["subject"] or "").lower()}
    assert ids(web, "leads?$filter=contains(@p1,'conference')&@p1=subject", "leadid") == conference
    recent = ids(
        web,
        f"leads?$filter={FN}LastXDays(PropertyName=@p1,PropertyValue=@p2)&@p1='createdon'&@p2=30",
        "leadid",
    )
    inline = ids(
        web, f"leads?$filter={FN}LastXDays(PropertyName='createdon',PropertyValue=30)", "leadid"
    )
    assert recent == inline
    unnamed = {k for k, r in leads.items() if r["lastname"] is None}
    assert (
        ids(web, "leads?$filter=lastname eq @never", "leadid") == unnamed
    )  # an alias without value is null


def test_functions_work_in_count_expand_and_batch_reads(web: Api) -> None:
    filter_text = f"{FN}In(PropertyName='leadsourcecode',PropertyValues=['8'])"
    expected = sum(1 for r in web.rows("lead").values() if r["leadsourcecode"] == 8)
    assert web.get(f"leads/$count?$filter={filter_text}").text == str(expected)
    body = web.get(
        f"contacts?$select=contactid&$expand=lead_parent_contact($select=leadid;$filter={filter_text})"
    ).json()
    expanded = sum(len(row["lead_parent_contact"]) for row in body["value"])
    linked = sum(
        1
        for r in web.rows("lead").values()
        if r["leadsourcecode"] == 8 and r["_parentcontactid_value"]
    )
    assert expanded == linked


def bad(web: Api, filter_text: str) -> tuple[int, str, str]:
    return error(web.get(f"leads?$filter={filter_text}"))


def test_malformed_function_calls_get_the_odata_error(web: Api) -> None:
    assert bad(web, f"{FN}NoSuch(PropertyName='createdon')") == (
        400,
        "0x80060888",
        "An unknown function with name 'Microsoft.Dynamics.CRM.NoSuch' was found. This may also "
        "be a function import or a key lookup on a navigation property, which is not allowed.",
    )
    assert bad(web, f"{FN}LastXDays(PropertyName='createdon')") == (
        400,
        "0x80060888",
        "Microsoft.Dynamics.CRM.LastXDays: the function takes the parameters 'PropertyName', "
        "'PropertyValue'; found 'PropertyName'.",
    )
    assert bad(web, f"{FN}Today(PropertyName='_ownerid_value')") == (
        400,
        "0x80041103",
        "'lead' entity doesn't contain attribute with Name = '_ownerid_value' and NameMapping = "
        "'Logical' (look up attribute by name is case-sensitive).",
    )
    assert bad(web, f"{FN}Today(PropertyName='lastname')") == (
        400,
        "0x80060888",
        "Microsoft.Dynamics.CRM.Today: the function applies to date and time properties; "
        "'lastname' is of type 'Edm.String'.",
    )
    assert bad(web, f"{FN}LastXDays(PropertyName='createdon',PropertyValue='x')")[:2] == (
        400,
        "0x80060888",
    )
    assert bad(web, f"{FN}In(PropertyName='leadsourcecode',PropertyValues=['web'])")[2] == (
        "Microsoft.Dynamics.CRM.In: the value 'web' cannot be converted to 'Edm.Int32' for "
        "'leadsourcecode'."
    )
    assert bad(web, f"{FN}Between(PropertyName='createdon',PropertyValues=['2024-01-01'])")[2] == (
        "Microsoft.Dynamics.CRM.Between: PropertyValues must hold two values, not 1."
    )
    assert bad(web, f"{FN}Today(PropertyName=@missing)")[2] == (
        "Microsoft.Dynamics.CRM.Today: PropertyName must be a property name in quotes, not null."
    )
    assert bad(web, f"{FN}Under(PropertyName='leadid',PropertyValue='{uuid.uuid4()}')")[2] == (
        "Microsoft.Dynamics.CRM.Under: the table 'lead' has no hierarchical relationship."
    )
    assert bad(web, f"{FN}ThisFiscalYear(PropertyName='createdon')")[:2] == (501, "0x80040219")
