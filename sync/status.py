"""``audience-sync status``: per job, the last run, the next one, the state, the retries and the lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sync.audit import run_record
from sync.config import Config, JobConfig
from sync.messages import iso
from sync.scheduler import LOUD_FAILURES
from sync.store import Store

STATUS_FIELDS = (
    "job",
    "schedule",
    "last_run",
    "last_status",
    "last_finished",
    "next_run_at",
    "acknowledged_users",
    "waiting_for_retry",
    "consecutive_failures",
    "running",
)


def job_status(store: Store, job: JobConfig, now: datetime) -> dict[str, Any]:
    last = store.last_run(job.name)
    control = store.schedule(job.name)
    lease = store.lease(job.name)
    live = lease is not None and lease.expires_at >= now
    failures = store.consecutive_failures(job.name)
    return {
        "job": job.name,
        "enabled": job.schedule.enabled,
        "paused": bool(control and control.paused),
        "skip_next": bool(control and control.skip_next),
        "last_run": run_record(last) if last else None,
        "next_run_at": iso(control.next_run_at) if control and control.next_run_at and job.schedule.enabled else None,
        "acknowledged_users": store.state_size(job.name),
        "waiting_for_retry": store.waiting_for_retry(job.name),
        "consecutive_failures": failures,
        "failing": failures >= LOUD_FAILURES,
        "lease": {"owner": lease.owner, "run_id": lease.run_id, "expires_at": iso(lease.expires_at), "live": live}
        if lease
        else None,
    }


def status_rows(store: Store, config: Config, now: datetime) -> list[dict[str, Any]]:
    return [job_status(store, job, now) for job in config.jobs]


def table_row(status: dict[str, Any]) -> dict[str, Any]:
    """A status flattened for the table people read."""
    last = status["last_run"] or {}
    schedule = "disabled" if not status["enabled"] else ("paused" if status["paused"] else "scheduled")
    if status["skip_next"]:
        schedule += ", skipping next"
    failures = status["consecutive_failures"]
    lease = status["lease"]
    return {
        "job": status["job"],
        "schedule": schedule,
        "last_run": f"{last['run_id']} {last['kind']}" if last else "never",
        "last_status": last.get("status", ""),
        "last_finished": last.get("finished_at") or "",
        "next_run_at": status["next_run_at"] or "",
        "acknowledged_users": status["acknowledged_users"],
        "waiting_for_retry": status["waiting_for_retry"],
        "consecutive_failures": f"{failures} FAILING" if status["failing"] else failures,
        "running": f"{lease['owner']} (run {lease['run_id']})" if lease and lease["live"] else "",
    }
