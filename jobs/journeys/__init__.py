"""Journeys: a segment's members taken through waits, conditions and actions in Dynamics.

* `calendar` — business hours and delays in a journey's time zone (pure);
* `machine` — where one member goes next and what it does there (pure, tested by tables);
* `conditions` — a journey's conditions as SQL over its members, evaluated set-wise;
* `templates` — subjects and bodies rendered in a sandbox, strict about missing fields;
* `actions` — an action step for one member as outbox intents with deterministic ids;
* `validate` — "test the flow": reachability, cycles, references, templates, timing;
* `engine` — the `journeys` job: admit, decide, act, all through the outbox; also the dry run.
"""
