"""Lead scoring through the real CLI against the emulator, the two clocks moved together.

The sample model `contoso-interest` scores open leads: e-mails opened (5 each, at most 15) and
clicked (10 each, at most 20), a call completed (20), a decision-maker contact (15), a lead from
the Contoso conference (10), a contact refusing e-mail (-20); activities' points count half
after 30 days; warm from 20, hot and sales-ready from 40. The product-launch journey makes the
e-mails and calls; the test records opens and clicks and completes calls in the emulator.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org

MODEL = "contoso-interest"


@pytest.fixture
def org(cli: Cli) -> Org:
    return Org.synced(cli)


def _scores(org: Org) -> dict[str, tuple[float, str, str | None]]:
    with org.cli.store().engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT leadid, score, grade, ready_since FROM dvc_scores WHERE model = ?", (MODEL,)
        ).all()
    return {leadid: (score, grade, ready) for leadid, score, grade, ready in rows}


def _tasks_for(org: Org, lead: str) -> list[dict[str, Any]]:
    return [t for t in org.rows("task") if t["_regardingobjectid_value"] == lead]


def _lead(org: Org, lead: str) -> dict[str, Any]:
    return next(row for row in org.rows("lead") if row["leadid"] == lead)


def _score(org: Org) -> dict[str, Any]:
    document = org.run("run", "scoring", "--json")
    counts: dict[str, Any] = document["runs"][0]["counts"][MODEL]
    return counts


def test_scores_follow_engagement_and_a_crossing_hands_off_once(org: Org) -> None:
    org.run("journeys", "start", "product-launch")
    org.run("run", "journeys")
    launch = [e for e in org.rows("email") if "toolkit" in e["subject"]]
    email = min(launch, key=lambda e: e["activityid"])
    lead = email["_regardingobjectid_value"]
    contact = _lead(org, lead)["_parentcontactid_value"]
    owner = _lead(org, lead)["_ownerid_value"]
    assert _scores(org)[lead][:2] == (25.0, "warm")  # decision maker, conference lead

    # opened and clicked: 25 + 5 + 10 = 40, hot and sales-ready: one task for the owner
    org.cli.emulator.admin("POST", f"/emails/{email['activityid']}/engagement",
                           {"opens": 1, "clicks": 1})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    counts = _score(org)
    assert _scores(org)[lead][:2] == (40.0, "hot")
    assert counts["crossed"] >= 1
    assert _lead(org, lead)["leadqualitycode"] == 1
    (task,) = _tasks_for(org, lead)
    assert task["_ownerid_value"] == owner
    for reason in ("opened an e-mail", "clicked a link in an e-mail", "is a decision maker",
                   "met us at the Contoso Ltd Conference"):  # fmt: skip
        assert reason in task["description"]
    assert task["subject"].startswith("Sales-ready: ")

    # nothing changed: a second run writes nothing
    seq = org.last_seq()
    again = _score(org)
    assert org.writes_since(seq) == []
    assert (again["changed"], again["rated"], again["handed_off"]) == (0, 0, 0)

    # the contact refuses e-mail: 20, warm; the rating follows; then it accepts again: 40, hot,
    # a new crossing inside the 30-day quiet period, so no second hand-off
    org.cli.emulator.admin("PATCH", f"/tables/contact/{contact}", {"donotemail": True})
    org.advance(days=1)
    org.run("run", "sync")
    _score(org)
    assert _scores(org)[lead] == (20.0, "warm", None)
    assert _lead(org, lead)["leadqualitycode"] == 2
    org.cli.emulator.admin("PATCH", f"/tables/contact/{contact}", {"donotemail": False})
    org.advance(days=1)
    org.run("run", "sync")
    counts = _score(org)
    assert _scores(org)[lead][:2] == (40.0, "hot")
    assert _lead(org, lead)["leadqualitycode"] == 1
    assert len(_tasks_for(org, lead)) == 1

    # the journey calls the opener; the call completed: 60
    org.run("run", "journeys")
    (call,) = [c for c in org.rows("phonecall") if c["_regardingobjectid_value"] == lead]
    org.cli.emulator.admin("PATCH", f"/tables/phonecall/{call['activityid']}",
                           {"statecode": 1, "statuscode": 2})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    _score(org)
    assert _scores(org)[lead][:2] == (60.0, "hot")

    # a month on, the e-mail's and the call's points count half: 25 + 7.5 + 10
    org.at(START + timedelta(days=35))
    org.run("run", "sync")
    _score(org)
    assert _scores(org)[lead][:2] == (42.5, "hot")
    assert len(_tasks_for(org, lead)) == 1
    shown = org.run("scoring", "show", lead, "--json")["models"][0]
    assert shown["score"] == 42.5
    assert {c["rule"] for c in shown["contributions"]} == {
        "opened-email",
        "clicked-email",
        "call-completed",
        "decision-maker",
        "conference-lead",
    }
    assert len(shown["hand_offs"]) == 1


def test_every_score_equals_one_computed_from_the_raw_rows(org: Org) -> None:
    """The model recomputed here from the store's rows, without the scoring code."""
    org.run("journeys", "start", "product-launch")
    org.run("run", "journeys")
    emails = sorted(org.rows("email"), key=lambda e: e["activityid"])
    for n, email in enumerate(emails[:12]):
        org.cli.emulator.admin("POST", f"/emails/{email['activityid']}/engagement",
                               {"opens": 1 + n % 3, "clicks": n % 2})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    _score(org)
    store = org.cli.store()
    with store.engine.connect() as conn:
        leads = conn.exec_driver_sql(
            "SELECT leadid, subject, _parentcontactid_value FROM lead WHERE statecode = 0"
        ).all()
        contacts = dict(conn.exec_driver_sql(
            "SELECT contactid, coalesce(accountrolecode, '') || '/' || coalesce(donotemail, 0)"
            " FROM contact"
        ).all())  # fmt: skip
        opened = Counter(r[0] for r in conn.exec_driver_sql(
            "SELECT _regardingobjectid_value FROM email WHERE opencount > 0").all())  # fmt: skip
        clicked = Counter(r[0] for r in conn.exec_driver_sql(
            "SELECT _regardingobjectid_value FROM email WHERE linksclickedcount > 0").all())  # fmt: skip
        called = {r[0] for r in conn.exec_driver_sql(
            "SELECT _regardingobjectid_value FROM phonecall WHERE statecode = 1").all()}  # fmt: skip
    expected = {}
    for leadid, subject, contactid in leads:
        role, refuses = (contacts.get(contactid) or "/0").split("/")
        score = min(15, 5 * opened[leadid]) + min(20, 10 * clicked[leadid])
        score += 20 if leadid in called else 0
        score += 15 if role == "1" else 0
        score += 10 if subject == "Contoso Ltd Conference" else 0
        score -= 20 if refuses == "1" else 0
        expected[leadid] = float(score)
    assert sum(1 for v in opened.values() if v) >= 6
    assert {lead: s for lead, (s, _, _) in _scores(org).items()} == expected
    grades = Counter(g for _, g, _ in _scores(org).values())
    assert grades["warm"] > 0
    assert grades["cold"] > 0


