"""A twin (`--rows FILE`): the emulator seeded from a rows file around the org's skeleton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator.process import EmulatorProcess
from emulator.server import main

USER = "11111111-1111-4111-8111-111111111111"
TEAM = "22222222-2222-4222-8222-222222222222"
CONTACT = "33333333-3333-4333-8333-333333333333"
LEAD = "44444444-4444-4444-8444-444444444444"
ACCOUNT = "55555555-5555-4555-8555-555555555555"


def _write(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_the_rows_are_served_with_their_ids_and_missing_records_get_placeholders(
    tmp_path: Path,
) -> None:
    rows = _write(tmp_path / "rows.jsonl", [
        {"table": "systemuser", "row": {"systemuserid": USER, "fullname": "Ann Rep",
                                        "isdisabled": False}},
        {"table": "contact", "row": {"contactid": CONTACT, "firstname": "Zoë",
                                     "lastname": "Ångström", "fullname": "Zoë Ångström",
                                     "_parentcustomerid_value": ACCOUNT, "_ownerid_value": USER,
                                     "donotemail": True, "new_custom": "left out"}},
        {"table": "lead", "row": {"leadid": LEAD, "subject": "Contoso Ltd Conference",
                                  "_parentcontactid_value": CONTACT, "_ownerid_value": TEAM,
                                  "owneridtype": "team", "statecode": 0, "statuscode": 1}},
        {"table": "campaign", "row": {"campaignid": USER}},
    ])  # fmt: skip
    with EmulatorProcess(rows=rows) as twin:
        (contact,) = twin.rows("contact")
        assert contact["contactid"] == CONTACT
        assert (contact["fullname"], contact["donotemail"]) == ("Zoë Ångström", True)
        assert contact["_owninguser_value"] == USER
        (lead,) = twin.rows("lead")
        assert (lead["_ownerid_value"], lead["_owningteam_value"]) == (TEAM, TEAM)
        teams = {team["teamid"]: team["name"] for team in twin.rows("team")}
        assert "Placeholder" in teams[TEAM]  # the lead's owner team, not in the rows
        (account,) = twin.rows("account")
        assert account["accountid"] == ACCOUNT
        users = {user["systemuserid"] for user in twin.rows("systemuser")}
        assert len(users) == 2  # and the application user
        assert USER in users
        assert twin.admin("POST", "/reset", {})["seeded"]["lead"] == 1  # a reset reloads them
        assert [lead["leadid"] for lead in twin.rows("lead")] == [LEAD]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json\n", "rows.jsonl:1: not a JSON document"),
        ('{"table": "lead"}\n', 'rows.jsonl:1: expected {"table": "…", "row": {…}}'),
        (
            '{"table": "lead", "row": {"subject": "x"}}\n',
            "rows.jsonl:1: a lead row needs its leadid",
        ),
    ],
)
def test_a_bad_rows_file_returns_2_without_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(text)
    assert main(["--rows", str(rows)]) == 2
    assert capsys.readouterr().err.strip() == f"emulator: --rows: {rows.parent}/{error}"
