"""`schedule.yaml`: when `dvconnect schedule` runs each job, as cron in one time zone."""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

from connector.mapping.document import Document, Strict

JOB_NAMES = ("sync", "link-orphans", "promote-contacts", "segments", "journeys", "scoring")


class Schedule(Strict):
    """Each scheduled job's five-field cron, and the zone they are read in."""

    timezone: str = "UTC"
    jobs: dict[str, str]


def load_schedule(document: Document) -> Schedule:
    body = document.parse(Schedule)
    try:
        CronTrigger.from_crontab("0 0 * * *", timezone=body.timezone)
    except Exception:  # an unknown zone raises the zoneinfo error of the platform
        raise document.error(
            ("timezone",), "an IANA time zone such as 'UTC' or 'Europe/Paris'"
        ) from None
    for job, cron in body.jobs.items():
        if job not in JOB_NAMES:
            raise document.error(("jobs", job), f"a job name, one of {', '.join(JOB_NAMES)}")
        try:
            CronTrigger.from_crontab(cron, timezone=body.timezone)
        except ValueError as exc:
            raise document.error(("jobs", job), f"a five-field cron expression ({exc})") from None
    return body
