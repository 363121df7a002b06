"""E-mail messages (§18): SendEmail, GetTrackingTokenEmail, and the transport and engagement
that tests drive through the admin endpoint.

`emails(<id>)/Microsoft.Dynamics.CRM.SendEmail` sends an outgoing Draft that has a sender and a
recipient (U40): `IssueSend: true` queues it (1/6 Pending Send, U41), `false` records it as sent
(1/3 with `senton`, U42); with the U41 switch a sender whose `emailrouteraccessapproval` is not
Approved is refused. The unbound `GetTrackingTokenEmail` hands out `CRM:<7 digits>` tokens from a
counter of the org (U39). Mail transport is not emulated: `move` is the test hook that takes a
queued mail to Sent or Failed, `engage` the one that records opens, clicks, attachment views and
replies (U43), optionally as `interactionforemail` rows.
"""

from __future__ import annotations

from typing import Any

from emulator import errors
from emulator.context import Context
from emulator.schema import Table
from emulator.storage import WriteTx
from emulator.wire import Request, Response, json_response
from emulator.writes import action_parameters, coerce, insert_system

NAMESPACE = "Microsoft.Dynamics.CRM."
DRAFT, FAILED, SENT, PENDING_SEND, SENDING = 1, 8, 3, 6, 7
RECIPIENT_MASKS = (2, 3, 4)
APPROVED = 1
TOKEN_COUNTER = "tracking_token"  # noqa: S105 - the meta key of a counter, not a secret
INTERACTIONS = {
    "opens": ("opencount", 0, "EmailOpen"),
    "clicks": ("linksclickedcount", 1, "LinkOpen"),
    "attachment_opens": ("attachmentopencount", 2, "AttachmentOpen"),
    "replies": ("replycount", 3, "EmailReply"),
}


def _parties(tx: WriteTx, email_id: str) -> list[tuple[int, str | None, str | None]]:
    """(mask, party id, party table) of the e-mail's parties."""
    rows = tx.rows(
        """SELECT participationtypemask, "_partyid_value", partyidtype FROM "activityparty"
        WHERE "_activityid_value" = ? AND activityidtype = 'email'""",
        (email_id,),
    )
    return [(row[0], row[1], row[2]) for row in rows]


def _check_sendable(ctx: Context, tx: WriteTx, current: dict[str, Any]) -> None:
    """U40, U41: an outgoing Draft with a sender and at least one recipient (and, with the
    switch, an approved sender)."""
    if (current["statecode"], current["statuscode"]) != (0, DRAFT):
        raise errors.invalid_argument(
            "Only an e-mail in Draft status can be sent: this one has status code "
            f"{current['statuscode']}."
        )
    if not current["directioncode"]:
        raise errors.invalid_argument("An incoming e-mail cannot be sent.")
    parties = _parties(tx, current["activityid"])
    senders = [(party, kind) for mask, party, kind in parties if mask == 1]
    if not senders:
        raise errors.invalid_argument("The e-mail must have a sender.")
    if not any(mask in RECIPIENT_MASKS for mask, _, _ in parties):
        raise errors.invalid_argument(
            "The e-mail must have at least one recipient before it can be sent."
        )
    party, kind = senders[0]
    if ctx.config.send_email_requires_approval and party is not None and kind is not None:
        sender = tx.record(ctx.schema.by_name[kind], party) or {}
        if sender.get("emailrouteraccessapproval") != APPROVED:
            raise errors.invalid_argument(
                f"The e-mail address of the sender ({kind} {party}) is not approved: e-mail from "
                "unapproved users and queues is not processed."
            )


def send_email(ctx: Context, request: Request, table: Table, email_id: str) -> Response:
    """`emails(<id>)/Microsoft.Dynamics.CRM.SendEmail` (§18.7)."""
    parameters = action_parameters(request, "SendEmail", {"IssueSend": bool, "TrackingToken": str})
    issue = parameters.get("IssueSend")
    if not isinstance(issue, bool):
        raise errors.payload_error(
            "The parameter 'IssueSend' of the operation 'SendEmail' is required and must be of "
            "type 'Edm.Boolean'."
        )
    with ctx.store.write(ctx.now()) as tx:
        current = tx.record(table, email_id)
        if current is None:
            raise errors.does_not_exist(table.name, email_id)
        _check_sendable(ctx, tx, current)
        values: dict[str, Any] = {
            "statecode": 1,
            "statuscode": PENDING_SEND if issue else SENT,
            "isemailfollowed": current["followemailuserpreference"],
            "modifiedon": tx.now,
            "_modifiedby_value": ctx.caller_id,
        }
        if not issue:
            values["senton"] = tx.now
        if parameters.get("TrackingToken") is not None:
            token = parameters["TrackingToken"]
            values["trackingtoken"] = coerce(table, table.by_name["trackingtoken"], token)
        tx.update(table, email_id, values)
    context = f"{ctx.api_root}$metadata#{NAMESPACE}SendEmailResponse"
    return json_response(200, {"@odata.context": context, "Subject": current["subject"]})


