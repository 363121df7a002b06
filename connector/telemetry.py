"""What this process counts that the store does not keep: HTTP requests by status, and waits.

Everything else `/metrics` shows (runs, durations, records, lag, segments, journeys, the
outbox) is read from the store at scrape time (`jobs.service`), so every instance sharing a
store shows the same numbers. These counters are per process: a request's status and the
time spent waiting on Dataverse are known only where they happened. They cost an increment
when nothing serves them (`run`, `demo`), and carry no URL, id or value, only the method,
the status and why a wait happened.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "dvconnect_http_requests",
    "HTTP requests sent to Dataverse, retries included, by method and status (or the "
    "connection error's name)",
    ["method", "status"],
    registry=REGISTRY,
)
WAITS = Counter(
    "dvconnect_http_waits",
    "Waits before sending to Dataverse: throttled (a 429 or 503 said Retry-After), held (a "
    "wait told to another thread of the process), backoff (before retrying a 5xx or a dropped "
    "connection)",
    ["reason"],
    registry=REGISTRY,
)
WAIT_SECONDS = Counter(
    "dvconnect_http_wait_seconds",
    "Seconds spent in those waits, by reason",
    ["reason"],
    registry=REGISTRY,
)


def waited(reason: str, seconds: float) -> None:
    """Count one wait of `seconds` for `reason` (throttled, held or backoff)."""
    WAITS.labels(reason).inc()
    WAIT_SECONDS.labels(reason).inc(seconds)