def test_bad_model_is_reported_and_the_other_models_still_run(cli: Cli, tmp_path: Any) -> None:
    import shutil

    from tests.paths import MAPPINGS

    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    (copy / "scoring" / "broken.yaml").write_text(
        'name: broken\nleads: "statecode eq 0"\nrules:\n  - id: r\n    reason: r\n'
        '    points: 5\n    lead: "nosuchcolumn eq 1"\ngrades: {warm: 20, hot: 10}\n'
        "sales_ready: 40\nwrite: {rating: false}\n"
    )
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(copy)
    checked = cli.run("check", "--offline")
    assert checked.returncode == 2
    assert checked.stderr.strip() == (
        f"error: {copy / 'scoring' / 'broken.yaml'}: grades "
        "(line 8): hot: must be above warm (cold < warm < hot)"
    )
    cli.emulator.reset(leads=3000, contacts=1500)
    org = Org(cli)
    org.at(START)
    document = org.run("run", "all", "--json", code=1)  # partial: one model failed
    counts = next(r for r in document["runs"] if r["job"] == "scoring")["counts"]
    assert counts["broken.yaml"]["failed"] == 1
    assert counts[MODEL]["leads"] > 0


def test_the_dry_run_lists_the_hand_offs_the_real_run_then_makes(org: Org) -> None:
    org.run("journeys", "start", "product-launch")
    org.run("run", "journeys")
    launch = sorted(org.rows("email"), key=lambda e: e["activityid"])[:3]
    for email in launch:
        org.cli.emulator.admin("POST", f"/emails/{email['activityid']}/engagement",
                               {"opens": 1, "clicks": 1})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    seq = org.last_seq()
    (plan,) = org.run("run", "scoring", "--dry-run", "--json")["plan"]["scoring"]
    assert org.writes_since(seq) == []
    assert _scores(org)[launch[0]["_regardingobjectid_value"]][0] == 25.0  # nothing saved
    listed = {(h["table"], h["id"], h["lead"]) for h in plan["handoffs"]}
    assert len(listed) == plan["handed_off"] == 3
    org.run("run", "scoring")
    made = {("task", t["activityid"], t["_regardingobjectid_value"]) for t in org.rows("task")}
    assert made == listed
    preview = org.run("scoring", "preview", MODEL, "--json")
    assert preview["grades"]["hot"] == 3
    assert preview["would_hand_off"] == 0  # handed off already


HOT_LEAD_CALL = """name: hot-lead-call
trigger:
  lead: {sales_ready: contoso-interest}
entry: dynamic
schedule: {start: 2027-01-04T08:00, end: 2027-06-30T18:00, timezone: Europe/Zurich,
           end_policy: finish}
owner: lead_owner
steps:
  - id: call
    phonecall:
      subject: "Call {{ contact.fullname }}: a hot lead"
      due: {business_days: 1}
  - id: done
    end: true
"""


def test_a_lead_turning_sales_ready_enters_a_journey_triggered_by_the_model(
    cli: Cli, tmp_path: Any
) -> None:
    import shutil

    from tests.paths import MAPPINGS

    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    (copy / "journeys" / "hot-lead-call.yaml").write_text(HOT_LEAD_CALL)
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(copy)
    org = Org.synced(cli)
    org.run("journeys", "start", "product-launch")
    org.run("journeys", "start", "hot-lead-call")
    org.run("run", "journeys")
    launch = sorted(org.rows("email"), key=lambda e: e["activityid"])[:2]
    hot = {email["_regardingobjectid_value"] for email in launch}
    for email in launch:
        org.cli.emulator.admin("POST", f"/emails/{email['activityid']}/engagement",
                               {"opens": 1, "clicks": 1})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    org.run("run", "scoring")
    org.run("run", "journeys")
    calls = [c for c in org.rows("phonecall") if "a hot lead" in c["subject"]]
    assert {c["_regardingobjectid_value"] for c in calls} == hot
    assert len(calls) == 2
    seq = org.last_seq()
    org.run("run", "scoring")
    org.run("run", "journeys")
    assert org.writes_since(seq) == []
