"""Table definitions as data (reference §13): the one source for storage, validation and metadata.

Each `Table` lists its `Attribute`s with the Dataverse metadata the emulator needs: type, MaxLength,
option values (with the state each status belongs to), required level, valid-for-create/update,
and for lookups the navigation property, relationship and delete cascade of every target. The SQLite
tables, the write validation, the query compiler and the EntityDefinitions / `$metadata` endpoints
are all generated from these definitions, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property


class AttributeType(StrEnum):
    """`AttributeType` values of the attributes the emulator serves (§15)."""

    STRING = "String"
    MEMO = "Memo"
    INTEGER = "Integer"
    BIGINT = "BigInt"
    BOOLEAN = "Boolean"
    DATETIME = "DateTime"
    LOOKUP = "Lookup"
    CUSTOMER = "Customer"
    OWNER = "Owner"
    PICKLIST = "Picklist"
    STATE = "State"
    STATUS = "Status"
    UNIQUEIDENTIFIER = "Uniqueidentifier"
    ENTITYNAME = "EntityName"


class RequiredLevel(StrEnum):
    """`RequiredLevel/Value`; the API enforces `SystemRequired` only (U14)."""

    NONE = "None"
    SYSTEM_REQUIRED = "SystemRequired"
    APPLICATION_REQUIRED = "ApplicationRequired"
    RECOMMENDED = "Recommended"


class OnDelete(StrEnum):
    """What deleting the referenced record does to the referencing one (§7.7, §13.10)."""

    REMOVE_LINK = "RemoveLink"
    CASCADE = "Cascade"
    RESTRICT = "Restrict"


LOOKUP_TYPES = frozenset({AttributeType.LOOKUP, AttributeType.CUSTOMER, AttributeType.OWNER})
CHOICE_TYPES = frozenset({AttributeType.PICKLIST, AttributeType.STATE, AttributeType.STATUS})
TEXT_TYPES = frozenset({AttributeType.STRING, AttributeType.MEMO, AttributeType.ENTITYNAME})
INTEGER_TYPES = frozenset({AttributeType.INTEGER, AttributeType.BIGINT}) | CHOICE_TYPES
GUID_TYPES = frozenset({AttributeType.UNIQUEIDENTIFIER}) | LOOKUP_TYPES


@dataclass(frozen=True)
class Option:
    """One choice value. Status options name their state; state options their default status."""

    value: int
    label: str
    state: int | None = None
    default_status: int | None = None


@dataclass(frozen=True)
class LookupTarget:
    """One table a lookup can point at, with its case-sensitive navigation property names.

    `assign` marks a parental relationship whose Assign cascades: giving the referenced record a
    new owner gives it to the referencing records too (§18.4, §21.1).
    """

    table: str
    navigation: str
    relationship: str
    on_delete: OnDelete = OnDelete.REMOVE_LINK
    assign: bool = False


@dataclass(frozen=True)
class PartyRole:
    """Who may take one participation type (mask) on an activity: record tables, and whether an
    address alone (`addressused`, an unresolved party) will do (§8.5, §18.5, §19.4)."""

    tables: tuple[str, ...]
    unresolved: bool = True


@dataclass(frozen=True, eq=False)
class Attribute:
    """One column as Dataverse describes it (AttributeMetadata); compared by identity."""

    name: str
    type: AttributeType
    display: str
    max_length: int | None = None
    required: RequiredLevel = RequiredLevel.NONE
    create: bool = True
    update: bool = True
    options: tuple[Option, ...] = ()
    targets: tuple[LookupTarget, ...] = ()
    format: str | None = None
    date_only: bool = False
    labels: tuple[str, str] = ("Yes", "No")
    min_value: int | None = None
    max_value: int | None = None
    default: int | bool | None = None

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def is_choice(self) -> bool:
        return self.type in CHOICE_TYPES

    @property
    def is_text(self) -> bool:
        return self.type in TEXT_TYPES

    @property
    def read_name(self) -> str:
        """The property name in JSON rows, `$select` and `$filter` (`_x_value` for lookups)."""
        return f"_{self.name}_value" if self.is_lookup else self.name

    @property
    def type_column(self) -> str | None:
        """Storage column holding the target table of a polymorphic lookup."""
        return f"{self.name}type" if len(self.targets) > 1 else None

    @property
    def edm_type(self) -> str:
        if self.is_text:
            return "Edm.String"
        if self.type is AttributeType.BOOLEAN:
            return "Edm.Boolean"
        if self.type is AttributeType.DATETIME:
            return "Edm.Date" if self.date_only else "Edm.DateTimeOffset"
        if self.type is AttributeType.BIGINT:
            return "Edm.Int64"
        if self.type in GUID_TYPES:
            return "Edm.Guid"
        return "Edm.Int32"

    @cached_property
    def option_labels(self) -> dict[int, str]:
        return {option.value: option.label for option in self.options}


@dataclass(frozen=True, eq=False)
class Table:
    """One table (EntityMetadata) and its attributes, in row order; compared by identity."""

    name: str
    schema_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    display: str
    display_plural: str
    object_type_code: int
    ownership: str
    attributes: tuple[Attribute, ...]
    computed_fullname: bool = False
    unsupported: frozenset[str] = frozenset()
    is_activity: bool = False
    duplicate_keys: tuple[str, ...] = ()
    party_roles: Mapping[int, PartyRole] = field(default_factory=dict)
    bulk: bool = False
    parent: str | None = None
    upsert: bool = True  # False: the table has no Upsert message; PATCH never creates
    solution_component: bool = False  # True: updates wait for PublishXml (componentstate, U53)

    @property
    def is_party(self) -> bool:
        """activityparty: written only through an activity's `<activity>_activity_parties`."""
        return self.name == "activityparty"

    def supports(self, message: str) -> bool:
        """Whether the Web API serves `message` (Create, Retrieve, Update, Delete) for the table."""
        return message not in self.unsupported

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.name}"

    @cached_property
    def by_name(self) -> dict[str, Attribute]:
        return {attribute.name: attribute for attribute in self.attributes}

    @cached_property
    def by_read_name(self) -> dict[str, Attribute]:
        return {attribute.read_name: attribute for attribute in self.attributes}

    @cached_property
    def navigations(self) -> dict[str, tuple[Attribute, LookupTarget]]:
        """Single-valued navigation property name → (lookup attribute, its first target).

        `ownerid` is one navigation for two targets (systemuser, team): reads and expansions
        follow the first, binds choose by the URL (`bindings`).
        """
        found: dict[str, tuple[Attribute, LookupTarget]] = {}
        for attribute in self.attributes:
            for target in attribute.targets:
                found.setdefault(target.navigation, (attribute, target))
        return found

    @cached_property
    def bindings(self) -> dict[str, tuple[Attribute, tuple[LookupTarget, ...]]]:
        """Single-valued navigation property name → (lookup attribute, every target it binds)."""
        return {
            name: (attribute, tuple(t for t in attribute.targets if t.navigation == name))
            for name, (attribute, _) in self.navigations.items()
        }

    @cached_property
    def key(self) -> Attribute:
        return self.by_name[self.primary_id]

    @cached_property
    def storage_columns(self) -> tuple[str, ...]:
        columns = [attribute.read_name for attribute in self.attributes]
        columns += [a.type_column for a in self.attributes if a.type_column]
        return tuple(columns)


