"""`dvconnect views install`: contact views for sales and for marketing, as system views.

Sales reps should not see the marketing-only contacts `link-orphans` creates; marketing wants
them all. Two public system views (`savedquery`, dataverse-webapi-journeys.md §22) do that:

* **Sales Contacts** — active contacts that are not marketing-only (the FetchXML keeps contacts
  whose flag was never set: a plain `ne 1` would drop them, U54);
* **Marketing Contacts** — every active contact, the marketing-only flag as a column.

Each view has a deterministic id, so installing is idempotent: a view that is missing is
created (created views are published by Dataverse), one that differs is updated and its table
published (`PublishXml`), one that matches is left alone. `savedquery` has no upsert (§22.3):
the id is read first, never PATCHed blindly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from jobs.context import Context

VIEW_NAMESPACE = uuid.UUID("0f6c2b7e-3a59-4c1e-9d0a-8b7e6f5a4d3c")
CONTACT_OBJECT_TYPE_CODE = 2  # `object` in layoutxml (dataverse-webapi-journeys.md §22.3)
_COLUMNS = ("fullname", "emailaddress1", "parentcustomerid", "telephone1")
_FETCH = """<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">
  <entity name="contact">
{attributes}
    <attribute name="contactid" />
    <order attribute="fullname" descending="false" />
    <filter type="and">
      <condition attribute="statecode" operator="eq" value="0" />{extra}
    </filter>
  </entity>
</fetch>"""
_NOT_MARKETING_ONLY = """
      <filter type="or">
        <condition attribute="marketingonly" operator="eq" value="0" />
        <condition attribute="marketingonly" operator="null" />
      </filter>"""
_SELECT = ("name", "description", "returnedtypecode", "querytype", "fetchxml", "layoutxml")


@dataclass(frozen=True)
class View:
    """One public view of contacts, as its savedquery record."""

    name: str
    description: str
    columns: tuple[str, ...]
    sales_only: bool

    @property
    def savedquery_id(self) -> str:
        return str(uuid.uuid5(VIEW_NAMESPACE, f"savedquery/contact/{self.name}"))

    def record(self) -> dict[str, object]:
        attributes = "\n".join(f'    <attribute name="{c}" />' for c in self.columns)
        cells = "".join(f'<cell name="{c}" width="{150 if c != "fullname" else 300}" />'
                        for c in self.columns)  # fmt: skip
        return {
            "name": self.name,
            "description": self.description,
            "returnedtypecode": "contact",
            "querytype": 0,
            "fetchxml": _FETCH.format(
                attributes=attributes, extra=_NOT_MARKETING_ONLY if self.sales_only else ""
            ),
            "layoutxml": (
                f'<grid name="resultset" object="{CONTACT_OBJECT_TYPE_CODE}" jump="fullname" '
                f'select="1" icon="1" preview="1"><row name="result" id="contactid">{cells}'
                "</row></grid>"
            ),
        }


VIEWS = (
    View(
        "Sales Contacts",
        "Active contacts without the marketing-only ones (installed by dvconnect)",
        _COLUMNS,
        sales_only=True,
    ),
    View(
        "Marketing Contacts",
        "Every active contact, marketing-only ones included (installed by dvconnect)",
        (*_COLUMNS, "marketingonly"),
        sales_only=False,
    ),
)


def install_views(ctx: Context) -> list[str]:
    """Create or update both views; one line per view saying what was done."""
    dataverse = ctx.online()
    lines = []
    updated = False
    for view in VIEWS:
        wanted = view.record()
        current = dataverse.record("savedqueries", view.savedquery_id, _SELECT)
        if current is None:
            dataverse.create("savedqueries", {"savedqueryid": view.savedquery_id, **wanted})
            lines.append(f"{view.name}: created ({view.savedquery_id})")
        elif any(current.get(key) != value for key, value in wanted.items()):
            dataverse.update("savedqueries", view.savedquery_id, wanted)
            updated = True
            lines.append(f"{view.name}: updated ({view.savedquery_id})")
        else:
            lines.append(f"{view.name}: already installed ({view.savedquery_id})")
    if updated:  # created views are published by Dataverse; updates must be (§22.2)
        xml = "<importexportxml><entities><entity>contact</entity></entities></importexportxml>"
        dataverse.call("PublishXml", {"ParameterXml": xml})
        lines.append("contact: published")
    return lines
