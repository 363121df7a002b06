"""Mapping validation: every error names the file, the key and what was expected."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from connector.errors import MappingError
from connector.mapping import load_mapping
from tests.paths import MAPPINGS

SHIPPED = MAPPINGS


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    for name in ("tables.yaml", "schedule.yaml", "orphans.yaml"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    shutil.copytree(SHIPPED / "segments", tmp_path / "segments")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _error(directory: Path) -> str:
    with pytest.raises(MappingError) as caught:
        load_mapping(directory)
    return str(caught.value)


def test_shipped_mappings_load_with_the_columns_later_jobs_need(mappings: Path) -> None:
    mapping = load_mapping(mappings)
    lead, contact = mapping.tables["lead"], mapping.tables["contact"]
    assert lead.entity_set == "leads"
    assert lead.primary_key == "leadid"
    assert {
        "subject",
        "leadsourcecode",
        "_parentcontactid_value",
        "_ownerid_value",
        "donotphone",
    } <= set(lead.columns)
    assert {"accountrolecode", "marketingonly", "emailaddress1", "statecode"} <= set(
        contact.columns
    )
    assert lead.lookup_types == {"owneridtype": "_ownerid_value"}
    assert set(mapping.schedule.jobs) == {
        "sync", "link-orphans", "promote-contacts", "segments", "journeys", "scoring"
    }  # fmt: skip
    assert mapping.orphans.link_orphans.match == "email"
    assert mapping.orphans.link_orphans.accents == "ignore"
    assert mapping.orphans.link_orphans.contact_columns["emailaddress1"] == "emailaddress1"
    assert mapping.orphans.promote_contacts.enabled
    assert mapping.match_keys == {"lead": ("emailaddress1",), "contact": ("emailaddress1",)}


def test_unknown_key_is_rejected(mappings: Path) -> None:
    _edit(
        mappings / "tables.yaml",
        "    entity_set: contacts",
        "    entity_set: contacts\n    colums: {}",
    )
    assert (
        _error(mappings)
        == f"{mappings / 'tables.yaml'}: tables.contact.colums (line 39): unknown key"
    )


def test_unknown_column_type_lists_the_allowed_ones(mappings: Path) -> None:
    _edit(mappings / "tables.yaml", "      jobtitle: string", "      jobtitle: text")
    message = _error(mappings)
    assert message.startswith(
        f"{mappings / 'tables.yaml'}: tables.lead.columns.jobtitle (line 24): expected one of "
    )
    assert "'guid'" in message
    assert "'datetime'" in message


def test_column_names_must_be_logical_names(mappings: Path) -> None:
    _edit(mappings / "tables.yaml", "      jobtitle: string", "      JobTitle: string")
    assert _error(mappings) == (
        f"{mappings / 'tables.yaml'}: tables.lead.columns (line 15): "
        "column 'JobTitle': a lower-case logical name (lookups as _name_value)"
    )


def test_primary_key_and_modifiedon_must_be_mapped(mappings: Path) -> None:
    _edit(mappings / "tables.yaml", "      leadid: guid\n", "")
    assert _error(mappings) == (
        f"{mappings / 'tables.yaml'}: tables.lead.columns (line 15): "
        "must map the primary key 'leadid' as guid"
    )


def test_invalid_yaml_names_the_line(mappings: Path) -> None:
    _edit(mappings / "tables.yaml", "      subject: string", "      subject: [string")
    assert _error(mappings).startswith(f"{mappings / 'tables.yaml'}: line ")


def test_bad_cron_and_unknown_job_are_rejected(mappings: Path) -> None:
    _edit(mappings / "schedule.yaml", '"*/15 * * * *"', '"every quarter hour"')
    assert _error(mappings).startswith(
        f"{mappings / 'schedule.yaml'}: jobs.sync (line 5): a five-field cron expression"
    )
    _edit(mappings / "schedule.yaml", "  sync:", "  synk:")
    assert (
        _error(mappings)
        == f"{mappings / 'schedule.yaml'}: jobs.synk (line 5): a job name, one of sync, link-orphans, promote-contacts, segments, journeys, scoring"
    )


def test_bad_timezone_is_rejected(mappings: Path) -> None:
    _edit(mappings / "schedule.yaml", "timezone: UTC", "timezone: Mars/Olympus")
    assert _error(mappings) == (
        f"{mappings / 'schedule.yaml'}: timezone (line 3): an IANA time zone such as 'UTC' or 'Europe/Paris'"
    )


def test_missing_file_is_named(mappings: Path) -> None:
    (mappings / "schedule.yaml").unlink()
    assert _error(mappings) == f"{mappings / 'schedule.yaml'}: (file): file not found"