@dataclass(frozen=True)
class Reference:
    """A lookup on `table` that points at another table through `target` (a 1:N relationship)."""

    table: Table
    attribute: Attribute
    target: LookupTarget


class Schema:
    """The served tables, found by logical name or entity set name."""

    def __init__(self, tables: Iterable[Table]) -> None:
        self.tables = tuple(tables)
        self.by_name = {table.name: table for table in self.tables}
        self.by_set = {table.entity_set: table for table in self.tables}

    def references_to(self, table_name: str) -> tuple[Reference, ...]:
        """Every lookup, in any served table, that can point at `table_name`."""
        return tuple(
            Reference(table, attribute, target)
            for table in self.tables
            for attribute in table.attributes
            for target in attribute.targets
            if target.table == table_name
        )

    def collection(self, table_name: str, navigation: str) -> Reference | None:
        """The collection-valued navigation `navigation` of `table_name` (lead_parent_contact)."""
        for reference in self.references_to(table_name):
            if reference.target.relationship == navigation:
                return reference
        return None


# ---------------------------------------------------------------------------------------------
# Attribute builders for the patterns that repeat across tables.


def _key(name: str, display: str) -> Attribute:
    return Attribute(
        name,
        AttributeType.UNIQUEIDENTIFIER,
        display,
        required=RequiredLevel.SYSTEM_REQUIRED,
        update=False,
    )


def _text(
    name: str,
    display: str,
    max_length: int,
    *,
    required: RequiredLevel = RequiredLevel.NONE,
    format: str = "Text",
    read_only: bool = False,
) -> Attribute:
    return Attribute(
        name,
        AttributeType.STRING,
        display,
        max_length=max_length,
        required=required,
        format=format,
        create=not read_only,
        update=not read_only,
    )


def _memo(name: str, display: str, max_length: int) -> Attribute:
    return Attribute(name, AttributeType.MEMO, display, max_length=max_length, format="TextArea")


def _choice(
    name: str, display: str, labels: dict[int, str], default: int | None = None
) -> Attribute:
    options = tuple(Option(value, label) for value, label in labels.items())
    return Attribute(name, AttributeType.PICKLIST, display, options=options, default=default)


def _boolean(
    name: str, display: str, true: str = "Do Not Allow", false: str = "Allow"
) -> Attribute:
    return Attribute(name, AttributeType.BOOLEAN, display, labels=(true, false), default=False)


def _state(states: dict[int, tuple[str, int]]) -> Attribute:
    options = tuple(
        Option(value, label, default_status=status) for value, (label, status) in states.items()
    )
    return Attribute(
        "statecode",
        AttributeType.STATE,
        "Status",
        options=options,
        required=RequiredLevel.SYSTEM_REQUIRED,
        create=False,
    )


def _status(statuses: dict[int, tuple[str, int]]) -> Attribute:
    options = tuple(Option(value, label, state=state) for value, (label, state) in statuses.items())
    return Attribute("statuscode", AttributeType.STATUS, "Status Reason", options=options)


def _lookup(
    name: str,
    display: str,
    *targets: LookupTarget,
    kind: AttributeType = AttributeType.LOOKUP,
    required: RequiredLevel = RequiredLevel.NONE,
    writable: bool = True,
) -> Attribute:
    return Attribute(
        name, kind, display, targets=targets, required=required, create=writable, update=writable
    )


def _system(table: str) -> tuple[Attribute, ...]:
    """createdby/modifiedby, createdon/modifiedon and versionnumber: set by the emulator only."""
    base = f"lk_{table}base"
    return (
        _lookup(
            "createdby",
            "Created By",
            LookupTarget("systemuser", "createdby", f"{base}_createdby", OnDelete.RESTRICT),
            writable=False,
        ),
        _lookup(
            "modifiedby",
            "Modified By",
            LookupTarget("systemuser", "modifiedby", f"{base}_modifiedby", OnDelete.RESTRICT),
            writable=False,
        ),
        Attribute("createdon", AttributeType.DATETIME, "Created On", create=False, update=False),
        Attribute("modifiedon", AttributeType.DATETIME, "Modified On", create=False, update=False),
        Attribute(
            "versionnumber", AttributeType.BIGINT, "Version Number", create=False, update=False
        ),
    )


