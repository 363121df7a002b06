"""`$batch`: the wire format both ways, outcomes per part, limits, chunking, and the emulator."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
import requests
from pydantic import SecretStr

from connector import batch
from connector.batch import ChangeSet, Operation, PartResponse, chunked, decode, encode, outcomes
from connector.dataverse import Dataverse
from connector.errors import (
    BadRequestError,
    DataverseError,
    DuplicateDetectedError,
    NotFoundError,
    ProtocolError,
)
from connector.http import ThrottleGate, Transport
from connector.settings import Connection
from emulator.process import EmulatorProcess

API_PATH = "/api/data/v9.2/"
CONTACT_ID = "5f3c6a2e-0000-4000-8000-000000000001"
JSON = {"content-type": "application/json; odata.metadata=minimal"}


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def error_part(
    status: int, code: str, message: str, req_id: str = "", content_id: str | None = None
) -> PartResponse:
    body = f'{{"error":{{"code":"{code}","message":"{message}"}}}}'.encode()
    headers = {**JSON, "req_id": req_id} if req_id else JSON
    return PartResponse(status, headers, body, content_id)


def no_content(content_id: str | None = None) -> PartResponse:
    return PartResponse(204, {"odata-version": "4.0"}, b"", content_id)


# -- encode -------------------------------------------------------------------------------------


def test_encode_writes_change_sets_references_and_gets_with_crlf_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = iter([uuid.UUID(int=1), uuid.UUID(int=2)])
    monkeypatch.setattr(batch, "uuid4", lambda: next(ids))
    parts = [
        ChangeSet(
            (
                Operation("POST", "contacts", {"lastname": "Ng"}, content_id="1"),
                Operation("patch", "$1", {"firstname": "Ana"}, (("If-Match", "*"),), "2"),
            )
        ),
        Operation("GET", f"contacts({CONTACT_ID})?$select=lastname"),
    ]

    content_type, body = encode(parts, API_PATH)

    outer = "batch_00000000-0000-0000-0000-000000000001"
    inner = "changeset_00000000-0000-0000-0000-000000000002"
    assert content_type == f'multipart/mixed; boundary="{outer}"'
    assert body == crlf(
        f"""--{outer}
Content-Type: multipart/mixed; boundary="{inner}"

--{inner}
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST /api/data/v9.2/contacts HTTP/1.1
Content-Type: application/json; type=entry

{{"lastname":"Ng"}}
--{inner}
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

PATCH $1 HTTP/1.1
Content-Type: application/json; type=entry
If-Match: *

{{"firstname":"Ana"}}
--{inner}--

--{outer}
Content-Type: application/http
Content-Transfer-Encoding: binary

GET /api/data/v9.2/contacts({CONTACT_ID})?$select=lastname HTTP/1.1


--{outer}--
"""
    )
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_every_encoded_batch_gets_boundaries_of_its_own() -> None:
    parts = [Operation("GET", "WhoAmI")]

    assert encode(parts, API_PATH)[0] != encode(parts, API_PATH)[0]


def test_encode_refuses_more_than_1000_operations_counting_change_sets() -> None:
    create = Operation("POST", "contacts", {"lastname": "Ng"})
    parts = [ChangeSet((create,) * 500), ChangeSet((create,) * 500)]
    assert batch.operation_count(parts) == 1000
    encode(parts, API_PATH)

    with pytest.raises(ValueError, match="at most 1000 operations, not 1001"):
        encode([*parts, create], API_PATH)


def test_a_change_set_cannot_hold_a_get() -> None:
    with pytest.raises(ValueError, match="cannot hold a GET"):
        ChangeSet((Operation("POST", "contacts", {}), Operation("get", "contacts")))


# -- decode -------------------------------------------------------------------------------------

# dataverse-webapi.md §9.3: a change set of two creates, then a GET.
REFERENCE_RESPONSE = """--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f
Content-Type: multipart/mixed; boundary=changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15

