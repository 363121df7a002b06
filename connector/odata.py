"""Pure OData helpers: literal quoting, query strings and entity paths for the Web API.

Every value that enters a URL goes through `literal` (or `guid`), so quotes, unicode and
`or 1 eq 1`-style text can never change the meaning of a filter or a key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from urllib.parse import quote

# Characters left unescaped in query values: what Dataverse's own examples leave readable.
_SAFE_QUERY = "/:,()'$@*!=;"


def guid(value: str | uuid.UUID) -> str:
    """A GUID in Dataverse's canonical form (lower case, no braces); ValueError when not one."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value).strip("{}")))
    except ValueError:
        raise ValueError(f"not a GUID: {str(value)[:64]!r}") from None


def literal(value: object) -> str:
    """An OData literal for a filter or key: strings quoted with embedded quotes doubled."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: give it a time zone")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


def query_string(options: Mapping[str, str]) -> str:
    """`$select=a,b&$filter=…` with values percent-encoded (`+`, `&`, `#`, `%` included)."""
    return "&".join(f"{name}={quote(value, safe=_SAFE_QUERY)}" for name, value in options.items())


def collection_url(
    entity_set: str,
    select: Iterable[str],
    filter: str | None = None,
    orderby: str | None = None,
    top: int | None = None,
) -> str:
    """A collection query relative to the API root, e.g. `leads?$select=leadid,subject`."""
    options = {"$select": ",".join(select)}
    if filter:
        options["$filter"] = filter
    if orderby:
        options["$orderby"] = orderby
    if top is not None:
        options["$top"] = str(top)
    return f"{entity_set}?{query_string(options)}"


def entity_path(entity_set: str, key: str | uuid.UUID) -> str:
    """The path of one record by primary key, e.g. `leads(7eb682f1-…)`."""
    return f"{entity_set}({guid(key)})"


def entity_definition_path(logical_name: str, tail: str = "") -> str:
    """Metadata path for one table, e.g. `EntityDefinitions(LogicalName='lead')/Attributes`."""
    return f"EntityDefinitions(LogicalName={literal(logical_name)}){tail}"
