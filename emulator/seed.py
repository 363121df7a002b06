"""Deterministic, realistic seed data and random churn for the served tables.

For a given seed and sizes the rows are always the same (dates are spread over the year before the
anchor time): 15 sales users plus the application user, accounts, contacts (names with accents and
apostrophes such as "Zoë Ångström" and "Seán O'Brien", emails `first.last@company.example`, a few
in upper case or padded with spaces), and leads: one third orphans (no parent contact, some sharing
an email with a contact in another case or with spaces), the rest linked to contacts. About 10% of
leads have the topic "Contoso Ltd Conference". The organisation around them (§21) comes from a
second random stream, so the rows above do not depend on it: the root business unit, its default
team, an owner team that owns about 2% of the leads (leads with a parent contact only), an access
team, a second disabled user and a non-interactive one, an approved queue, and the processes
(two on-demand workflows, a draft, the `new_RouteLead` action). Activities start empty. `churn`
makes random creates, updates and deletes through the same write path as the Web API.
"""

from __future__ import annotations

import random
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from emulator.context import (
    BUSINESS_UNIT_ID,
    EMULATOR_NAMESPACE,
    application_id,
    application_user_id,
)
from emulator.schema import (
    ACCOUNT,
    BUSINESSUNIT,
    CONTACT,
    LEAD,
    QUEUE,
    SAVEDQUERY,
    SYSTEMUSER,
    TEAM,
    WORKFLOW,
    Table,
)
from emulator.storage import TOMBSTONES, WriteTx

T = TypeVar("T")
CHUNK = 50_000
YEAR = 365 * 24 * 3600

FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Zoë", "Björn", "Søren", "José", "François", "Seán", "Chloé",
    "Mia", "Noah", "Emma", "Liam", "Olivia", "Lucas", "Sofia", "Mateo", "Hannah", "Yuki", "Ravi",
    "Priya", "Kwame", "Amara", "Jürgen", "Agnieszka", "Dmitri", "Ingrid", "Åsa", "Nadia", "Omar",
    "Fatima", "Chen", "Wei", "Aoife", "Siobhán", "Rosa", "Pedro", "Elena", "Marco", "Giulia",
    "Tomás", "Léa", "Hugo", "Freya", "Oskar", "Maja", "Niamh", "Daniel", "Sarah", "James", "Laura",
)  # fmt: skip
LAST_NAMES = (
    "Ångström", "O'Brien", "Müller", "García", "Nakamura", "Smith", "Johnson", "Williams",
    "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor", "Thomas", "Moore",
    "Martin", "Jackson", "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King",
    "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell",
    "Roberts", "Carter", "Phillips", "Evans", "Turner", "Torres", "Parker", "Collins", "D'Angelo",
    "O'Neil", "Nguyen", "Kowalski", "Novák", "Dubois", "Rossi", "Lindqvist", "Fernández",
    "Schröder", "Okafor", "Haddad", "Sato", "Kim", "Patel", "MacDonald", "Øverby", "Łukasik",
)  # fmt: skip
COMPANIES = (
    "Contoso Ltd", "Fabrikam, Inc.", "Adventure Works", "Northwind Traders", "Tailspin Toys",
    "Wide World Importers", "Litware, Inc.", "Proseware, Inc.", "Alpine Ski House", "Coho Winery",
    "Woodgrove Bank", "Fourth Coffee", "Margie's Travel", "Blue Yonder Airlines",
    "Lucerne Publishing", "Trey Research", "A. Datum Corporation", "Humongous Insurance",
    "Wingtip Toys", "Relecloud", "Southridge Video", "VanArsdel, Ltd.", "Consolidated Messenger",
    "Northwind Health", "City Power & Light", "Best For You Organics", "Bellows College",
    "Graphic Design Institute", "School of Fine Art", "The Phone Company",
)  # fmt: skip
CITIES = ("Berlin", "Dublin", "Lisbon", "Oslo", "Seattle", "Toronto", "Lyon", "Kraków", "Osaka")
JOB_TITLES = (
    "Marketing Manager", "Sales Director", "CEO", "CTO", "Purchasing Agent", "IT Manager",
    "Operations Lead", "Product Owner", "Office Manager", "Consultant", "Head of Growth",
    "Procurement Specialist", "Finance Director", "Engineer", "Analyst",
)  # fmt: skip
TOPICS = (
    "Product demo request", "Pricing inquiry", "Webinar: Data Platform 101", "Trade show follow-up",
    "Partnership opportunity", "Newsletter signup", "Free trial", "Renewal discussion",
    "Support contract", "Whitepaper download", "Customer referral", "Request for proposal",
)  # fmt: skip
CONFERENCE = "Contoso Ltd Conference"
SALES_USERS = 15
TEAM_SHARE = 0.03  # of the leads with a parent contact: about 2% of all leads


