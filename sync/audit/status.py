"""``audience-sync status``: per job, the last run, the next one, what is pending, the failures and the lease."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sync.audit.queries import run_record
from sync.clock import iso
from sync.config import Config, JobConfig, JobOutline, Outline
from sync.run.alerts import FAILING_AFTER
from sync.store import Store
from sync.text import plural

# `status --json`: one object per job with these fields (README: JSON output).
STATUS_JSON_FIELDS = (
    "job",
    "enabled",
    "paused",
    "skip_next",
    "last_run",
    "next_run_at",
    "scheduler",
    "acknowledged_users",
    "pending",
    "waiting_for_retry",
    "dead",
    "records",
    "full_resync",
    "consecutive_failures",
    "consecutive_blocked",
    "failing",
    "lease",
)
# The columns of the table people read; `--json` has every field.
STATUS_FIELDS = (
    "job",
    "schedule",
    "last_run",
    "finished",
    "next_run",
    "acknowledged",
    "pending",
    "dead",
    "failures",
    "running",
)


# A scheduler not seen for this long is taken to be gone (it records that it is alive every 15 s).
SCHEDULER_STALE = timedelta(seconds=60)


def scheduler_records(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Every scheduler that has not stopped cleanly: host, pid, jobs, when last seen, and whether it is alive
    (seen within ``SCHEDULER_STALE``)."""
    return [
        {
            "owner": beat.owner,
            "host": beat.host,
            "pid": beat.pid,
            "jobs": json.loads(beat.jobs),
            "started_at": iso(beat.started_at),
            "last_seen_at": iso(beat.seen_at),
            "alive": now - beat.seen_at <= SCHEDULER_STALE,
        }
        for beat in store.schedulers()
    ]


def job_status(
    store: Store, job: JobConfig | JobOutline, now: datetime, schedulers: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    if schedulers is None:
        schedulers = scheduler_records(store, now)
    mine = next((s for s in schedulers if s["alive"] and job.name in s["jobs"]), None)
    last = store.last_run(job.name)
    control = store.schedule(job.name)
    lease = store.lease(job.name)
    live = lease is not None and lease.expires_at >= now
    failures = store.consecutive_failures(job.name)
    pending = store.pending_updates(job.name)
    resync = store.full_resync(job.name)
    found, waiting = store.match_counts(job.name)
    return {
        "job": job.name,
        "enabled": job.schedule.enabled,
        "paused": bool(control and control.paused),
        "skip_next": bool(control and control.skip_next),
        "last_run": run_record(last) if last else None,
        # A next run only when a live scheduler will start it.
        "next_run_at": iso(control.next_run_at)
        if mine and control and control.next_run_at and job.schedule.enabled
        else None,
        "scheduler": mine,
        "acknowledged_users": store.state_size(job.name),
        "pending": pending,
        "waiting_for_retry": pending,  # the name of earlier versions
        "dead": store.dead_count(job.name),
        # Destinations that find records before writing (chartmogul_api): over every subject looked up.
        "records": {"found": found, "waiting": waiting, "match_rate": round(found / (found + waiting), 4)}
        if found + waiting
        else None,
        "full_resync": {"run_id": resync.run_id, "started_at": iso(resync.started_at), "left": resync.remaining}
        if resync
        else None,
        "consecutive_failures": failures,
        "consecutive_blocked": store.consecutive_failures(job.name, statuses=("blocked",)),
        "failing": failures >= FAILING_AFTER,
        "lease": {"owner": lease.owner, "run_id": lease.run_id, "expires_at": iso(lease.expires_at), "live": live}
        if lease
        else None,
    }


def status_rows(store: Store, config: Config | Outline, now: datetime) -> list[dict[str, Any]]:
    jobs: Sequence[JobConfig | JobOutline] = config.jobs
    schedulers = scheduler_records(store, now)
    return [job_status(store, job, now, schedulers) for job in jobs]


def scheduler_line(schedulers: list[dict[str, Any]], now: datetime) -> str:
    """What `status` says first: which schedulers run, or that none does."""
    alive = [s for s in schedulers if s["alive"]]
    if not alive:
        seen = f"; the last one was seen {_ago(schedulers[0]['last_seen_at'], now)}" if schedulers else ""
        return f"no scheduler is running{seen}: scheduled jobs will not run until `audience-sync schedule` starts"
    return "; ".join(
        f"scheduler on {s['host']} (pid {s['pid']}) running {plural(len(s['jobs']), 'job')}, last seen "
        f"{_ago(s['last_seen_at'], now)}"
        for s in alive
    )


def _ago(moment: str, now: datetime) -> str:
    seconds = max(0, int((now - datetime.fromisoformat(moment)).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"at {moment[:16].replace('T', ' ')} UTC"


def table_row(status: dict[str, Any]) -> dict[str, Any]:
    """A status flattened for the table people read: short cells, so that it fits 100 columns."""
    last = status["last_run"] or {}
    schedule = "disabled" if not status["enabled"] else ("paused" if status["paused"] else "on")
    if status["skip_next"]:
        schedule += ", skip next"
    failures = status["consecutive_failures"]
    blocked = status["consecutive_blocked"]
    trouble = f"{failures} FAILING" if status["failing"] else str(failures)
    if blocked:
        trouble += f" ({blocked} blocked)"
    lease = status["lease"]
    return {
        "job": status["job"],
        "schedule": schedule,
        "last_run": _last_run(last, status["records"]),
        "finished": _short(last.get("finished_at")),
        "next_run": _short(status["next_run_at"]),
        "acknowledged": status["acknowledged_users"],
        "pending": _pending(status),
        "dead": status["dead"],
        "failures": trouble,
        "running": _running(lease),
    }


def _running(lease: dict[str, Any] | None) -> str:
    if not lease or not lease["live"]:
        return ""
    what = f"run {lease['run_id']}" if lease["run_id"] is not None else "a run starting"
    return f"{what} on {lease['owner']}"


def _pending(status: dict[str, Any]) -> str:
    resync = status["full_resync"]
    if resync is None:
        return str(status["pending"])
    return f"{status['pending']} (full resync: {resync['left']} left)"


def _last_run(last: dict[str, Any], records: dict[str, Any] | None) -> str:
    if not last:
        return "never"
    text = f"{last['run_id']} {last['status']}"
    if records is not None:
        text += f", {records['match_rate']:.0%} matched ({records['waiting']} wait for a record)"
    return text


def _short(moment: str | None) -> str:
    """``2026-11-30T12:00:05.123Z`` as ``11-30 12:00``: the minute is what an operator reads."""
    return f"{moment[5:10]} {moment[11:16]}" if moment else ""