def _owner(table: str, relationship: str) -> tuple[Attribute, ...]:
    """`ownerid` (a user or a team, §21.1) and the read-only `owninguser` / `owningteam` that say
    which of the two it is."""
    return (
        _lookup(
            "ownerid",
            "Owner",
            LookupTarget("systemuser", "ownerid", relationship, OnDelete.RESTRICT),
            LookupTarget("team", "ownerid", relationship, OnDelete.RESTRICT),
            kind=AttributeType.OWNER,
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _lookup(
            "owninguser",
            "Owning User",
            LookupTarget("systemuser", "owninguser", f"{table}_owning_user", OnDelete.RESTRICT),
            writable=False,
        ),
        _lookup(
            "owningteam",
            "Owning Team",
            LookupTarget("team", "owningteam", f"team_{table}", OnDelete.RESTRICT),
            writable=False,
        ),
    )


def _approval() -> Attribute:
    """`emailrouteraccessapproval` of users and queues (§21.2): not valid for create."""
    labels = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
    options = tuple(Option(value, label) for value, label in labels.items())
    return Attribute(
        "emailrouteraccessapproval",
        AttributeType.PICKLIST,
        "Primary Email Status",
        options=options,
        default=0,
        create=False,
    )


PREFERRED_CONTACT_METHOD = {1: "Any", 2: "Email", 3: "Phone", 4: "Fax", 5: "Mail"}
ACTIVE_STATES = {0: ("Active", 1), 1: ("Inactive", 2)}
ACTIVE_STATUSES = {1: ("Active", 0), 2: ("Inactive", 1)}

LEAD = Table(
    name="lead",
    schema_name="Lead",
    entity_set="leads",
    primary_id="leadid",
    primary_name="fullname",
    display="Lead",
    display_plural="Leads",
    object_type_code=4,
    ownership="UserOwned",
    computed_fullname=True,
    duplicate_keys=("emailaddress1",),
    bulk=True,
    attributes=(
        _key("leadid", "Lead"),
        _text("firstname", "First Name", 50, required=RequiredLevel.RECOMMENDED),
        _text("lastname", "Last Name", 50, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("fullname", "Name", 160, read_only=True),
        _text("subject", "Topic", 300, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("companyname", "Company Name", 100, required=RequiredLevel.RECOMMENDED),
        _text("jobtitle", "Job Title", 100),
        _text("emailaddress1", "Email", 100, format="Email"),
        _text("telephone1", "Business Phone", 50, format="Phone"),
        _text("mobilephone", "Mobile Phone", 20, format="Phone"),
        _memo("description", "Description", 2000),
        _choice(
            "leadsourcecode",
            "Lead Source",
            {
                1: "Advertisement",
                2: "Employee Referral",
                3: "External Referral",
                4: "Partner",
                5: "Public Relations",
                6: "Seminar",
                7: "Trade Show",
                8: "Web",
                9: "Word of Mouth",
                10: "Other",
            },
        ),
        _choice("leadqualitycode", "Rating", {1: "Hot", 2: "Warm", 3: "Cold"}),
        _choice(
            "preferredcontactmethodcode", "Preferred Method of Contact", PREFERRED_CONTACT_METHOD, 1
        ),
        _boolean("donotemail", "Do not allow Emails"),
        _boolean("donotphone", "Do not allow Phone Calls"),
        _boolean("donotbulkemail", "Do not allow Bulk Emails"),
        _state({0: ("Open", 1), 1: ("Qualified", 3), 2: ("Disqualified", 4)}),
        _status(
            {
                1: ("New", 0),
                2: ("Contacted", 0),
                3: ("Qualified", 1),
                4: ("Lost", 2),
                5: ("Cannot Contact", 2),
                6: ("No Longer Interested", 2),
                7: ("Canceled", 2),
            }
        ),
        _lookup(
            "parentcontactid",
            "Parent Contact for lead",
            LookupTarget("contact", "parentcontactid", "lead_parent_contact"),
        ),
        _lookup(
            "parentaccountid",
            "Parent Account for lead",
            LookupTarget("account", "parentaccountid", "lead_parent_account"),
        ),
        _lookup(
            "customerid",
            "Customer",
            LookupTarget("account", "customerid_account", "lead_customer_accounts"),
            LookupTarget("contact", "customerid_contact", "lead_customer_contacts"),
            kind=AttributeType.CUSTOMER,
        ),
        _lookup(
            "qualifyingopportunityid",
            "Qualifying Opportunity",
            LookupTarget("opportunity", "qualifyingopportunityid", "lead_qualifying_opportunity"),
        ),
        *_owner("lead", "owner_leads"),
        *_system("lead"),
    ),
)

CONTACT = Table(
    name="contact",
    schema_name="Contact",
    entity_set="contacts",
    primary_id="contactid",
    primary_name="fullname",
    display="Contact",
    display_plural="Contacts",
    object_type_code=2,
    ownership="UserOwned",
    computed_fullname=True,
    duplicate_keys=("emailaddress1",),
    bulk=True,
    attributes=(
        _key("contactid", "Contact"),
        _text("firstname", "First Name", 50, required=RequiredLevel.RECOMMENDED),
        _text("lastname", "Last Name", 50, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("fullname", "Full Name", 160, read_only=True),
        _text("emailaddress1", "Email", 100, format="Email"),
        _text("telephone1", "Business Phone", 50, format="Phone"),
        _text("mobilephone", "Mobile Phone", 50, format="Phone"),
        _text("jobtitle", "Job Title", 100),
        _memo("description", "Description", 2000),
        _choice("accountrolecode", "Role", {1: "Decision Maker", 2: "Employee", 3: "Influencer"}),
        _boolean("marketingonly", "Marketing Only", "Yes", "No"),
        _boolean("donotemail", "Do not allow Emails"),
        _boolean("donotphone", "Do not allow Phone Calls"),
        _boolean("donotbulkemail", "Do not allow Bulk Emails"),
        _choice(
            "preferredcontactmethodcode", "Preferred Method of Contact", PREFERRED_CONTACT_METHOD, 1
        ),
        Attribute("birthdate", AttributeType.DATETIME, "Birthday", date_only=True),
        _lookup(
            "parentcustomerid",
            "Company Name",
            LookupTarget(
                "account", "parentcustomerid_account", "contact_customer_accounts", OnDelete.CASCADE
            ),
            LookupTarget(
                "contact", "parentcustomerid_contact", "contact_customer_contacts", OnDelete.CASCADE
            ),
            kind=AttributeType.CUSTOMER,
        ),
        _lookup(
            "originatingleadid",
            "Originating Lead",
            LookupTarget("lead", "originatingleadid", "contact_originating_lead"),
        ),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_owner("contact", "owner_contacts"),
        *_system("contact"),
    ),
)

INDUSTRIES = (
    "Accounting",
    "Agriculture and Non-petrol Natural Resource Extraction",
    "Broadcasting Printing and Publishing",
    "Brokers",
    "Building Supply Retail",
    "Business Services",
    "Consulting",
    "Consumer Services",
    "Design, Direction and Creative Management",
    "Distributors, Dispatchers and Processors",
    "Doctor's Offices and Clinics",
    "Durable Manufacturing",
    "Eating and Drinking Places",
    "Entertainment Retail",
    "Equipment Rental and Leasing",
    "Financial",
    "Food and Tobacco Processing",
    "Inbound Capital Intensive Processing",
    "Inbound Repair and Services",
    "Insurance",
    "Legal Services",
    "Non-Durable Merchandise Retail",
    "Outbound Consumer Service",
    "Petrochemical Extraction and Distribution",
    "Service Retail",
    "SIG Affiliations",
    "Social Services",
    "Special Outbound Trade Contractors",
    "Specialty Realty",
    "Transportation",
    "Utility Creation and Distribution",
    "Vehicle Retail",
    "Wholesale",
)

ACCOUNT = Table(
    name="account",
    schema_name="Account",
    entity_set="accounts",
    primary_id="accountid",
    primary_name="name",
    display="Account",
    display_plural="Accounts",
    object_type_code=1,
    ownership="UserOwned",
    bulk=True,
    attributes=(
        _key("accountid", "Account"),
        _text("name", "Account Name", 160, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("accountnumber", "Account Number", 20),
        _text("emailaddress1", "Email", 100, format="Email"),
        _text("telephone1", "Main Phone", 50, format="Phone"),
        _text("websiteurl", "Website", 200, format="Url"),
        _memo("description", "Description", 2000),
        _choice(
            "customertypecode",
            "Relationship Type",
            {
                1: "Competitor",
                2: "Consultant",
                3: "Customer",
                4: "Investor",
                5: "Partner",
                6: "Influencer",
                7: "Press",
                8: "Prospect",
                9: "Reseller",
                10: "Supplier",
                11: "Vendor",
                12: "Other",
            },
        ),
        _choice("industrycode", "Industry", dict(enumerate(INDUSTRIES, start=1))),
        Attribute(
            "numberofemployees",
            AttributeType.INTEGER,
            "Number of Employees",
            min_value=0,
            max_value=1_000_000_000,
        ),
        _lookup(
            "primarycontactid",
            "Primary Contact",
            LookupTarget("contact", "primarycontactid", "account_primary_contact"),
        ),
        _lookup(
            "parentaccountid",
            "Parent Account",
            LookupTarget("account", "parentaccountid", "account_parent_account"),
        ),
        _boolean("marketingonly", "Marketing Only", "Yes", "No"),
        _boolean("donotemail", "Do not allow Emails"),
        _boolean("donotphone", "Do not allow Phone Calls"),
        _choice(
            "preferredcontactmethodcode", "Preferred Method of Contact", PREFERRED_CONTACT_METHOD, 1
        ),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_owner("account", "owner_accounts"),
        *_system("account"),
    ),
)

SYSTEMUSER = Table(
    name="systemuser",
    schema_name="SystemUser",
    entity_set="systemusers",
    primary_id="systemuserid",
    primary_name="fullname",
    display="User",
    display_plural="Users",
    object_type_code=8,
    ownership="BusinessOwned",
    computed_fullname=True,
    unsupported=frozenset({"Delete"}),
    attributes=(
        _key("systemuserid", "User"),
        _text("firstname", "First Name", 256, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("lastname", "Last Name", 256, required=RequiredLevel.APPLICATION_REQUIRED),
        _text("fullname", "Full Name", 200, read_only=True),
        _text(
            "internalemailaddress",
            "Primary Email",
            100,
            required=RequiredLevel.SYSTEM_REQUIRED,
            format="Email",
        ),
        _text("domainname", "User Name", 1024, required=RequiredLevel.SYSTEM_REQUIRED),
        Attribute(
            "azureactivedirectoryobjectid",
            AttributeType.UNIQUEIDENTIFIER,
            "Azure AD Object ID",
            create=False,
            update=False,
        ),
        Attribute("applicationid", AttributeType.UNIQUEIDENTIFIER, "Application ID"),
        _boolean("isdisabled", "Status", "Disabled", "Enabled"),
        _choice(
            "accessmode",
            "Access Mode",
            {
                0: "Read-Write",
                1: "Administrative",
                2: "Read",
                3: "Support User",
                4: "Non-interactive",
                5: "Delegated Admin",
            },
            0,
        ),
        _boolean("islicensed", "User Licensed", "Yes", "No"),
        _boolean("isintegrationuser", "Integration user mode", "Yes", "No"),
        _approval(),
        _lookup(
            "businessunitid",
            "Business Unit",
            LookupTarget(
                "businessunit", "businessunitid", "business_unit_system_users", OnDelete.RESTRICT
            ),
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        *_system("systemuser"),
    ),
)

PRIORITIES = {0: "Low", 1: "Normal", 2: "High"}
ACTIVITY_TABLES = ("phonecall", "task", "appointment", "email")
PARTY_TARGETS = ("contact", "lead", "systemuser", "account", "queue")
RECIPIENTS = PartyRole(("account", "contact", "lead", "queue", "systemuser"))
PARTICIPATION_TYPES = {
    1: "Sender",
    2: "To Recipient",
    3: "CC Recipient",
    4: "BCC Recipient",
    5: "Required attendee",
    6: "Optional attendee",
    7: "Organizer",
    8: "Regarding",
    9: "Owner",
    10: "Resource",
    11: "Customer",
    12: "Chat Participant",
}


def _integer(
    name: str,
    display: str,
    *,
    low: int = 0,
    high: int = 2_147_483_647,
    read_only: bool = False,
    default: int | None = None,
) -> Attribute:
    return Attribute(
        name,
        AttributeType.INTEGER,
        display,
        min_value=low,
        max_value=high,
        create=not read_only,
        update=not read_only,
        default=default,
    )


def _datetime(name: str, display: str, *, read_only: bool = False) -> Attribute:
    return Attribute(
        name, AttributeType.DATETIME, display, create=not read_only, update=not read_only
    )


def _activity(
    name: str,
    schema_name: str,
    plural: str,
    object_type_code: int,
    specific: tuple[Attribute, ...],
    states: dict[int, tuple[str, int]],
    statuses: dict[int, tuple[str, int]],
    *,
    display: str | None = None,
    subject_length: int = 200,
    description: Attribute | None = None,
    party_roles: Mapping[int, PartyRole] | None = None,
) -> Table:
    """An activity table (§13.5-13.7, §18): key `activityid`, polymorphic regarding whose
    relationships are parental (delete and assign cascade), parties."""
    regarding = tuple(
        LookupTarget(target, f"regardingobjectid_{target}_{name}", f"{prefix}_{plural}",
                     OnDelete.CASCADE, assign=True)
        for target, prefix in (("account", "Account"), ("contact", "Contact"), ("lead", "Lead"))
    )  # fmt: skip
    return Table(
        name=name,
        schema_name=schema_name,
        entity_set=f"{name}s",
        primary_id="activityid",
        primary_name="subject",
        display=display or schema_name,
        display_plural=f"{display}s" if display else plural,
        object_type_code=object_type_code,
        ownership="UserOwned",
        is_activity=True,
        bulk=True,
        party_roles=party_roles or {},
        attributes=(
            _key("activityid", "Activity"),
            _text("subject", "Subject", subject_length,
                  required=RequiredLevel.APPLICATION_REQUIRED),
            description or _memo("description", "Description", 2000),
            *specific,
            _choice("prioritycode", "Priority", PRIORITIES, 1),
            _lookup("regardingobjectid", "Regarding", *regarding),
            Attribute(
                "activitytypecode", AttributeType.ENTITYNAME, "Activity Type", create=False,
                update=False,
            ),
            _state(states),
            _status(statuses),
            *_owner(name, f"owner_{name}s"),
            *_system(name),
        ),
    )  # fmt: skip


PHONECALL = _activity(
    "phonecall",
    "PhoneCall",
    "Phonecalls",
    4210,
    (
        _text("phonenumber", "Phone Number", 200, format="Phone"),
        Attribute(
            "directioncode", AttributeType.BOOLEAN, "Direction", labels=("Outgoing", "Incoming"),
            default=True,
        ),
        _datetime("scheduledstart", "Start Date"),
        _datetime("scheduledend", "Due"),
        _datetime("actualstart", "Actual Start"),
        _datetime("actualend", "Actual End"),
        _integer("actualdurationminutes", "Duration"),
        _integer("scheduleddurationminutes", "Scheduled Duration"),
        _boolean("leftvoicemail", "Left Voice Mail", "Yes", "No"),
    ),
    {0: ("Open", 1), 1: ("Completed", 2), 2: ("Canceled", 3)},
    {1: ("Open", 0), 2: ("Made", 1), 4: ("Received", 1), 3: ("Canceled", 2)},
    display="Phone Call",
)  # fmt: skip

TASK = _activity(
    "task",
    "Task",
    "Tasks",
    4212,
    (
        _datetime("scheduledstart", "Start Date"),
        _datetime("scheduledend", "Due Date"),
        _datetime("actualstart", "Actual Start"),
        _datetime("actualend", "Actual End"),
        _integer("scheduleddurationminutes", "Duration", read_only=True),
        _integer("actualdurationminutes", "Actual Duration"),
        _integer("percentcomplete", "Percent Complete", high=100),
    ),
    {0: ("Open", 2), 1: ("Completed", 5), 2: ("Canceled", 6)},
    {
        2: ("Not Started", 0),
        3: ("In Progress", 0),
        4: ("Waiting on someone else", 0),
        7: ("Deferred", 0),
        5: ("Completed", 1),
        6: ("Canceled", 2),
    },
)

APPOINTMENT = _activity(
    "appointment",
    "Appointment",
    "Appointments",
    4201,
    (
        Attribute(
            "scheduledstart", AttributeType.DATETIME, "Start Time",
            required=RequiredLevel.APPLICATION_REQUIRED,
        ),
        Attribute(
            "scheduledend", AttributeType.DATETIME, "End Time",
            required=RequiredLevel.APPLICATION_REQUIRED,
        ),
        _datetime("actualstart", "Actual Start"),
        _datetime("actualend", "Actual End"),
        _integer("scheduleddurationminutes", "Duration"),
        _integer("actualdurationminutes", "Actual Duration"),
        _text("location", "Location", 200),
        _boolean("isalldayevent", "All Day Event", "Yes", "No"),
    ),
    {0: ("Open", 1), 1: ("Completed", 3), 2: ("Canceled", 4), 3: ("Scheduled", 5)},
    {
        1: ("Free", 0),
        2: ("Tentative", 0),
        3: ("Completed", 1),
        4: ("Canceled", 2),
        5: ("Busy", 3),
        6: ("Out of Office", 3),
    },
    description=_memo("description", "Description", 1_048_576),
    party_roles={5: RECIPIENTS, 6: RECIPIENTS, 7: PartyRole(("systemuser",), unresolved=False)},
)  # fmt: skip

EMAIL = _activity(
    "email",
    "Email",
    "Emails",
    4202,
    (
        Attribute(
            "directioncode", AttributeType.BOOLEAN, "Direction", labels=("Outgoing", "Incoming"),
            default=True,
        ),
        _choice("deliveryprioritycode", "Delivery Priority", PRIORITIES, 1),
        _text("category", "Category", 250),
        _text("subcategory", "Sub-Category", 250),
        _datetime("scheduledstart", "Start Date"),
        _datetime("scheduledend", "Due Date"),
        _integer("actualdurationminutes", "Duration"),
        _integer("scheduleddurationminutes", "Scheduled Duration", read_only=True),
        _lookup(
            "emailsender",
            "From",
            *(
                LookupTarget(t, f"emailsender_{t}", f"email_emailsender_{t}")
                for t in ("account", "contact", "lead", "queue", "systemuser")
            ),
            writable=False,
        ),
        _datetime("senton", "Date Sent", read_only=True),
        _text("trackingtoken", "Tracking Token", 50),
        _boolean("readreceiptrequested", "Read Receipt Requested", "Yes", "No"),
        _boolean("deliveryreceiptrequested", "Delivery Receipt Requested", "Yes", "No"),
        _datetime("delayedemailsendtime", "Send Later"),
        _boolean("followemailuserpreference", "Following", "Yes", "No"),
        Attribute(
            "isemailfollowed", AttributeType.BOOLEAN, "Followed", labels=("Yes", "No"),
            default=False, create=False, update=False,
        ),
        _integer("opencount", "Opens", default=0),
        _integer("linksclickedcount", "Link Clicks", default=0),
        _integer("attachmentopencount", "Attachment Views", default=0),
        _datetime("lastopenedtime", "Last Opened Time"),
        _integer("replycount", "Replies", read_only=True, default=0),
    ),
    {0: ("Open", 1), 1: ("Completed", 2), 2: ("Canceled", 5)},
    {
        1: ("Draft", 0),
        8: ("Failed", 0),
        2: ("Completed", 1),
        3: ("Sent", 1),
        4: ("Received", 1),
        6: ("Pending Send", 1),
        7: ("Sending", 1),
        5: ("Canceled", 2),
    },
    subject_length=800,
    description=Attribute(
        "description", AttributeType.MEMO, "Description", max_length=1_073_741_823,
        format="Email",
    ),
    party_roles={
        1: PartyRole(("systemuser", "queue"), unresolved=False),
        2: RECIPIENTS,
        3: RECIPIENTS,
        4: RECIPIENTS,
    },
)  # fmt: skip

ACTIVITYPARTY = Table(
    name="activityparty",
    schema_name="ActivityParty",
    entity_set="activityparties",
    primary_id="activitypartyid",
    primary_name="partyidname",
    display="Activity Party",
    display_plural="Activity Parties",
    object_type_code=135,
    ownership="None",
    parent="activityid",
    attributes=(
        _key("activitypartyid", "Activity Party"),
        _lookup(
            "activityid",
            "Activity",
            *(
                LookupTarget(t, f"activityid_{t}", f"{t}_activity_parties", OnDelete.CASCADE)
                for t in ACTIVITY_TABLES
            ),
        ),
        _lookup(
            "partyid",
            "Party",
            *(
                LookupTarget(
                    t,
                    f"partyid_{t}",
                    "system_user_activity_parties"
                    if t == "systemuser"
                    else f"{t}_activity_parties",
                )
                for t in PARTY_TARGETS
            ),
        ),
        Attribute(
            "participationtypemask",
            AttributeType.PICKLIST,
            "Participation Type",
            options=tuple(Option(v, label) for v, label in PARTICIPATION_TYPES.items()),
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _text("addressused", "Address", 200),
        *_system("activityparty"),
    ),
)

OPPORTUNITY = Table(
    name="opportunity",
    schema_name="Opportunity",
    entity_set="opportunities",
    primary_id="opportunityid",
    primary_name="name",
    display="Opportunity",
    display_plural="Opportunities",
    object_type_code=3,
    ownership="UserOwned",
    bulk=True,
    attributes=(
        _key("opportunityid", "Opportunity"),
        _text("name", "Topic", 300, required=RequiredLevel.APPLICATION_REQUIRED),
        _memo("description", "Description", 2000),
        _lookup(
            "customerid",
            "Potential Customer",
            LookupTarget("account", "customerid_account", "opportunity_customer_accounts"),
            LookupTarget("contact", "customerid_contact", "opportunity_customer_contacts"),
            kind=AttributeType.CUSTOMER,
        ),
        _lookup(
            "parentcontactid",
            "Contact",
            LookupTarget("contact", "parentcontactid", "opportunity_parent_contact"),
        ),
        _lookup(
            "parentaccountid",
            "Account",
            LookupTarget("account", "parentaccountid", "opportunity_parent_account"),
        ),
        _lookup(
            "originatingleadid",
            "Originating Lead",
            LookupTarget("lead", "originatingleadid", "opportunity_originating_lead"),
        ),
        _state({0: ("Open", 1), 1: ("Won", 3), 2: ("Lost", 4)}),
        _status(
            {
                1: ("In Progress", 0),
                2: ("On Hold", 0),
                3: ("Won", 1),
                4: ("Canceled", 2),
                5: ("Out-Sold", 2),
            }
        ),
        *_owner("opportunity", "owner_opportunitys"),
        *_system("opportunity"),
    ),
)

BUSINESSUNIT = Table(
    name="businessunit",
    schema_name="BusinessUnit",
    entity_set="businessunits",
    primary_id="businessunitid",
    primary_name="name",
    display="Business Unit",
    display_plural="Business Units",
    object_type_code=10,
    ownership="BusinessOwned",
    attributes=(
        _key("businessunitid", "Business Unit"),
        _text("name", "Name", 160, required=RequiredLevel.SYSTEM_REQUIRED),
        _lookup(
            "parentbusinessunitid",
            "Parent Business",
            LookupTarget(
                "businessunit", "parentbusinessunitid", "business_unit_parent_business_unit",
                OnDelete.RESTRICT,
            ),
        ),
        Attribute(
            "isdisabled", AttributeType.BOOLEAN, "Is Disabled", labels=("Yes", "No"),
            default=False, create=False,
        ),
        *_system("businessunit"),
    ),
)  # fmt: skip

TEAM = Table(
    name="team",
    schema_name="Team",
    entity_set="teams",
    primary_id="teamid",
    primary_name="name",
    display="Team",
    display_plural="Teams",
    object_type_code=9,
    ownership="BusinessOwned",
    attributes=(
        _key("teamid", "Team"),
        _text("name", "Team Name", 160, required=RequiredLevel.SYSTEM_REQUIRED),
        Attribute(
            "teamtype",
            AttributeType.PICKLIST,
            "Team Type",
            options=tuple(
                Option(v, label)
                for v, label in {
                    0: "Owner", 1: "Access", 2: "Security Group", 3: "Office Group"
                }.items()
            ),
            default=0,
            update=False,
        ),
        Attribute(
            "isdefault", AttributeType.BOOLEAN, "Is Default", labels=("Yes", "No"), default=False,
            create=False, update=False,
        ),
        _text("emailaddress", "Email", 100, format="Email"),
        _memo("description", "Description", 2000),
        _lookup(
            "businessunitid",
            "Business Unit",
            LookupTarget(
                "businessunit", "businessunitid", "business_unit_teams", OnDelete.RESTRICT
            ),
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        *_system("team"),
    ),
)  # fmt: skip

QUEUE = Table(
    name="queue",
    schema_name="Queue",
    entity_set="queues",
    primary_id="queueid",
    primary_name="name",
    display="Queue",
    display_plural="Queues",
    object_type_code=2020,
    ownership="UserOwned",
    attributes=(
        _key("queueid", "Queue"),
        _text("name", "Name", 400, required=RequiredLevel.SYSTEM_REQUIRED),
        _text("emailaddress", "Incoming Email", 100, format="Email"),
        _approval(),
        _memo("description", "Description", 2000),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_owner("queue", "owner_queues"),
        *_system("queue"),
    ),
)

QUEUEITEM = Table(
    name="queueitem",
    schema_name="QueueItem",
    entity_set="queueitems",
    primary_id="queueitemid",
    primary_name="title",
    display="Queue Item",
    display_plural="Queue Items",
    object_type_code=2029,
    ownership="OrganizationOwned",
    attributes=(
        _key("queueitemid", "Queue Item"),
        _text("title", "Title", 300),
        _lookup(
            "queueid",
            "Queue",
            LookupTarget("queue", "queueid", "queue_entries", OnDelete.CASCADE),
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _lookup(
            "objectid",
            "Object",
            *(
                LookupTarget(t, f"objectid_{t}", f"{schema}_QueueItem", OnDelete.CASCADE)
                for t, schema in (
                    ("email", "Email"), ("phonecall", "PhoneCall"), ("task", "Task"),
                    ("appointment", "Appointment"),
                )
            ),
            required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _datetime("enteredon", "Entered Queue", read_only=True),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_system("queueitem"),
    ),
)  # fmt: skip

WORKFLOW = Table(
    name="workflow",
    schema_name="Workflow",
    entity_set="workflows",
    primary_id="workflowid",
    primary_name="name",
    display="Process",
    display_plural="Processes",
    object_type_code=4703,
    ownership="UserOwned",
    attributes=(
        _key("workflowid", "Process"),
        _text("name", "Process Name", 100, required=RequiredLevel.SYSTEM_REQUIRED),
        _text("uniquename", "Unique Name", 256),
        _choice(
            "category",
            "Category",
            {
                0: "Workflow", 1: "Dialog", 2: "Business Rule", 3: "Action",
                4: "Business Process Flow", 5: "Modern Flow", 6: "Desktop Flow", 7: "AI Flow",
            },
        ),
        _choice("type", "Type", {1: "Definition", 2: "Activation", 3: "Template"}),
        _choice("mode", "Execute As", {0: "Background", 1: "Real-time"}, 0),
        _boolean("ondemand", "Run as On Demand", "Yes", "No"),
        Attribute("primaryentity", AttributeType.ENTITYNAME, "Primary Entity"),
        _memo("description", "Description", 100_000),
        _state({0: ("Draft", 1), 1: ("Activated", 2), 2: ("Suspended", 3)}),
        _status({1: ("Draft", 0), 2: ("Activated", 1), 3: ("CompanyDLPViolation", 2)}),
        *_owner("workflow", "owner_workflows"),
        *_system("workflow"),
    ),
)  # fmt: skip

ASYNCOPERATION = Table(
    name="asyncoperation",
    schema_name="AsyncOperation",
    entity_set="asyncoperations",
    primary_id="asyncoperationid",
    primary_name="name",
    display="System Job",
    display_plural="System Jobs",
    object_type_code=4700,
    ownership="UserOwned",
    attributes=(
        _key("asyncoperationid", "System Job"),
        _text("name", "System Job Name", 256),
        _choice(
            "operationtype",
            "System Job Type",
            {1: "System Event", 10: "Workflow", 13: "Bulk Delete", 54: "Execute Async Request"},
        ),
        _text("messagename", "Message Name", 160),
        Attribute("primaryentitytype", AttributeType.ENTITYNAME, "Primary Entity Type"),
        _lookup(
            "regardingobjectid",
            "Regarding",
            *(
                LookupTarget(t, f"regardingobjectid_{t}", f"{schema}_AsyncOperations",
                             OnDelete.CASCADE)
                for t, schema in (("account", "Account"), ("contact", "Contact"), ("lead", "Lead"))
            ),
        ),
        _lookup(
            "workflowactivationid",
            "Workflow Activation Id",
            LookupTarget("workflow", "workflowactivationid",
                         "lk_asyncoperation_workflowactivationid"),
        ),
        _datetime("startedon", "Started On", read_only=True),
        _datetime("completedon", "Completed On", read_only=True),
        _state({0: ("Ready", 0), 1: ("Suspended", 10), 2: ("Locked", 20), 3: ("Completed", 30)}),
        _status(
            {
                0: ("Waiting For Resources", 0), 10: ("Waiting", 1), 20: ("In Progress", 2),
                21: ("Pausing", 2), 22: ("Canceling", 2), 30: ("Succeeded", 3),
                31: ("Failed", 3), 32: ("Canceled", 3),
            }
        ),
        *_owner("asyncoperation", "owner_asyncoperations"),
        *_system("asyncoperation"),
    ),
)  # fmt: skip

INTERACTIONFOREMAIL = Table(
    name="interactionforemail",
    schema_name="InteractionForEmail",
    entity_set="interactionforemails",
    primary_id="interactionforemailid",
    primary_name="name",
    display="Interaction for Email",
    display_plural="Interactions for Email",
    object_type_code=9986,
    ownership="UserOwned",
    unsupported=frozenset({"Create", "Retrieve", "Update"}),
    attributes=(
        _key("interactionforemailid", "Interaction for Email"),
        _text("name", "Name", 100, required=RequiredLevel.SYSTEM_REQUIRED),
        Attribute(
            "emailactivityid", AttributeType.UNIQUEIDENTIFIER, "Email Activity Id",
            create=False, update=False,
        ),
        Attribute(
            "interactiontype", AttributeType.PICKLIST, "Interaction Type",
            options=tuple(
                Option(v, label)
                for v, label in enumerate(
                    ("EmailOpen", "LinkOpen", "AttachmentOpen", "EmailReply")
                )
            ),
            required=RequiredLevel.SYSTEM_REQUIRED, create=False, update=False,
        ),
        _datetime("emailinteractiontime", "Interaction date and time of the an email",
                  read_only=True),
        _text("interactionlocation", "Location for an Interaction", 1250),
        _text("interactionuseragent", "User Agent for an Interaction", 1250),
        _text("interactionrepliedby", "Name who replied to email if interaction is reply", 1250),
        _text("interactedcomponenttext", "Email Interaction Component Related Text", 1250),
        _text("emailaddress", "Email Interaction Component Related Text", 1250),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_owner("interactionforemail", "owner_interactionforemail"),
        *_system("interactionforemail"),
    ),
)  # fmt: skip

READ_ONLY = frozenset({"Create", "Update", "Delete"})

SDKMESSAGE = Table(
    name="sdkmessage",
    schema_name="SdkMessage",
    entity_set="sdkmessages",
    primary_id="sdkmessageid",
    primary_name="name",
    display="Sdk Message",
    display_plural="Sdk Messages",
    object_type_code=4606,
    ownership="OrganizationOwned",
    unsupported=READ_ONLY,
    attributes=(
        _key("sdkmessageid", "Sdk Message"),
        _text("name", "Name", 256),
        _text("categoryname", "Category Name", 25),
        _boolean("isprivate", "Is Private", "Yes", "No"),
        *_system("sdkmessage"),
    ),
)

SDKMESSAGEFILTER = Table(
    name="sdkmessagefilter",
    schema_name="SdkMessageFilter",
    entity_set="sdkmessagefilters",
    primary_id="sdkmessagefilterid",
    primary_name="name",
    display="Sdk Message Filter",
    display_plural="Sdk Message Filters",
    object_type_code=4607,
    ownership="OrganizationOwned",
    unsupported=READ_ONLY,
    attributes=(
        _key("sdkmessagefilterid", "Sdk Message Filter"),
        _text("name", "Name", 256),
        _lookup(
            "sdkmessageid",
            "SDK Message",
            LookupTarget("sdkmessage", "sdkmessageid", "sdkmessageid_sdkmessagefilter",
                         OnDelete.CASCADE),
        ),
        Attribute("primaryobjecttypecode", AttributeType.ENTITYNAME, "Primary Object Type Code"),
        Attribute(
            "secondaryobjecttypecode", AttributeType.ENTITYNAME, "Secondary Object Type Code"
        ),
        _boolean("iscustomprocessingstepallowed", "Custom Processing Step Allowed", "Yes", "No"),
        _boolean("isvisible", "Is Visible", "Yes", "No"),
        *_system("sdkmessagefilter"),
    ),
)  # fmt: skip


def _view_columns() -> tuple[Attribute, ...]:
    """What savedquery and userquery share (journeys §22.1)."""
    return (
        _text("name", "Name", 200, required=RequiredLevel.SYSTEM_REQUIRED),
        Attribute(
            "returnedtypecode", AttributeType.ENTITYNAME, "Returned Type",
            max_length=64, required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _memo("description", "Description", 2000),
        _memo("layoutxml", "Grid Layout", 1_073_741_823),
        Attribute(
            "querytype", AttributeType.INTEGER, "Query Type", min_value=0,
            max_value=2_147_483_647, required=RequiredLevel.SYSTEM_REQUIRED,
        ),
    )  # fmt: skip


SAVEDQUERY = Table(
    name="savedquery",
    schema_name="SavedQuery",
    entity_set="savedqueries",
    primary_id="savedqueryid",
    primary_name="name",
    display="View",
    display_plural="Views",
    object_type_code=1039,
    ownership="OrganizationOwned",
    upsert=False,
    solution_component=True,
    attributes=(
        _key("savedqueryid", "View"),
        *_view_columns(),
        _memo("fetchxml", "View Query", 1_073_741_823),
        _memo("layoutjson", "Grid Layout (JSON)", 1_073_741_823),
        _memo("columnsetxml", "Column Set XML", 1_073_741_823),
        _boolean("isdefault", "Default View", "Yes", "No"),
        _boolean("isquickfindquery", "Quick Find Query", "Yes", "No"),
        Attribute(
            "componentstate", AttributeType.PICKLIST, "Component State", create=False,
            update=False, default=0,
            options=tuple(Option(v, label) for v, label in
                          {0: "Published", 1: "Unpublished", 2: "Deleted",
                           3: "Deleted Unpublished"}.items()),
        ),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_system("savedquery"),
    ),
)  # fmt: skip

USERQUERY = Table(
    name="userquery",
    schema_name="UserQuery",
    entity_set="userqueries",
    primary_id="userqueryid",
    primary_name="name",
    display="Saved View",
    display_plural="Saved Views",
    object_type_code=4230,
    ownership="UserOwned",
    attributes=(
        _key("userqueryid", "Saved View"),
        *_view_columns(),
        Attribute(
            "fetchxml", AttributeType.MEMO, "Query", max_length=1_073_741_823,
            format="TextArea", required=RequiredLevel.SYSTEM_REQUIRED,
        ),
        _lookup(
            "parentqueryid", "Parent Query",
            LookupTarget("userquery", "parentqueryid", "userquery_parent_userquery"),
        ),
        _state(ACTIVE_STATES),
        _status(ACTIVE_STATUSES),
        *_owner("userquery", "owner_userqueries"),
        *_system("userquery"),
    ),
)  # fmt: skip

SCHEMA = Schema(
    (
        LEAD, CONTACT, ACCOUNT, SYSTEMUSER, PHONECALL, TASK, APPOINTMENT, ACTIVITYPARTY,
        OPPORTUNITY, EMAIL, BUSINESSUNIT, TEAM, QUEUE, QUEUEITEM, WORKFLOW, ASYNCOPERATION,
        INTERACTIONFOREMAIL, SDKMESSAGE, SDKMESSAGEFILTER, SAVEDQUERY, USERQUERY,
    )
)  # fmt: skip
