"""Runtime state shared by the handlers: store, clock, URLs, caller identity, and configuration.

`Config` holds what the admin endpoint can change at run time (change tracking per table, token
lifetime, retention, service protection limits, and the switches of §16.2 for UNCONFIRMED
behaviour); it is replaced as a whole, so a request always sees one consistent configuration.
`Invocations` lists the workflows and custom actions run, for the admin endpoint.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from emulator.clock import Clock, wire
from emulator.functions import Environment
from emulator.limits import Limits
from emulator.query import QueryCompiler
from emulator.schema import Schema
from emulator.storage import Store

EMULATOR_NAMESPACE = uuid.UUID("6c5f1c2e-8d1b-4d6a-9a3e-3c2b1f0e9d7a")
ORGANIZATION_ID = str(uuid.uuid5(EMULATOR_NAMESPACE, "organization"))
BUSINESS_UNIT_ID = str(uuid.uuid5(EMULATOR_NAMESPACE, "businessunit"))
# U55: e-mail change tracking is off unless switched on; U58: none on interactionforemail.
UNTRACKED_BY_DEFAULT = frozenset({"email", "interactionforemail"})


def application_user_id(client_id: str) -> str:
    """The systemuserid of the application user bound to `client_id` (WhoAmI's UserId)."""
    return str(uuid.uuid5(EMULATOR_NAMESPACE, f"application-user:{client_id}"))


def application_id(client_id: str) -> str:
    """`systemuser.applicationid` of the application user: the client id when it is a GUID."""
    try:
        return str(uuid.UUID(client_id))
    except ValueError:
        return str(uuid.uuid5(EMULATOR_NAMESPACE, f"application:{client_id}"))


SWITCHES = (
    "zero_property_codes",  # U5: "0x0" for unknown/invalid property errors
    "allow_lead_qualify_patch",  # U21: PATCH a lead to Qualified
    "allow_state_on_create",  # U19: statecode accepted on create
    "closed_activities_read_only",  # U22: updating a closed activity fails
    "unresolved_parties",  # U24: parties with only `addressused`
    "replace_parties_on_patch",  # U25: a PATCH's party array replaces (else adds to) the parties
    "batch_error_keeps_earlier_responses",  # U26: stop-on-error also returns earlier responses
    "changeset_error_in_changeset",  # U27: failed change set as a changesetresponse part
    "bulk_on_activities",  # U28: CreateMultiple & co. on phonecall, task, appointment
    "qualify_links_lead",  # U37: QualifyLead sets the lead's parent contact and account
    "duplicates_across_tables",  # §7.10: a lead's email also matches contacts, and vice versa
    "send_email_requires_approval",  # U41: SendEmail fails for a sender not approved (≠ 1)
    "appointment_scheduled_on_create",  # U47: an appointment with start and end is created Busy
    "contact_email_key",  # §7.5: the seeded alternate key contact_emailaddress1 is defined
)


@dataclass(frozen=True)
class Config:
    """Run-time settings (`PATCH /_emulator/config`); each switch picks a §17 alternative."""

    untracked: frozenset[str] = frozenset()
    token_lifetime: int = 3599
    retention_days: int = 7
    zero_property_codes: bool = False
    allow_lead_qualify_patch: bool = False
    allow_state_on_create: bool = False
    closed_activities_read_only: bool = True
    unresolved_parties: bool = True
    replace_parties_on_patch: bool = True
    batch_error_keeps_earlier_responses: bool = False
    changeset_error_in_changeset: bool = False
    bulk_on_activities: bool = False
    qualify_links_lead: bool = False
    duplicates_across_tables: bool = False
    send_email_requires_approval: bool = False
    appointment_scheduled_on_create: bool = True
    contact_email_key: bool = False
    limits: Limits = field(default_factory=Limits)
    tables: tuple[str, ...] = field(default=(), compare=False)

    def tracked(self, table: str) -> bool:
        return table not in self.untracked

    def as_json(self) -> dict[str, Any]:
        return {
            "change_tracking": {name: self.tracked(name) for name in self.tables},
            "token_lifetime": self.token_lifetime,
            "retention_days": self.retention_days,
            **{name: getattr(self, name) for name in SWITCHES},
            "service_protection": self.limits.as_json(),
        }

    def updated(self, changes: dict[str, Any]) -> Config:
        """A copy with `changes` applied; ValueError names the offending key."""
        untracked = set(self.untracked)
        config = self
        for key, value in changes.items():
            if key == "change_tracking":
                if not isinstance(value, dict):
                    raise ValueError("change_tracking must map table names to true/false")
                for table, enabled in value.items():
                    if table not in self.tables or not isinstance(enabled, bool):
                        raise ValueError(
                            f"change_tracking.{table} must be a served table and a boolean"
                        )
                    (untracked.discard if enabled else untracked.add)(table)
            elif key in ("token_lifetime", "retention_days"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be a non-negative integer")
                config = replace(config, **{key: value})  # type: ignore[arg-type]
            elif key in SWITCHES:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be a boolean")
                config = replace(config, **{key: value})  # type: ignore[arg-type]
            elif key == "service_protection":
                config = replace(config, limits=config.limits.updated(value))
            else:
                raise ValueError(f"unknown configuration key {key!r}")
        return replace(config, untracked=frozenset(untracked))


class Invocations:
    """The workflows (ExecuteWorkflow) and custom actions run, in order (admin endpoint only).

    An entry is made when the call runs, so one whose `$batch` change set rolls back later stays.
    """

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries = []


class Context:
    """What every handler needs; `config` is swapped atomically by the admin endpoint."""

    def __init__(
        self,
        *,
        schema: Schema,
        store: Store,
        clock: Clock,
        origin: str,
        tenant_id: str,
        client_id: str,
        config: Config,
    ) -> None:
        self.schema = schema
        self.store = store
        self.clock = clock
        self.origin = origin
        self.api_root = f"{origin}/api/data/v9.2/"
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.caller_id = application_user_id(client_id)
        self.compiler = QueryCompiler(
            schema,
            lambda: Environment(clock.now(), self.caller_id, BUSINESS_UNIT_ID),
            self.api_root,
        )
        self.initial_config = config
        self.config = config
        self.invocations = Invocations()

    def now(self) -> str:
        return wire(self.clock.now())