--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: https://org.example.crm.dynamics.com/api/data/v9.2/tasks(e73ffc82-e292-ed11-aad1-000d3a9933c9)
OData-EntityId: https://org.example.crm.dynamics.com/api/data/v9.2/tasks(e73ffc82-e292-ed11-aad1-000d3a9933c9)


--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: https://org.example.crm.dynamics.com/api/data/v9.2/tasks(e83ffc82-e292-ed11-aad1-000d3a9933c9)
OData-EntityId: https://org.example.crm.dynamics.com/api/data/v9.2/tasks(e83ffc82-e292-ed11-aad1-000d3a9933c9)


--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15--
--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 200 OK
Content-Type: application/json; odata.metadata=minimal; odata.streaming=true
OData-Version: 4.0

{
  "@odata.context": "https://org.example.crm.dynamics.com/api/data/v9.2/$metadata#tasks(subject)",
  "value": [
    { "@odata.etag": "W/\\"77181173\\"", "subject": "Task 1 in batch", "activityid": "e73ffc82-e292-ed11-aad1-000d3a9933c9" },
    { "@odata.etag": "W/\\"77181176\\"", "subject": "Task 2 in batch", "activityid": "e83ffc82-e292-ed11-aad1-000d3a9933c9" }
  ]
}
--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f--
"""
REFERENCE_TYPE = "multipart/mixed; boundary=batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f"

# dataverse-webapi.md §9.4: without continue-on-error, only the failing response comes back.
ERROR_RESPONSE = """--batchresponse_156da4b8-cd2c-4862-a911-4aaab97c001a
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 400 Bad Request
REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{"error":{"code":"0x80044331","message":"A validation error occurred.  The length of the 'subject' attribute of the 'task' entity exceeded the maximum allowed length of '200'."}}
--batchresponse_156da4b8-cd2c-4862-a911-4aaab97c001a--
"""
ERROR_TYPE = 'multipart/mixed; boundary="batchresponse_156da4b8-cd2c-4862-a911-4aaab97c001a"'


def test_decode_reads_the_reference_change_set_and_get() -> None:
    created, listing = decode(REFERENCE_TYPE, crlf(REFERENCE_RESPONSE))

    assert isinstance(created, list)
    assert [(r.status, r.content_id, r.body) for r in created] == [(204, "1", b""), (204, "2", b"")]
    assert (
        created[1].headers["odata-entityid"].endswith("tasks(e83ffc82-e292-ed11-aad1-000d3a9933c9)")
    )
    assert isinstance(listing, PartResponse)
    assert (listing.status, listing.content_id, listing.ok) == (200, None, True)
    assert [task["subject"] for task in listing.json()["value"]] == [
        "Task 1 in batch",
        "Task 2 in batch",
    ]


def test_decode_reads_the_reference_error_with_a_quoted_boundary() -> None:
    (failed,) = decode(ERROR_TYPE, crlf(ERROR_RESPONSE))

    assert isinstance(failed, PartResponse)
    assert (failed.status, failed.ok) == (400, False)
    assert failed.headers["req_id"] == "5ecd1cb3-1730-4ffc-909c-d44c22270026"
    assert failed.json()["error"]["code"] == "0x80044331"


def test_decode_tolerates_lf_only_line_endings() -> None:
    created, listing = decode(REFERENCE_TYPE, REFERENCE_RESPONSE.encode())

    assert created == decode(REFERENCE_TYPE, crlf(REFERENCE_RESPONSE))[0]
    assert isinstance(listing, PartResponse)
    assert listing.status == 200
    assert listing.headers["odata-version"] == "4.0"
    assert len(listing.json()["value"]) == 2


@pytest.mark.parametrize(
    ("content_type", "body", "complaint"),
    [
        ("application/json", b'{"error":{}}', "not multipart/mixed with a boundary"),
        (
            REFERENCE_TYPE,
            crlf(REFERENCE_RESPONSE).rsplit(b"--batchresponse", 1)[0],
            "no closing delimiter",
        ),
        (
            ERROR_TYPE,
            crlf(ERROR_RESPONSE).replace(b"HTTP/1.1 400", b"HTTP/1.1 four"),
            "malformed status line",
        ),
        (
            ERROR_TYPE,
            crlf(ERROR_RESPONSE).replace(b"application/http", b"text/plain"),
            "not application/http",
        ),
    ],
)
def test_decode_names_what_it_cannot_read(content_type: str, body: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        decode(content_type, body)


# -- outcomes -----------------------------------------------------------------------------------

TWO_TASKS = ChangeSet(
    (
        Operation("POST", "tasks", {"subject": "Task 1 in batch"}, content_id="1"),
        Operation("POST", "tasks", {"subject": "Task 2 in batch"}, content_id="2"),
    )
)
LIST_TASKS = Operation("GET", "tasks?$select=subject")


def test_outcomes_pair_each_part_with_its_responses() -> None:
    decoded = decode(REFERENCE_TYPE, crlf(REFERENCE_RESPONSE))

    created, listing = outcomes([TWO_TASKS, LIST_TASKS], decoded, "outer-id")

    assert created.ok
    assert [r.content_id for r in created.responses] == ["1", "2"]
    assert listing.ok
    assert listing.responses[0].json()["value"][0]["subject"] == "Task 1 in batch"


ROLLED_BACK = ChangeSet(
    (
        Operation("POST", "contacts", {"lastname": "Ng"}, content_id="1"),
        Operation("PATCH", "leads(6f1e2c1e-0000-0000-0000-000000000000)", {}, content_id="2"),
    )
)
MISSING_LEAD = "lead With Id = 6f1e2c1e-0000-0000-0000-000000000000 Does Not Exist"


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        (error_part(404, "0x80040217", MISSING_LEAD, req_id="inner-id"), "POST $batch"),
        (
            [error_part(404, "0x80040217", MISSING_LEAD, req_id="inner-id", content_id="2")],
            "PATCH leads(6f1e2c1e-0000-0000-0000-000000000000)",
        ),
    ],
    ids=["one-error-part", "nested-error-part"],
)
def test_a_failed_change_set_is_reported_once_with_code_message_and_request_id(
    answer: PartResponse | list[PartResponse], where: str
) -> None:
    failed, listing = outcomes([ROLLED_BACK, LIST_TASKS], [answer, no_content()], "outer-id")

    assert not failed.ok
    assert failed.responses == ()
    assert isinstance(failed.error, NotFoundError)
    assert (failed.error.status, failed.error.code) == (404, "0x80040217")
    assert failed.error.message == MISSING_LEAD
    assert failed.error.request_id == "inner-id"
    assert f"[{where}]" in str(failed.error)
    assert listing.ok


def test_parts_after_a_stop_are_reported_as_not_run() -> None:
    create = Operation("POST", "tasks", {"subject": "x" * 201})
    decoded = decode(ERROR_TYPE, crlf(ERROR_RESPONSE))

    failed, *skipped = outcomes([create, TWO_TASKS, LIST_TASKS], decoded, "outer-id")

    assert isinstance(failed.error, BadRequestError)
    assert failed.error.code == "0x80044331"
    assert failed.error.request_id == "5ecd1cb3-1730-4ffc-909c-d44c22270026"
    assert [(o.ok, o.responses) for o in skipped] == [(False, ()), (False, ())]
    errors = [o.error for o in skipped]
    assert all(type(e) is DataverseError for e in errors)
    assert [(e.status, e.method, e.path, e.request_id) for e in errors if e] == [
        (424, "POST", "tasks", "outer-id"),
        (424, "GET", "tasks", "outer-id"),
    ]
    assert "not run" in str(errors[0])


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(500, "0x80040333", DuplicateDetectedError), (404, "0x80040217", NotFoundError)],
)
def test_a_failed_part_gets_the_error_class_of_its_status_and_code(
    status: int, code: str, expected: type[DataverseError]
) -> None:
    create = Operation("POST", "contacts", {"emailaddress1": "a@example.com"})

    (outcome,) = outcomes([create], [error_part(status, code, "refused")], "outer-id")

    assert type(outcome.error) is expected
    assert outcome.error.request_id == "outer-id"  # the part carried no id of its own
    assert "[POST contacts]" in str(outcome.error)


def test_outcomes_refuse_responses_that_do_not_fit_the_request() -> None:
    with pytest.raises(ProtocolError, match="answered 2 parts to a request of 1"):
        outcomes([LIST_TASKS], [no_content(), no_content()], "outer-id")
    with pytest.raises(ProtocolError, match="change set of 2 operations with 1 responses"):
        outcomes([TWO_TASKS], [[no_content("1")]], "outer-id")


# -- chunked ------------------------------------------------------------------------------------


def test_chunked_gives_lists_of_at_most_size_in_order() -> None:
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunked([], 3)) == []


def test_chunked_streams_without_reading_ahead() -> None:
    chunks = chunked(itertools.count(), 1000)

    assert next(chunks) == list(range(1000))
    assert next(chunks)[0] == 1000


def test_chunked_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        next(chunked([1], 0))


# -- against the emulator -----------------------------------------------------------------------


class EmulatorAuth(requests.auth.AuthBase):
    """Client-credentials tokens from the emulator (MSAL is tested in test_auth.py)."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator
        self.token = emulator.token()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def renew(self) -> None:
        self.token = self.emulator.token()