def tracking_token(ctx: Context, request: Request) -> Response:
    """`GetTrackingTokenEmail` (§18.8, U39): the next `CRM:<7 digits>` token of the org."""
    action_parameters(request, "GetTrackingTokenEmail", {"Subject": str})
    with ctx.store.write(ctx.now()) as tx:
        number = int(ctx.store.meta(TOKEN_COUNTER) or 0) + 1
        tx.set_meta(TOKEN_COUNTER, str(number))
    context = f"{ctx.api_root}$metadata#{NAMESPACE}GetTrackingTokenEmailResponse"
    return json_response(200, {"@odata.context": context, "TrackingToken": f"CRM:{number:07d}"})


class HookError(Exception):
    """A test hook asked for something the e-mail's state does not allow (admin 409)."""


TRANSPORT = {
    "sending": ((PENDING_SEND,), {"statecode": 1, "statuscode": SENDING}),
    "sent": ((PENDING_SEND, SENDING), {"statecode": 1, "statuscode": SENT}),
    "failed": ((PENDING_SEND, SENDING), {"statecode": 0, "statuscode": FAILED}),
}


def move(ctx: Context, email_id: str, outcome: str) -> None:
    """The mail transport's verdict on a queued e-mail (`outcome` one of TRANSPORT): Sending,
    Sent (with `senton`), Failed."""
    sources, values = TRANSPORT[outcome]
    table = ctx.schema.by_name["email"]
    with ctx.store.write(ctx.now()) as tx:
        current = tx.record(table, email_id)
        if current is None:
            raise errors.does_not_exist(table.name, email_id)
        if current["statecode"] != 1 or current["statuscode"] not in sources:
            raise HookError(
                f"the e-mail has status {current['statecode']}/{current['statuscode']}; "
                f"'{outcome}' needs status code {' or '.join(map(str, sources))}"
            )
        stamps = {"senton": tx.now} if outcome == "sent" else {}
        tx.update(table, email_id, {**values, **stamps, "modifiedon": tx.now})


def engage(ctx: Context, email_id: str, counts: dict[str, int], *, interactions: bool) -> list[str]:
    """Record engagement on an e-mail (U43): counters incremented, `lastopenedtime` set by an
    open, one `interactionforemail` row per event when asked; returns the rows' ids."""
    table = ctx.schema.by_name["email"]
    rows = ctx.schema.by_name["interactionforemail"]
    created: list[str] = []
    with ctx.store.write(ctx.now()) as tx:
        current = tx.record(table, email_id)
        if current is None:
            raise errors.does_not_exist(table.name, email_id)
        values: dict[str, Any] = {"modifiedon": tx.now}
        for key, count in counts.items():
            column = INTERACTIONS[key][0]
            values[column] = (current[column] or 0) + count
        if counts.get("opens"):
            values["lastopenedtime"] = tx.now
        tx.update(table, email_id, values)
        if not interactions:
            return created
        address = _first_recipient_address(ctx, tx, email_id)
        owner = {k: current[k] for k in ("_ownerid_value", "owneridtype")}
        for key, count in counts.items():
            _, kind, label = INTERACTIONS[key]
            for _ in range(count):
                row = {
                    "name": label, "emailactivityid": email_id, "interactiontype": kind,
                    "emailinteractiontime": tx.now, "emailaddress": address,
                    "interactionrepliedby": address if kind == 3 else None, **owner,
                }  # fmt: skip
                created.append(insert_system(ctx, tx, rows, row))
    return created


def _first_recipient_address(ctx: Context, tx: WriteTx, email_id: str) -> str | None:
    """The address of the e-mail's first To party: its `addressused`, else its record's email."""
    found = tx.rows(
        """SELECT addressused, "_partyid_value", partyidtype FROM "activityparty"
        WHERE "_activityid_value" = ? AND activityidtype = 'email' AND participationtypemask = 2
        ORDER BY createdon, activitypartyid LIMIT 1""",
        (email_id,),
    )
    if not found:
        return None
    address, party, kind = found[0]
    if address or party is None or kind is None:
        return str(address) if address else None
    record = tx.record(ctx.schema.by_name[kind], party) or {}
    for column in ("emailaddress1", "internalemailaddress", "emailaddress"):
        if record.get(column):
            return str(record[column])
    return None