def org_id(name: str) -> str:
    """The fixed id of an organisation record (the same for every seed)."""
    return str(uuid.uuid5(EMULATOR_NAMESPACE, name))


DEFAULT_TEAM_ID = org_id("team:default")
OWNER_TEAM_ID = org_id("team:inside-sales")
ACCESS_TEAM_ID = org_id("team:deal-room")
QUEUE_ID = org_id("queue:sales-inbox")


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    email: str


@dataclass(frozen=True)
class ContactRef:
    """What leads borrow from a contact: its id, name, email and account."""

    contact_id: str
    person: Person
    account_id: str | None
    company: str | None


@cache
def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize(
        "NFKD", text.replace("ø", "o").replace("Ø", "O").replace("ł", "l").replace("Ł", "L")
    )
    return "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in "-")).lower()


@cache
def _slug(company: str) -> str:
    return "".join(c for c in _ascii(company.replace(" ", "-")) if c.isalnum() or c == "-").strip(
        "-"
    )


@cache
def _times_of_day() -> tuple[str, ...]:
    """Every second of a day as "HH:MM:SS" (formatting them per row would slow seeding down)."""
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


class Generator:
    """Seeded value factory; `anchor` is "now" for the dates it makes (epoch seconds)."""

    def __init__(self, seed: int | str, anchor: datetime) -> None:
        self.random = random.Random(seed)
        self._draw = self.random.random
        self._bits = self.random.getrandbits
        self.anchor = int(anchor.timestamp())
        self._days: dict[int, str] = {}

    def bits(self) -> int:
        return self._bits(128)

    def guid(self, number: int | None = None) -> str:
        """A version-4 GUID (lower case) made from `number`, or from 128 random bits."""
        text = f"{self._bits(128) if number is None else number:032x}"
        variant = "89ab"[int(text[16], 16) & 3]
        return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{variant}{text[17:20]}-{text[20:]}"

    def chance(self, probability: float) -> bool:
        return self._draw() < probability

    def below(self, limit: int) -> int:
        return int(self._draw() * limit)

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self._draw() * len(items))]

    def stamp(self, seconds: int) -> str:
        """`seconds` since the epoch in wire format (days are formatted once and remembered)."""
        day, second = divmod(seconds, 86_400)
        date = self._days.get(day)
        if date is None:
            date = self._days[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        return f"{date}T{_times_of_day()[second]}Z"

    def created_modified(self) -> tuple[str, str]:
        created = self.anchor - 60 - self.below(YEAR - 60)
        modified = created + self.below(self.anchor - created)
        return self.stamp(created), self.stamp(modified)

    def person(self, domain: str, first: str | None = None, last: str | None = None) -> Person:
        first = first or self.pick(FIRST_NAMES)
        last = last or self.pick(LAST_NAMES)
        return Person(first, last, self.vary(f"{_ascii(first)}.{_ascii(last)}@{domain}"))

    def vary(self, email: str) -> str:
        """Mostly as is; sometimes upper case, capitalised or padded with spaces."""
        roll = self._draw()
        if roll < 0.03:
            return email.upper()
        if roll < 0.06:
            return email.title()
        if roll < 0.08:
            return f" {email} "
        return email

    def phone(self) -> str:
        return f"+1 555 {100 + self.below(900)} {1000 + self.below(9000)}"

    def stamps(self, count: int) -> tuple[list[str], list[str]]:
        """`count` (createdon, modifiedon) pairs: created within the year before the anchor."""
        draw, anchor, stamp = self._draw, self.anchor, self.stamp
        created = [anchor - 60 - int(draw() * (YEAR - 60)) for _ in range(count)]
        modified = [c + int(draw() * (anchor - c)) for c in created]
        return [stamp(c) for c in created], [stamp(m) for m in modified]


@cache
def _columns(table: Table) -> tuple[str, ...]:
    return tuple(c for c in table.storage_columns if c != "versionnumber")


def _row(table: Table, values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(map(values.get, _columns(table)))


def _system_values(owner: str, created: str, modified: str) -> dict[str, Any]:
    return {
        "_ownerid_value": owner,
        "owneridtype": "systemuser",
        "_owninguser_value": owner,
        "_createdby_value": owner,
        "_modifiedby_value": owner,
        "createdon": created,
        "modifiedon": modified,
    }


def _users(gen: Generator, client_id: str) -> list[dict[str, Any]]:
    rows = []
    for index in range(SALES_USERS):
        person = gen.person("contoso.example")
        created, modified = gen.created_modified()
        rows.append({
            "systemuserid": gen.guid(), "firstname": person.first, "lastname": person.last,
            "fullname": f"{person.first} {person.last}",
            "internalemailaddress": person.email.strip().lower(),
            "domainname": person.email.strip().lower(),
            "azureactivedirectoryobjectid": gen.guid(), "isdisabled": int(index == SALES_USERS - 1),
            "accessmode": 0, "islicensed": 1, "isintegrationuser": 0,
            "emailrouteraccessapproval": {3: 2, 8: 3}.get(index, 1),
            "_businessunitid_value": BUSINESS_UNIT_ID, "createdon": created, "modifiedon": modified,
        })  # fmt: skip
    rows.append(application_user(client_id, gen.stamp(gen.anchor - YEAR)))
    return rows


def application_user(client_id: str, stamp: str) -> dict[str, Any]:
    """The application user of `client_id` (the caller of every Web API request)."""
    return {
        "systemuserid": application_user_id(client_id), "firstname": "dvconnect",
        "lastname": "Application", "fullname": "dvconnect Application",
        "internalemailaddress": "dvconnect-app@contoso.example",
        "domainname": f"app-{_slug(client_id) or 'client'}@contoso.example",
        "azureactivedirectoryobjectid": application_user_id(f"object:{client_id}"),
        "applicationid": application_id(client_id), "isdisabled": 0, "accessmode": 4,
        "islicensed": 0, "isintegrationuser": 0, "emailrouteraccessapproval": 0,
        "_businessunitid_value": BUSINESS_UNIT_ID, "createdon": stamp, "modifiedon": stamp,
    }  # fmt: skip


def account(gen: Generator, index: int, owners: list[str]) -> dict[str, Any]:
    base = COMPANIES[index % len(COMPANIES)]
    name = (
        base
        if index < len(COMPANIES)
        else f"{base} ({CITIES[index // len(COMPANIES) % len(CITIES)]} {index // len(COMPANIES)})"
    )
    owner = gen.pick(owners)
    created, modified = gen.created_modified()
    domain = f"{_slug(name)}.example"
    return {
        "accountid": gen.guid(), "name": name, "accountnumber": f"ACC-{index + 1:06d}",
        "emailaddress1": f"info@{domain}", "telephone1": gen.phone(), "websiteurl": f"https://www.{domain}",
        "customertypecode": gen.pick((3, 3, 3, 8, 8, 5, 9)),
        "industrycode": 1 + gen.below(33),
        "numberofemployees": gen.pick((10, 25, 50, 120, 500, 2000, 15000)),
        "marketingonly": 0, "donotemail": int(gen.chance(0.03)),
        "donotphone": int(gen.chance(0.05)),
        "preferredcontactmethodcode": 1, "statecode": 0, "statuscode": 1,
        **_system_values(owner, created, modified),
    }  # fmt: skip


def contact(
    gen: Generator,
    owners: list[str],
    accounts: list[dict[str, Any]],
    person: Person | None = None,
    record_id: str | None = None,
) -> dict[str, Any]:
    company = gen.pick(accounts) if accounts and gen.chance(0.75) else None
    domain = company["websiteurl"].removeprefix("https://www.") if company else "mail.example"
    person = person or gen.person(domain)
    inactive = gen.chance(0.05)
    owner = gen.pick(owners)
    created, modified = gen.created_modified()
    return {
        "contactid": record_id or gen.guid(), "firstname": person.first, "lastname": person.last,
        "fullname": f"{person.first} {person.last}", "emailaddress1": person.email,
        "telephone1": gen.phone(), "mobilephone": gen.phone() if gen.chance(0.6) else None,
        "jobtitle": gen.pick(JOB_TITLES),
        "accountrolecode": gen.pick((1, 2, 2, 3, None)),
        "marketingonly": 0, "donotemail": int(gen.chance(0.05)),
        "donotphone": int(gen.chance(0.08)), "donotbulkemail": int(gen.chance(0.04)),
        "preferredcontactmethodcode": gen.pick((1, 1, 2, 3)),
        "_parentcustomerid_value": company["accountid"] if company else None,
        "parentcustomeridtype": "account" if company else None,
        "statecode": 1 if inactive else 0, "statuscode": 2 if inactive else 1,
        **_system_values(owner, created, modified),
    }  # fmt: skip


class LeadFactory:
    """Makes lead rows as tuples in storage column order, column by column (a million is fast).

    One third are orphans (30% of those borrow a contact's name and email, in another spelling),
    the rest belong to a contact (70% also to its account). 80% open, 10% qualified, 10%
    disqualified; 10% about the Contoso Ltd Conference. With `team`, a share of the leads that
    have a parent contact is owned by that team, drawn from a stream of its own.
    """

    columns = tuple(c for c in LEAD.storage_columns if c != "versionnumber")

    def __init__(
        self,
        gen: Generator,
        owners: list[str],
        contacts: list[ContactRef],
        team: tuple[str, random.Random] | None = None,
    ) -> None:
        self.gen = gen
        self.owners = owners
        self.contacts = contacts
        self.team = team
        self.domains = [(company, f"{_slug(company)}.example") for company in COMPANIES]

    def _person(self) -> tuple[str, str, str, str, str | None, str | None]:
        """(first, last, email, company, parent contact id, parent account id)."""
        gen, draw, contacts = self.gen, self.gen._draw, self.contacts
        if draw() < 1 / 3 or not contacts:
            if contacts and draw() < 0.3:
                shared = contacts[int(draw() * len(contacts))]
                email = gen.vary(shared.person.email.strip().lower())
                company = shared.company or COMPANIES[int(draw() * len(COMPANIES))]
                return shared.person.first, shared.person.last, email, company, None, None
            company, domain = self.domains[int(draw() * len(self.domains))]
            person = gen.person(domain)
            return person.first, person.last, person.email, company, None, None
        parent = contacts[int(draw() * len(contacts))]
        company = parent.company or COMPANIES[int(draw() * len(COMPANIES))]
        account_id = parent.account_id if draw() < 0.7 else None
        person = parent.person
        return person.first, person.last, person.email, company, parent.contact_id, account_id

    def _state(self) -> tuple[int, int]:
        draw = self.gen._draw
        roll = draw()
        if roll < 0.8:
            return 0, (1, 1, 2)[int(draw() * 3)]
        if roll < 0.9:
            return 1, 3
        return 2, 4 + int(draw() * 4)

    def rows(self, ids: list[str]) -> list[tuple[Any, ...]]:
        gen, draw, count = self.gen, self.gen._draw, len(ids)
        people = [self._person() for _ in ids]
        states = [self._state() for _ in ids]
        owners = [self.owners[int(draw() * len(self.owners))] for _ in ids]
        kinds = ["systemuser"] * count
        owned = list(owners)
        if self.team is not None:
            team_id, team_draw = self.team[0], self.team[1].random
            for index, person in enumerate(people):
                if person[4] is not None and team_draw() < TEAM_SHARE:
                    owned[index], kinds[index] = team_id, "team"
        pairs = list(zip(owned, kinds, strict=True))
        created, modified = gen.stamps(count)
        phones = [gen.phone() for _ in range(min(count, 5000))]
        first, last = [p[0] for p in people], [p[1] for p in people]

        def some(values: Sequence[Any], probability: float = 1.0) -> list[Any]:
            size = len(values)
            return [values[int(draw() * size)] if draw() < probability else None for _ in ids]

        def flags(probability: float) -> list[int]:
            return [int(draw() < probability) for _ in ids]

        columns: dict[str, list[Any]] = {
            "leadid": ids, "firstname": first, "lastname": last,
            "fullname": [f"{a} {b}" for a, b in zip(first, last, strict=True)],
            "subject": [
                CONFERENCE if draw() < 0.1 else TOPICS[int(draw() * len(TOPICS))] for _ in ids
            ],
            "companyname": [p[3] for p in people], "jobtitle": some(JOB_TITLES),
            "emailaddress1": [p[2] for p in people], "telephone1": some(phones),
            "mobilephone": some(phones, 0.5),
            "description": some(("Met at the booth; asked for a follow-up call.",), 0.1),
            "leadsourcecode": some(range(1, 11), 0.95), "leadqualitycode": some((1, 2, 2, 3, None)),
            "preferredcontactmethodcode": some((1, 1, 2, 3)),
            "donotemail": flags(0.05), "donotphone": flags(0.1), "donotbulkemail": flags(0.05),
            "statecode": [s[0] for s in states], "statuscode": [s[1] for s in states],
            "_parentcontactid_value": [p[4] for p in people],
            "_parentaccountid_value": [p[5] for p in people],
            "_ownerid_value": owned, "owneridtype": kinds,
            "_owninguser_value": [o if k == "systemuser" else None for o, k in pairs],
            "_owningteam_value": [o if k == "team" else None for o, k in pairs],
            "_createdby_value": owners, "_modifiedby_value": owners,
            "createdon": created, "modifiedon": modified,
        }  # fmt: skip
        empty = [None] * count
        return list(zip(*(columns.get(name, empty) for name in self.columns), strict=True))


def contact_ref(row: dict[str, Any], accounts: dict[str, str]) -> ContactRef:
    account_id = row.get("_parentcustomerid_value")
    return ContactRef(
        row["contactid"],
        Person(row["firstname"] or "", row["lastname"] or "", row["emailaddress1"] or ""),
        account_id,
        accounts.get(account_id) if account_id else None,
    )


def _lead_rows(
    gen: Generator,
    count: int,
    owners: list[str],
    refs: list[ContactRef],
    team: tuple[str, random.Random],
) -> Iterator[tuple[Any, ...]]:
    """All lead rows in id order, made chunk by chunk: chunk i takes ids from the i-th slice of
    the id space, so the chunks come out sorted (inserts append to the primary key)."""
    factory = LeadFactory(gen, owners, refs, team)
    chunks = max(1, -(-count // CHUNK))
    for index in range(chunks):
        low = (index << 128) // chunks
        width = ((index + 1) << 128) // chunks - low
        size = count // chunks + (index < count % chunks)
        yield from factory.rows(sorted(gen.guid(low + gen.bits() % width) for _ in range(size)))


def seed(
    tx: WriteTx, *, seed: int, leads: int, contacts: int, anchor: datetime, client_id: str
) -> dict[str, int]:
    """Fill empty tables; returns the row count per table."""
    gen = Generator(seed, anchor)
    users = _users(gen, client_id)
    tx.bulk_insert(SYSTEMUSER, _columns(SYSTEMUSER), [_row(SYSTEMUSER, u) for u in users])
    owners = [u["systemuserid"] for u in users[:SALES_USERS]]
    accounts = [account(gen, index, owners) for index in range(max(5, contacts // 25))]
    tx.bulk_insert(ACCOUNT, _columns(ACCOUNT), [_row(ACCOUNT, a) for a in accounts])
    names = {a["accountid"]: a["name"] for a in accounts}
    refs: list[ContactRef] = []
    contact_rows = []
    for index, contact_id in enumerate(sorted(gen.guid() for _ in range(contacts))):
        special = {0: ("Zoë", "Ångström"), 1: ("Seán", "O'Brien")}.get(index)
        person = gen.person("mail.example", *special) if special else None
        row = contact(gen, owners, accounts, person, contact_id)
        refs.append(contact_ref(row, names))
        contact_rows.append(_row(CONTACT, row))
    tx.bulk_insert(CONTACT, _columns(CONTACT), contact_rows)
    team = (OWNER_TEAM_ID, random.Random(f"{seed}:team-owners"))
    tx.bulk_insert(LEAD, LeadFactory.columns, _lead_rows(gen, leads, owners, refs, team))
    counts = _organization(tx, seed, anchor, client_id)
    counts["systemuser"] += len(users)
    views = system_views(application_user_id(client_id), gen.stamp(gen.anchor))
    tx.bulk_insert(SAVEDQUERY, _columns(SAVEDQUERY), [_row(SAVEDQUERY, v) for v in views])
    return {
        **counts, "account": len(accounts), "contact": contacts, "lead": leads,
        "savedquery": len(views),
    }  # fmt: skip


def _organization(tx: WriteTx, seed: int, anchor: datetime, client_id: str) -> dict[str, int]:
    """The business unit, teams, extra users, queue and processes (§21, workflows)."""
    gen = Generator(f"{seed}:organization", anchor)
    app = application_user_id(client_id)
    stamp = gen.stamp(gen.anchor - YEAR)
    made = {"createdon": stamp, "modifiedon": stamp}
    by_app = {"_createdby_value": app, "_modifiedby_value": app, **made}
    units = [{"businessunitid": BUSINESS_UNIT_ID, "name": "Contoso", "isdisabled": 0, **made}]
    users = []
    for disabled, accessmode in ((1, 0), (0, 4)):  # a leaver; a non-interactive service account
        person = gen.person("contoso.example")
        users.append({
            "systemuserid": gen.guid(), "firstname": person.first, "lastname": person.last,
            "fullname": f"{person.first} {person.last}",
            "internalemailaddress": person.email.strip().lower(),
            "domainname": person.email.strip().lower(), "azureactivedirectoryobjectid": gen.guid(),
            "isdisabled": disabled, "accessmode": accessmode, "islicensed": 0,
            "isintegrationuser": int(accessmode == 4), "emailrouteraccessapproval": 0,
            "_businessunitid_value": BUSINESS_UNIT_ID, **made,
        })  # fmt: skip
    teams = [
        {"teamid": DEFAULT_TEAM_ID, "name": "Contoso", "teamtype": 0, "isdefault": 1},
        {"teamid": OWNER_TEAM_ID, "name": "Inside Sales", "teamtype": 0, "isdefault": 0,
         "emailaddress": "inside-sales@contoso.example"},
        {"teamid": ACCESS_TEAM_ID, "name": "Deal Room", "teamtype": 1, "isdefault": 0},
    ]  # fmt: skip
    team_owner = {"_ownerid_value": OWNER_TEAM_ID, "owneridtype": "team",
                  "_owningteam_value": OWNER_TEAM_ID, **by_app}  # fmt: skip
    queues = [{
        "queueid": QUEUE_ID, "name": "Sales Inbox", "emailaddress": "sales@contoso.example",
        "emailrouteraccessapproval": 1, "statecode": 0, "statuscode": 1, **team_owner,
    }]  # fmt: skip
    app_owner = {"_ownerid_value": app, "owneridtype": "systemuser", "_owninguser_value": app}
    workflows = [
        {"workflowid": org_id(f"workflow:{key}"), "name": name, "uniquename": unique,
         "category": category, "type": 1, "mode": 0, "ondemand": int(ondemand),
         "primaryentity": entity, "statecode": state, "statuscode": state + 1,
         **app_owner, **by_app}
        for key, name, unique, category, ondemand, entity, state in (
            ("lead-nurture", "Lead nurture follow-up", None, 0, True, "lead", 1),
            ("contact-welcome", "Contact welcome", None, 0, True, "contact", 1),
            ("lead-reengage", "Lead re-engagement (draft)", None, 0, True, "lead", 0),
            ("route-lead", "Route lead", "new_RouteLead", 3, False, "lead", 1),
        )
    ]  # fmt: skip
    for table, rows in (
        (BUSINESSUNIT, units),
        (SYSTEMUSER, users),
        (TEAM, [{**t, "_businessunitid_value": BUSINESS_UNIT_ID, **made} for t in teams]),
        (QUEUE, queues),
        (WORKFLOW, workflows),
    ):
        tx.bulk_insert(table, _columns(table), [_row(table, row) for row in rows])
    return {
        "businessunit": len(units),
        "systemuser": len(users),
        "team": len(teams),
        "queue": len(queues),
        "workflow": len(workflows),
    }


# (table, name, columns, state filter, only the caller's records, default view)
SYSTEM_VIEWS = (
    ("contact", "Active Contacts", ("fullname", "emailaddress1", "parentcustomerid"), 0, False,
     True),
    ("contact", "My Active Contacts", ("fullname", "emailaddress1", "telephone1"), 0, True, False),
    ("contact", "Inactive Contacts", ("fullname", "emailaddress1"), 1, False, False),
    ("lead", "Open Leads", ("fullname", "subject", "emailaddress1", "createdon"), 0, False, True),
    ("lead", "My Open Leads", ("fullname", "subject", "createdon"), 0, True, False),
    ("account", "Active Accounts", ("name", "telephone1", "primarycontactid"), 0, False, True),
    ("account", "My Active Accounts", ("name", "telephone1"), 0, True, False),
)  # fmt: skip


def system_views(owner: str, stamp: str) -> list[dict[str, Any]]:
    """A few public views per table (querytype 0, published), in primary-key order."""
    codes = {"contact": 2, "lead": 4, "account": 1}
    rows = []
    for table, name, columns, state, mine, default in SYSTEM_VIEWS:
        primary = f"{table}id"
        attributes = "".join(f'<attribute name="{c}" />' for c in (*columns, primary))
        conditions = f'<condition attribute="statecode" operator="eq" value="{state}" />'
        if mine:
            conditions += '<condition attribute="ownerid" operator="eq-userid" />'
        fetch = (
            '<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">'
            f'<entity name="{table}">{attributes}<order attribute="{columns[0]}" '
            f'descending="false" /><filter type="and">{conditions}</filter></entity></fetch>'
        )
        cells = "".join(f'<cell name="{c}" width="150" />' for c in columns)
        layout = (
            f'<grid name="resultset" object="{codes[table]}" jump="{columns[0]}" select="1" '
            f'icon="1" preview="1"><row name="result" id="{primary}">{cells}</row></grid>'
        )
        rows.append(
            {
                "savedqueryid": str(uuid.uuid5(EMULATOR_NAMESPACE, f"savedquery:{table}:{name}")),
                "name": name, "returnedtypecode": table, "querytype": 0, "fetchxml": fetch,
                "layoutxml": layout, "isdefault": int(default), "isquickfindquery": 0,
                "componentstate": 0, "statecode": 0, "statuscode": 1,
                "_createdby_value": owner, "_modifiedby_value": owner,
                "createdon": stamp, "modifiedon": stamp,
            }
        )  # fmt: skip
    return sorted(rows, key=lambda row: row["savedqueryid"])


def _mutation(gen: Generator, table: Table, current: dict[str, Any]) -> dict[str, Any]:
    """One realistic edit: a new phone, title, rating, email spelling, or a state change."""
    email = (current.get("emailaddress1") or "").strip()
    choices: list[dict[str, Any]] = [{"telephone1": gen.phone()}]
    if table is LEAD:
        choices += [
            {"jobtitle": gen.pick(JOB_TITLES)},
            {"leadqualitycode": 1 + gen.below(3)},
            {"subject": gen.pick((CONFERENCE, *TOPICS))},
            {"emailaddress1": gen.vary(email.lower()) if email else None},
        ]
        if current.get("statecode") == 0:
            choices.append({"statecode": 2, "statuscode": 4 + gen.below(4)})
    elif table is CONTACT:
        choices += [
            {"jobtitle": gen.pick(JOB_TITLES)},
            {"donotemail": 1 - int(current.get("donotemail") or 0)},
            {"emailaddress1": gen.vary(email.lower()) if email else None},
            {"mobilephone": gen.phone()},
        ]
    else:
        choices += [
            {"numberofemployees": gen.pick((10, 25, 50, 120, 500, 2000, 15000))},
            {"description": gen.pick(TOPICS)},
        ]
    return gen.pick(choices)


def _maker(
    tx: WriteTx, gen: Generator, table: Table, owners: list[str]
) -> Callable[[], dict[str, Any]]:
    """A factory of new rows for `table` that borrows existing contacts and accounts."""
    if table is LEAD:
        names = dict(tx.rows('SELECT accountid, name FROM "account"'))
        columns = ("contactid", "firstname", "lastname", "emailaddress1", "_parentcustomerid_value")
        rows = tx.rows(f'SELECT {", ".join(columns)} FROM "contact" ORDER BY contactid LIMIT 1000')
        refs = [contact_ref(dict(zip(columns, row, strict=True)), names) for row in rows]
        factory = LeadFactory(gen, owners, refs)
        return lambda: dict(zip(factory.columns, factory.rows([gen.guid()])[0], strict=True))
    if table is CONTACT:
        accounts = [
            {"accountid": row[0], "websiteurl": row[1]}
            for row in tx.rows('SELECT accountid, websiteurl FROM "account" ORDER BY accountid')
        ]
        return lambda: contact(gen, owners, accounts)
    return lambda: account(gen, 1000 + gen.below(99_000), owners)


def churn(
    tx: WriteTx,
    table: Table,
    *,
    creates: int,
    updates: int,
    deletes: int,
    seed: int,
    anchor: datetime,
) -> dict[str, list[str]]:
    """Random creates, updates and deletes on lead, contact or account (cascades included).

    Deterministic for a given seed and data: how many rows and tombstones the table has is part
    of the seed, so the same call made again on changed data makes new records instead of
    repeating ids, while the same call on the same data (after a reset) repeats itself.
    """
    (tombstones,) = tx.rows(
        f"SELECT count(*) FROM {TOMBSTONES} WHERE tablename = ?", (table.name,)
    )[0]
    existing = tx.ids(table)
    gen = Generator(hash((seed, len(existing), tombstones)), anchor)
    now = tx.now
    owners = [row[0] for row in tx.rows(
        'SELECT systemuserid FROM "systemuser" WHERE applicationid IS NULL '
        "AND coalesce(islicensed, 1) = 1 ORDER BY systemuserid"
    )]  # fmt: skip
    doomed = gen.random.sample(existing, min(deletes, len(existing)))
    remaining = sorted(set(existing) - set(doomed))
    edited = gen.random.sample(remaining, min(updates, len(remaining)))
    make = _maker(tx, gen, table, owners)
    created: list[str] = []
    for _ in range(creates):
        values = make()
        values.update(createdon=now, modifiedon=now)
        tx.insert(table, {k: v for k, v in values.items() if k in table.storage_columns})
        created.append(values[table.primary_id])
    for record_id in edited:
        current = tx.record(table, record_id) or {}
        tx.update(table, record_id, {**_mutation(gen, table, current), "modifiedon": now})
    for record_id in doomed:
        tx.delete(table, record_id)
    return {"created": created, "updated": sorted(edited), "deleted": sorted(doomed)}