@pytest.fixture
def dataverse(fresh_emulator: EmulatorProcess) -> Iterator[Dataverse]:
    connection = Connection(
        dataverse_url=fresh_emulator.base_url,
        tenant_id=fresh_emulator.tenant_id,
        client_id=fresh_emulator.client_id,
        client_secret=SecretStr(fresh_emulator.client_secret),
        certificate_path=None,
        certificate_thumbprint=None,
        certificate_password=None,
        authority=fresh_emulator.authority,
        timeout=30.0,
        max_attempts=1,
    )
    session = requests.Session()
    session.verify = fresh_emulator.ca_bundle
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify
    with session:
        yield Dataverse(
            Transport(connection, EmulatorAuth(fresh_emulator), session, gate=ThrottleGate()),
            page_size=5000,
        )


def test_a_batch_commits_one_change_set_rolls_back_the_other_and_reads(
    dataverse: Dataverse, fresh_emulator: EmulatorProcess
) -> None:
    lead_id = next(
        r["leadid"] for r in fresh_emulator.rows("lead") if not r["_parentcontactid_value"]
    )
    rolled_back_id = "5f3c6a2e-0000-4000-8000-000000000002"
    missing_lead = "6f1e2c1e-0000-4000-8000-00000000dead"
    parts = [
        ChangeSet(
            (
                Operation(
                    "POST",
                    "contacts",
                    {"contactid": CONTACT_ID, "lastname": "Batch"},
                    content_id="1",
                ),
                Operation(
                    "PATCH",
                    f"leads({lead_id})",
                    {"parentcontactid@odata.bind": "$1"},
                    content_id="2",
                ),
            )
        ),
        ChangeSet(
            (
                Operation(
                    "POST",
                    "contacts",
                    {"contactid": rolled_back_id, "lastname": "Gone"},
                    content_id="3",
                ),
                Operation(
                    "PATCH", f"leads({missing_lead})", {"subject": "x"}, (("If-Match", "*"),), "4"
                ),
            )
        ),
        Operation("GET", f"contacts({CONTACT_ID})?$select=lastname"),
    ]

    linked, rolled_back, read = dataverse.batch(parts, safe=True)

    assert linked.ok
    assert [r.status for r in linked.responses] == [204, 204]
    leads = {r["leadid"]: r for r in fresh_emulator.rows("lead")}
    assert leads[lead_id]["_parentcontactid_value"] == CONTACT_ID
    contacts = {r["contactid"]: r for r in fresh_emulator.rows("contact")}
    assert contacts[CONTACT_ID]["lastname"] == "Batch"
    assert rolled_back_id not in contacts
    assert isinstance(rolled_back.error, NotFoundError)
    assert (rolled_back.error.status, rolled_back.error.code) == (404, "0x80040217")
    assert missing_lead in rolled_back.error.message
    assert rolled_back.error.request_id
    assert read.ok
    assert read.responses[0].json()["lastname"] == "Batch"
