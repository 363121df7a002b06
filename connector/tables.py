"""dvconnect's own tables (`dvc_…`), declared once: what the store creates and migrations own.

The mapped tables (`lead`, `contact`, …) follow `tables.yaml` and are built by `connector.store`;
everything dvconnect records about its own work lives here:

* `dvc_sync_state` — one cursor per synced table, saved in the transaction of the page it follows;
  `read_tick` is when the read under way began, `seen_tick` when the last completed one began.
* `dvc_runs` — one record per job run (with the process that ran it, so a run whose process is
  gone shows as abandoned); its `counts` hold the job's counts and, under `_http`, how many of
  the run's requests were refused with 429 (`throttled`).
* `dvc_leases` — who is running what: two runs of one job on one store would undo each other.
* `dvc_tick_claims` — which instance runs each cron tick of a job (`dvconnect schedule`): the
  first to claim it; the others skip it. Claims a day old are pruned.
* `dvc_ticks` — one counter that orders events across processes: a sync read that began after a
  write was confirmed has seen that write (`dvc_outbox.done_tick` against `seen_tick`).
* `dvc_outbox` — every write dvconnect makes into Dataverse, as an intent committed with the
  state that caused it, then sent; its outcome is recorded on it.
* `dvc_orphan_links` — what `link-orphans` decided for each lead: the contact, matched or created.
* `dvc_sync_rejects` — rows a sync could not store (a value the database cannot hold), by id.
* `dvc_segment_members`, `dvc_segment_events`, `dvc_segment_evaluations`, `dvc_segment_scratch` —
  segment membership, who entered or exited, each evaluation's size and changes.
* `dvc_journeys`, `dvc_journey_versions` — each journey's lifecycle (a draft never writes) and
  every version of its definition, by text; `dvc_journey_members` — one row per entry of a
  contact into a journey: its step, when that step is due, how it ended; `dvc_journey_history`
  — every step a member took, with the values that decided it; `dvc_journey_records` — the
  records a journey created for a member (what its conditions on activities look at).
* `dvc_changes` — the real value changes an incremental sync saw on the rows of a table some
  journey triggers on (a row created, a watched column's old and new value), written with the
  page they came in; `dvc_change_uses` — what each journey decided about each change (a member
  entered, or why not), written with the admission, so a change admits once. Both are pruned a
  week after the change once no live or paused journey will decide it
  (`jobs.journeys.triggers.prune`).
* `dvc_score_contributions` — why each lead has its score: one row per model, lead, rule and
  record that gave it points, with since when (decay counts from there); `dvc_scores` — each
  lead's score and grade per model, since when it is sales-ready, its pending and last hand-off;
  `dvc_score_scratch` — one evaluation's scores, before they are compared; `dvc_score_history`
  — every change of a lead's score or grade; `dvc_handoffs` — each hand-off made to an owner
  (the record it created, the reasons), counted per owner and day for caps.
* `dvc_meta` — facts about the store itself (the normal form its match keys were computed in).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

METADATA = MetaData()

STAMP = String(20)  # ISO-8601 UTC with Z, as every dvc_ table keeps time
ID = String(36)  # a Dataverse GUID, lower case

sync_state = Table(
    "dvc_sync_state",
    METADATA,
    Column("table_name", String(128), primary_key=True),
    Column("phase", String(16), nullable=False),
    Column("mode", String(16)),
    Column("next_link", Text()),
    Column("delta_link", Text()),
    Column("watermark", STAMP),
    Column("generation", Integer(), nullable=False),
    Column("last_full_sync_at", STAMP),
    Column("last_sync_at", STAMP),
    Column("read_tick", BigInteger()),
    Column("seen_tick", BigInteger()),
)

runs = Table(
    "dvc_runs",
    METADATA,
    Column("run_id", Integer(), primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("started_at", STAMP, nullable=False),
    Column("finished_at", STAMP),
    Column("outcome", String(16), nullable=False),
    Column("counts", Text(), nullable=False),
    Column("requests", Integer(), nullable=False),
    Column("error", Text()),
    Column("host", String(255)),
    Column("pid", Integer()),
)

leases = Table(
    "dvc_leases",
    METADATA,
    Column("name", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer(), nullable=False),
    Column("expires_at", STAMP, nullable=False),
)

tick_claims = Table(
    "dvc_tick_claims",
    METADATA,
    Column("job", String(64), primary_key=True),
    Column("tick", STAMP, primary_key=True),  # the cron minute, UTC
    Column("host", String(255), nullable=False),
    Column("pid", Integer(), nullable=False),
)

ticks = Table(
    "dvc_ticks",
    METADATA,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger(), nullable=False),
)

outbox = Table(
    "dvc_outbox",
    METADATA,
    Column("intent_id", Integer(), primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False, unique=True),
    Column("job", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # create, update or action
    Column("table_name", String(128), nullable=False),
    Column("entity_set", String(128), nullable=False),
    Column("primary_key", String(128), nullable=False),
    Column("record_id", ID, nullable=False),
    Column("action", String(128)),
    Column("body", Text(), nullable=False),
    Column("headers", Text(), nullable=False),
    Column("after", String(255)),  # the key of an intent that must succeed first
    Column("guard", Text()),  # a read showing an action was already done (JSON)
    Column("status", String(16), nullable=False),  # pending, done or failed
    Column("attempts", Integer(), nullable=False),
    Column("error", Text()),
    Column("created_at", STAMP, nullable=False),
    Column("done_at", STAMP),
    Column("done_tick", BigInteger()),
    Column("run_id", Integer()),
    Index("dvc_outbox_status", "status", "job"),
    Index("dvc_outbox_record", "table_name", "record_id"),
)

orphan_links = Table(
    "dvc_orphan_links",
    METADATA,
    Column("link_id", Integer(), primary_key=True, autoincrement=True),
    Column("leadid", ID, nullable=False, index=True),
    Column("contactid", ID, nullable=False),
    Column("how", String(8), nullable=False),  # matched or created
    Column("match_key", Text()),
    Column("intent", String(255), nullable=False),  # the dvc_outbox key of the link
    Column("run_id", Integer()),
    Column("at", STAMP, nullable=False),
)

sync_rejects = Table(
    "dvc_sync_rejects",
    METADATA,
    Column("table_name", String(128), primary_key=True),
    Column("record_id", ID, primary_key=True),
    Column("reason", Text(), nullable=False),
    Column("at", STAMP, nullable=False),
)

segment_members = Table(
    "dvc_segment_members",
    METADATA,
    Column("segment", String(64), primary_key=True),
    Column("contactid", ID, primary_key=True),
    Column("lead_ids", Text()),  # the matching leads, comma-separated
    Column("since", STAMP, nullable=False),
)

segment_events = Table(
    "dvc_segment_events",
    METADATA,
    Column("event_id", Integer(), primary_key=True, autoincrement=True),
    Column("segment", String(64), nullable=False, index=True),
    Column("contactid", ID, nullable=False),
    Column("event", String(8), nullable=False),  # "entered" or "exited"
    Column("at", STAMP, nullable=False),
)

segment_evaluations = Table(
    "dvc_segment_evaluations",
    METADATA,
    Column("evaluation_id", Integer(), primary_key=True, autoincrement=True),
    Column("segment", String(64), nullable=False, index=True),
    Column("evaluated_at", STAMP, nullable=False),
    Column("size", Integer(), nullable=False),
    Column("entered", Integer(), nullable=False),
    Column("exited", Integer(), nullable=False),
    Column("seconds", Float(), nullable=False),
)

segment_scratch = Table(  # one evaluation's result, before it is compared
    "dvc_segment_scratch",
    METADATA,
    Column("segment", String(64), primary_key=True),
    Column("contactid", ID, primary_key=True),
    Column("lead_ids", Text()),
)

meta = Table(
    "dvc_meta",
    METADATA,
    Column("key", String(64), primary_key=True),
    Column("value", Text(), nullable=False),
)

journeys = Table(
    "dvc_journeys",
    METADATA,
    Column("journey", String(64), primary_key=True),
    Column("state", String(16), nullable=False),  # draft, live, paused, stopped
    Column("version", Integer(), nullable=False),  # the version new entrants take
    Column("started_at", STAMP),
    Column("paused_at", STAMP),  # while paused: since when
    Column("stopped_at", STAMP),
    Column("admitted_at", STAMP),  # the last admission (entry once: the only one)
    Column("repeated_at", STAMP),  # the last repetition (entry repeating)
)

journey_versions = Table(
    "dvc_journey_versions",
    METADATA,
    Column("journey", String(64), primary_key=True),
    Column("version", Integer(), primary_key=True),
    Column("text", Text(), nullable=False),
    Column("created_at", STAMP, nullable=False),
)

journey_members = Table(
    "dvc_journey_members",
    METADATA,
    Column("member_id", Integer(), primary_key=True, autoincrement=True),
    Column("journey", String(64), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("contactid", ID, nullable=False),
    Column("entry", Integer(), nullable=False),
    Column("leadid", ID),
    Column("step", String(64)),  # None once the member has left
    Column("status", String(16), nullable=False),  # active, completed, converted, exited, ...
    Column("arrived_at", STAMP, nullable=False),  # at its step
    Column("due_at", STAMP, nullable=False),  # when its step is next due
    Column("entered_at", STAMP, nullable=False),
    Column("left_at", STAMP),
    Column("error", Text()),  # a failed member: step, status, code, message, request id
    Column("last_intent", String(200)),  # its latest write: the next one waits for it
    Index("dvc_journey_members_entry", "journey", "contactid", "entry", unique=True),
    Index("dvc_journey_members_due", "journey", "step", "status", "due_at"),
)

journey_history = Table(
    "dvc_journey_history",
    METADATA,
    Column("event_id", Integer(), primary_key=True, autoincrement=True),
    Column("member_id", Integer(), nullable=False, index=True),
    Column("journey", String(64), nullable=False),
    Column("at", STAMP, nullable=False),
    Column("step", String(64)),
    Column("event", String(32), nullable=False),
    Column("to_step", String(64)),
    Column("detail", Text()),  # JSON: what decided it
)

journey_records = Table(
    "dvc_journey_records",
    METADATA,
    Column("member_id", Integer(), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("table_name", String(128), nullable=False),
    Column("record_id", ID, nullable=False),
    Column("journey", String(64), nullable=False),
    Column("owner_id", ID),
    Column("day", String(10)),  # the local day it was made for (caps count per owner and day)
    Column("intent", String(255)),  # the dvc_outbox key that writes it (None: reused)
    Index("dvc_journey_records_caps", "journey", "owner_id", "day"),
)

changes = Table(
    "dvc_changes",
    METADATA,
    Column("change_id", Integer(), primary_key=True, autoincrement=True),
    Column("table_name", String(128), nullable=False),
    Column("record_id", ID, nullable=False),
    Column("kind", String(8), nullable=False),  # created, changed, or ready (sales-ready)
    Column("column_name", String(128)),  # changed: the watched column (one row per column)
    Column("old_value", Text()),  # JSON, as connector.changes encodes it; None: empty
    Column("new_value", Text()),
    Column("run_id", Integer()),  # the sync run that saw it
    Column("at", STAMP, nullable=False),
    Index("dvc_changes_kind", "table_name", "kind", "column_name", "change_id"),
)

change_uses = Table(
    "dvc_change_uses",
    METADATA,
    Column("journey", String(64), primary_key=True),
    Column("change_id", Integer(), primary_key=True),
    Column("outcome", String(16), nullable=False),  # entered, filtered, in, too-soon, gone, ...
    Column("member_id", Integer()),  # entered: the member it admitted
    Column("at", STAMP, nullable=False),
)

score_contributions = Table(
    "dvc_score_contributions",
    METADATA,
    Column("model", String(64), primary_key=True),
    Column("leadid", ID, primary_key=True),
    Column("rule", String(64), primary_key=True),
    Column("record_id", ID, primary_key=True),  # the activity (per record), or "" (per lead)
    Column("at", STAMP, nullable=False),  # since when it counts: what decay measures
)

scores = Table(
    "dvc_scores",
    METADATA,
    Column("model", String(64), primary_key=True),
    Column("leadid", ID, primary_key=True),
    Column("score", Float(), nullable=False),
    Column("grade", String(8), nullable=False),  # cold, warm, hot
    Column("scored_at", STAMP, nullable=False),  # when score or grade last changed
    Column("ready_since", STAMP),  # sales-ready since (None: below the threshold)
    Column("handoff_due", STAMP),  # a hand-off owed for this crossing, from then (caps wait)
    Column("handed_off_at", STAMP),  # the last hand-off (the quiet period counts from it)
)

score_scratch = Table(  # one evaluation's result, before it is compared
    "dvc_score_scratch",
    METADATA,
    Column("model", String(64), primary_key=True),
    Column("leadid", ID, primary_key=True),
    Column("score", Float(), nullable=False),
)

score_history = Table(
    "dvc_score_history",
    METADATA,
    Column("event_id", Integer(), primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False),
    Column("leadid", ID, nullable=False),
    Column("at", STAMP, nullable=False),
    Column("score", Float(), nullable=False),
    Column("grade", String(8), nullable=False),
    Index("dvc_score_history_lead", "model", "leadid"),
)

handoffs = Table(
    "dvc_handoffs",
    METADATA,
    Column("model", String(64), primary_key=True),
    Column("leadid", ID, primary_key=True),
    Column("ready_since", STAMP, primary_key=True),  # the crossing it is for: one each
    Column("at", STAMP, nullable=False),
    Column("table_name", String(16), nullable=False),  # task or phonecall
    Column("record_id", ID, nullable=False),
    Column("owner_id", ID),
    Column("day", String(10), nullable=False),  # the owner's local day (caps count per day)
    Column("score", Float(), nullable=False),
    Column("reasons", Text(), nullable=False),
    Index("dvc_handoffs_caps", "model", "owner_id", "day"),
)
