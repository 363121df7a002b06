"""Dataverse error responses: one exception type and the catalogue of server texts (§11).

Handlers raise `ApiError`; the router turns it into `{"error":{"code":…,"message":…}}`. Texts
marked *server text* in the reference are reproduced byte for byte; the others are emulator
wording chosen by §17 and say so in their docstrings.
"""

from __future__ import annotations


class ApiError(Exception):
    """A Dataverse error: HTTP status, hex `code` and `message`.

    `property_error` marks the unknown/invalid property errors whose code the U5 switch can turn
    into `"0x0"`.
    """

    def __init__(
        self, status: int, code: str, message: str, *, property_error: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.property_error = property_error


ODATA_ERROR = "0x80060888"
PAYLOAD_ERROR = "0x80048d19"


def resource_not_found(segment: str) -> ApiError:
    return ApiError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


def unknown_property(type_name: str, name: str) -> ApiError:
    return ApiError(
        400,
        ODATA_ERROR,
        f"Could not find a property named '{name}' on type '{type_name}'.",
        property_error=True,
    )


def invalid_property(type_name: str, name: str) -> ApiError:
    return ApiError(
        400,
        PAYLOAD_ERROR,
        f"Invalid property '{name}' was found in entity '{type_name}'",
        property_error=True,
    )


def undeclared_property(name: str) -> ApiError:
    return ApiError(
        400,
        PAYLOAD_ERROR,
        f"An undeclared property '{name}' which only has property annotations in the payload "
        "but no property value was found in the payload. In OData, only declared navigation "
        "properties and declared named streams can be represented as properties without values.",
    )


def payload_error(message: str) -> ApiError:
    """Malformed JSON, wrong value types, bad binds (emulator wording, code 0x80048d19)."""
    return ApiError(400, PAYLOAD_ERROR, message)


def bad_query(message: str) -> ApiError:
    """A query the OData layer rejects (code 0x80060888)."""
    return ApiError(400, ODATA_ERROR, message)


def bad_key() -> ApiError:
    """Malformed GUID in a key (U35, emulator wording)."""
    return bad_query("Bad Request - Error in query syntax.")


def invalid_alternate_key(type_name: str) -> ApiError:
    """Alternate key syntax on a table without that key (U16)."""
    return bad_query(
        f"The key in the request URI is not valid for resource '{type_name}'. Ensure that the "
        "names and number of key properties match the declared or alternate key properties for "
        f"the resource '{type_name}'."
    )


def no_attribute(table: str, name: str) -> ApiError:
    """QueryBuilderNoAttribute: a FetchXML attribute or a query function's PropertyName that is
    not a column's logical name (captured text, without its trailing diagnostics)."""
    return ApiError(
        400,
        "0x80041103",
        f"'{table}' entity doesn't contain attribute with Name = '{name}' and NameMapping = "
        "'Logical' (look up attribute by name is case-sensitive).",
    )


def invalid_xml() -> ApiError:
    """A `fetchXml` that is not well-formed XML (captured text)."""
    return ApiError(400, "0x80040201", "Invalid XML.")


def does_not_exist(table: str, record_id: str) -> ApiError:
    return ApiError(404, "0x80040217", f"{table} With Id = {record_id} Does Not Exist")


def duplicate_key() -> ApiError:
    """POST with a primary key that already exists (DuplicateRecord, §7.10, §12.5)."""
    return ApiError(412, "0x80040237", "Cannot insert duplicate key.")


def matching_key_exists() -> ApiError:
    """`If-None-Match: *` on an existing record (§7.6)."""
    return ApiError(412, "0x80040237", "A record with matching key values already exists.")


def version_mismatch() -> ApiError:
    return ApiError(
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )


def too_long(attribute: str, table: str, max_length: int) -> ApiError:
    return ApiError(
        400,
        "0x80044331",
        f"A validation error occurred.  The length of the '{attribute}' attribute of the "
        f"'{table}' entity exceeded the maximum allowed length of '{max_length}'.",
    )


def out_of_range(attribute: str, table: str, value: object) -> ApiError:
    """A choice or integer value outside the column's range (emulator wording)."""
    return ApiError(
        400,
        "0x80044331",
        f"A validation error occurred.  The value {value} of '{attribute}' on record of type "
        f"'{table}' is outside the valid range.",
    )


def invalid_argument(message: str) -> ApiError:
    """InvalidArgument 0x80040203: state/status problems (U19, U20, U21; emulator wording)."""
    return ApiError(400, "0x80040203", message)


def not_supported(message: str) -> ApiError:
    return ApiError(400, "0x80040315", message)


def not_implemented(what: str) -> ApiError:
    """A Web API feature this emulator does not serve yet (emulator wording)."""
    return ApiError(501, "0x80040219", f"{what} is not implemented by the emulator.")


def track_changes_option(option: str) -> ApiError:
    return bad_query(
        f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.'
    )


def expired_version_stamp() -> ApiError:
    return ApiError(
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )


def invalid_paging_cookie() -> ApiError:
    """QueryBuilderInvalidPagingCookie (emulator wording)."""
    return ApiError(400, "0x8004112A", "The paging cookie is invalid.")


def no_http_resource(url: str) -> ApiError:
    """A function called with the wrong method, e.g. POST WhoAmI (§2.4)."""
    return ApiError(404, "", f"No HTTP resource was found that matches the request URI '{url}'.")


def duplicates_found() -> ApiError:
    """DuplicateRecordsFound (§7.10): HTTP 500."""
    return ApiError(
        500,
        "0x80040333",
        "A record was not created or updated because a duplicate of the current record "
        "already exists.",
    )


def read_only_record() -> ApiError:
    """An update of a closed activity (U22)."""
    return ApiError(400, "0x80043b09", "The object cannot be updated because it is read-only.")


def stream_not_readable(entity_set: str) -> ApiError:
    """A `$batch` body whose last line has no line ending (§9.1; the [SUPPORT] text without
    its stack trace)."""
    return payload_error(
        f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more "
        "information on this error please follow this help link "
        "https://go.microsoft.com/fwlink/?linkid=2195293 ---->  InnerException : "
        "System.ArgumentException: Stream was not readable."
    )


def content_id_missing(reference: str) -> ApiError:
    return payload_error(
        f"Content-ID Reference: '{reference}' does not exist in the batch context."
    )


def unexpected() -> ApiError:
    return ApiError(500, "0x80040216", "An unexpected error occurred.")
