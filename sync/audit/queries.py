"""What runs changed and sent, read back from the state store: ``diff``, ``history``, ``audiences``, ``messages``.

Everything here streams: a ten-million-row initial sync is read and exported row by row.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from sync.calls import CallSpec, render
from sync.clock import iso
from sync.config import JobConfig, JobOutline, parse_duration
from sync.config.destinations import MappingsConfig
from sync.destinations.chartmogul import encode_body
from sync.destinations.factory import spec_before_specs
from sync.errors import PermanentDeliveryError, SyncError
from sync.model import (
    KEY_COUNTS,
    RUN_COUNTS,
    RUN_SUMMARY_COUNTS,
    KeyChange,
    Update,
    change_of,
)
from sync.store import AuditFilter, AuditRow, Store
from sync.store.models import FailedUpdate, Run, RunUpdate

# The columns of `diff`: one row per (user, key) of an update, with the update's delivery outcome.
CHANGE_FIELDS = (
    "user_id",
    "key",
    "old",
    "new",
    "message_id",
    "status",
    "http_status",
    "error",
    "run_id",
    "change",
    "finished_at",
)
# The fields of a `history` timeline entry (`--json` adds ``change``: entered, exited, trait or profile).
HISTORY_FIELDS = (
    "run_id",
    "run_kind",
    "run_started_at",
    "key",
    "old",
    "new",
    "message_id",
    "status",
    "http_status",
    "attempts",
    "error",
    "finished_at",
)
CHANGES = ("entered", "exited", "trait", "profile")
# The columns of run listings for people (`runs`, the demo): the error is its first line, cut short.
RUN_TABLE_FIELDS = ("run_id", "kind", "trigger", "status", "started_at", "duration", *RUN_SUMMARY_COUNTS, "error")
# The fields of a run record (`runs --json`, `status --json`'s last_run, `runs show --json`'s run).
RUN_FIELDS = (
    "run_id",
    "job",
    "kind",
    "dry_run",
    "trigger",
    "status",
    "started_at",
    "finished_at",
    "duration_s",
    *RUN_COUNTS,
    "match_rate",
    "error",
    "issues",
)
# How much of a run's error a table shows; `runs show` has all of it.
_ERROR_CELL = 80


FAILED_FIELDS = (
    "user_id",
    "state",
    "message_id",
    "failed_runs",
    "http_status",
    "error",
    "first_failed_at",
    "last_failed_at",
    "last_run_id",
)


def failure_records(store: Store, job: str, every: bool = False) -> list[dict[str, Any]]:
    """``failed JOB --json``: the job's dead updates; with ``every``, also the rejected ones sent again each
    run and those of the last run still being retried or not sent yet."""
    rejected = store.failed_updates(job, dead_only=not every)
    rows = [_failed_row(row) for row in rejected]
    if every:
        listed = {row.user_id for row in rejected}
        rows += [_retrying_row(row) for row in store.undelivered(job) if row.user_id not in listed]
    return rows


def _failed_row(row: FailedUpdate) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "state": "dead" if row.dead else "rejected",
        "message_id": row.message_id,
        "failed_runs": row.failed_runs,
        "http_status": row.http_status,
        "error": row.error,
        "first_failed_at": iso(row.first_failed_at),
        "last_failed_at": iso(row.last_failed_at),
        "last_run_id": row.last_run_id,
    }


def _retrying_row(row: RunUpdate) -> dict[str, Any]:
    """An update of the last run that was not delivered and not rejected: the next run sends it again."""
    return {
        "user_id": row.user_id,
        "state": "retrying" if row.status == "failed" else "pending",
        "message_id": row.message_id,
        "failed_runs": 0,
        "http_status": row.http_status,
        "error": row.error or ("not sent yet" if row.status == "pending" else None),
        "first_failed_at": iso(row.finished_at) if row.finished_at else None,
        "last_failed_at": iso(row.finished_at) if row.finished_at else None,
        "last_run_id": row.run_id,
    }


def run_or_fail(store: Store, run_id: int) -> Run:
    run = store.run(run_id)
    if run is None:
        raise SyncError(f"no run with id {run_id} in the state store")
    return run


def run_record(run: Run) -> dict[str, Any]:
    """A run as ``runs --json`` gives it (``RUN_FIELDS``, in that order)."""
    kind = f"{run.kind} (dry run)" if run.dry_run else run.kind
    return {
        "run_id": run.id,
        "job": run.job,
        "kind": kind,
        "dry_run": run.dry_run,
        "trigger": run.trigger,
        "status": run.status,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at) if run.finished_at else None,
        "duration_s": round((run.finished_at - run.started_at).total_seconds(), 1) if run.finished_at else None,
        **{count: getattr(run, count) or 0 for count in RUN_COUNTS},
        "match_rate": match_rate(run.delivered, run.unmatched),
        "error": run.error,
        "issues": json.loads(run.issues) if run.issues else [],
    }


def run_table_row(record: dict[str, Any]) -> dict[str, Any]:
    """A run record for a table: the duration in words, the error's first line cut short."""
    error = (record["error"] or "").strip()
    first = error.splitlines()[0] if error else ""
    if len(first) > _ERROR_CELL:
        first = first[: _ERROR_CELL - 1] + "…"
    return {**record, "duration": duration_text(record["duration_s"]), "error": first}


def duration_text(seconds: float | None) -> str:
    """``4.2s``, ``3m 05s``, ``2h 01m``; empty for a run still going."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


# How many rejected updates `runs show` lists as a sample.
REJECTION_SAMPLE = 10


def run_detail(store: Store, run_id: int) -> dict[str, Any]:
    """Everything known of one run (``runs show --json``): its record, the phases with their seconds, the
    mass-change guard's verdict, the alerts it sent, a sample of the updates not delivered with their
    reasons, the reasons counted, and the job's definition in effect (no secrets)."""
    run = run_or_fail(store, run_id)
    guard = json.loads(run.guard) if run.guard is not None else None
    return {
        "run": run_record(run),
        "phases": [{"phase": name, "seconds": seconds} for name, seconds in json.loads(run.phases or "[]")],
        "guard": None if guard is None else {"stopped": run.status == "blocked", "findings": guard},
        "alerts": json.loads(run.alerts) if run.alerts else [],
        "failures": [
            {"user_id": row.user_id, "status": row.status, "http_status": row.http_status, "error": row.error}
            for row in store.undelivered_of(run_id, REJECTION_SAMPLE)
        ],
        "failure_reasons": [
            {"reason": reason, "http_status": status, "updates": count}
            for reason, status, count in store.run_failure_reasons(run_id)
        ],
        "definition": json.loads(run.definition) if run.definition else None,
        # the run's updates by status as recorded so far: what a run still going has answered
        "progress": store.update_counts(run_id),
        "reconcile": json.loads(run.reconcile) if run.reconcile else None,
        # the run's row and changes in the warehouse's sync log (writeback): when, or why not yet
        "writeback": None
        if run.written_back is None and run.writeback_error is None
        else {"written_at": iso(run.written_back) if run.written_back else None, "error": run.writeback_error},
    }


def match_rate(delivered: int, unmatched: int) -> float | None:
    """The share of the subjects written that the destination had a record for; None when it found every
    one (or the destination does not look records up)."""
    return round(delivered / (delivered + unmatched), 4) if unmatched else None


def moment(text: str, now: datetime) -> datetime:
    """``--since``/``--until``: an ISO date or time (UTC unless it says otherwise), or an age such as ``7d``."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise SyncError(f"{text!r} is neither a time (2026-11-15, 2026-11-15T08:00) nor an age (7d, 12h)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=now.tzinfo)


@dataclass(frozen=True)
class ChangeFilter:
    """Filters on a change inside an update: its key and what happened (entered, exited, trait)."""

    key: str | None = None
    change: str | None = None

    def keeps(self, key: str, kind: str, new: Any) -> bool:
        if self.key is not None and key != self.key:
            return False
        what = change_of(kind, new)
        return self.change is None or what == self.change


def change_records(store: Store, filters: AuditFilter, changes: ChangeFilter | None = None) -> Iterator[dict[str, Any]]:
    """One record per (update, key), in run order."""
    if filters.run_id is not None:
        run_or_fail(store, filters.run_id)
    keep = changes or ChangeFilter()
    for row in store.audit_rows(filters):
        for key, kind, old, new in json.loads(row.changes):
            if keep.keeps(key, kind, new):
                yield _record(row, key, kind, old, new)


def _record(row: AuditRow, key: str, kind: str, old: Any, new: Any) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "job": row.job,
        "run_kind": row.run_kind,
        "run_started_at": iso(row.run_started_at),
        "user_id": row.user_id,
        "key": key,
        "kind": kind,
        "change": change_of(kind, new),
        "old": old,
        "new": new,
        "message_id": row.message_id,
        "status": row.status,
        "http_status": row.http_status,
        "attempts": row.attempts,
        "error": row.error,
        "sent_at": iso(row.sent_at) if row.sent_at else None,
        "finished_at": iso(row.finished_at) if row.finished_at else None,
    }


# `history --json`: one object with these fields; ``timeline`` is a list of HISTORY_FIELDS records.
HISTORY_JSON_FIELDS = ("job", "user_id", "acknowledged", "version", "timeline")
# `runs show --json`: one object with these fields (``run`` is a RUN_FIELDS record).
RUN_DETAIL_FIELDS = (
    "run", "phases", "guard", "alerts", "failures", "failure_reasons", "definition", "progress", "reconcile",
    "writeback",
)  # fmt: skip


# Pages: at most this many rows, and this many when none is asked for.
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def encode_cursor(*parts: int) -> str:
    """An opaque cursor: where the next page starts."""
    return base64.urlsafe_b64encode(".".join(map(str, parts)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, size: int) -> tuple[int, ...] | None:
    """The parts of a cursor made by ``encode_cursor``; SyncError for one that is not."""
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = tuple(int(part) for part in text.split("."))
    except (ValueError, UnicodeDecodeError):
        raise SyncError(f"malformed cursor {cursor[:40]!r}") from None
    if len(parts) != size or any(part < 0 for part in parts):
        raise SyncError(f"malformed cursor {cursor[:40]!r}")
    return parts


def change_page(
    store: Store, filters: AuditFilter, keep: ChangeFilter, cursor: str | None = None, limit: int = DEFAULT_PAGE
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of changes (``diff --json`` records) in the trail's order, and the cursor of the next page
    (None after the last). Read through the update ids, so every row comes exactly once however many pages."""
    start = decode_cursor(cursor, 2) or (0, 0)
    at, skip = start
    records: list[dict[str, Any]] = []
    fetch = max(50, limit // 2)  # updates carry a few changes each; a filtered page reads further, doubling
    while True:
        rows = store.audit_page(filters, at - 1, fetch, keep.key)
        for update_id, row in rows:
            changes = _loads(row.changes)
            for index in range(skip if update_id == at else 0, len(changes)):
                key, kind, old, new = changes[index]
                if not keep.keeps(key, kind, new):
                    continue
                if len(records) == limit:
                    return records, encode_cursor(update_id, index)
                records.append(_record(row, key, kind, old, new))
        if len(rows) < fetch:
            return records, None
        at, skip = rows[-1][0] + 1, 0
        if len(records) == limit:  # full, with more updates after: the next page starts at the next one
            return records, encode_cursor(at, 0)
        fetch = min(fetch * 2, 10_000)


def _loads(text: str) -> Any:
    """JSON of the audit trail: orjson, several times faster; json for what it does not read (integers
    beyond 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def run_page(
    store: Store,
    job: str | None,
    statuses: tuple[str, ...] = (),
    trigger: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs (``runs --json`` records), newest first, and the next page's cursor."""
    before = decode_cursor(cursor, 1)
    found = store.runs(job, limit + 1, statuses=statuses, trigger=trigger, before=before[0] if before else None)
    more = len(found) > limit
    found = found[:limit]
    return [run_record(run) for run in found], encode_cursor(found[-1].id) if more else None


def search_subject(store: Store, subject_id: str) -> list[dict[str, Any]]:
    """Every job that knows ``subject_id``: what it acknowledged and its last run that changed it."""
    found = []
    for job in store.job_names():
        acknowledged = store.acknowledged(job, subject_id)
        last = next(iter(store.updates_for(job, subject_id, 1)), None)
        if acknowledged is None and last is None:
            continue
        found.append(
            {
                "job": job,
                "user_id": subject_id,
                "acknowledged": acknowledged[0] if acknowledged else {},
                "version": acknowledged[1] if acknowledged else 0,
                "last_run_id": last.run_id if last else None,
            }
        )
    return found


def history(store: Store, job: str, user_id: str) -> dict[str, Any]:
    """A user's timeline: every run that changed them, and what the destination acknowledged last."""
    acknowledged = store.acknowledged(job, user_id)
    timeline = [
        {f: record[f] for f in (*HISTORY_FIELDS, "change")}
        for record in change_records(store, AuditFilter(job=job, user_id=user_id))
    ]
    return {
        "job": job,
        "user_id": user_id,
        "acknowledged": acknowledged[0] if acknowledged else {},
        "version": acknowledged[1] if acknowledged else 0,
        "timeline": timeline,
    }


# Per key of a job, kind and acknowledged size over the real runs before a run id.
SizesBefore = Callable[[str, int], Mapping[str, tuple[str, int]]]


def audiences(
    store: Store, job: str, recent: int | None = None, sizes_before: SizesBefore | None = None
) -> list[dict[str, Any]]:
    """Per key: acknowledged size now, entries and exits in every real run (zeros included), last change.

    ``recent``: only the newest that many runs in each key's ``runs`` (and ``last_change`` among them), the
    size still over every run: bounded reading for a page showing many jobs. ``sizes_before`` reads what the
    runs before those left (``store.key_sizes`` unless given: a caller may keep it, as that past is done)."""
    runs = store.run_times(job, recent or 1_000_000_000)
    since = runs[0].id if recent and runs else None
    counts: dict[int, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for row in store.run_keys(job, since=since):
        counts.setdefault(row.run_id, {})[row.key] = row
        kinds[row.key] = row.kind
    before: Mapping[str, tuple[str, int]] = {}
    if since is not None:
        before = (sizes_before or (lambda name, first: store.key_sizes(name, before=first)))(job, since)
    kinds.update({key: kind for key, (kind, _) in before.items() if key not in kinds})
    entries: dict[str, dict[str, Any]] = {}
    for key, kind in kinds.items():
        size = before[key][1] if key in before else 0
        entry: dict[str, Any] = {"key": key, "kind": kind, "size": size, "last_change": None, "runs": []}
        for run in runs:
            found = counts.get(run.id, {}).get(key)
            values: dict[str, int] = {f: getattr(found, f) if found else 0 for f in KEY_COUNTS}
            size += values["delivered_entered"] - values["delivered_exited"]
            if values["delivered_entered"] + values["delivered_exited"] + values["delivered_changed"]:
                entry["last_change"] = iso(run.finished_at or run.started_at)
            entry["runs"].append({"run_id": run.id, "started_at": iso(run.started_at), **values, "size": size})
        entry["size"] = size
        entries[key] = entry
    return sorted(entries.values(), key=lambda entry: (entry["kind"], entry["key"]))


def audience_table_row(entry: dict[str, Any], recent: int = 5) -> dict[str, Any]:
    runs = entry["runs"][-recent:]
    if entry["kind"] == "audience":
        trend = ", ".join(f"+{r['delivered_entered']}/-{r['delivered_exited']}" for r in runs)
    else:
        trend = ", ".join(f"~{r['delivered_changed']}" for r in runs)
    return {
        "key": entry["key"],
        "kind": entry["kind"],
        "size": entry["size"] if entry["kind"] == "audience" else "",
        "last_change": entry["last_change"] or "",
        f"last {len(runs)} runs (oldest first)": trend,
    }


def rebuild_update(row: RunUpdate) -> Update:
    changes = tuple(KeyChange(key, kind, old, new) for key, kind, old, new in json.loads(row.changes))
    return Update(row.user_id, row.message_id, changes, json.loads(row.profile), {})


def run_calls(
    store: Store, run_id: int, user_id: str | None = None, sent_only: bool = False
) -> Iterator[dict[str, Any]]:
    """The run's calls exactly as sent (or, for a dry run, as they would have been): rendered again from each
    update with the run's own call spec, so the same messageIds, timestamp and sentAt. ``sent_only``: only
    the updates that were sent."""
    run = run_or_fail(store, run_id)
    spec = CallSpec.from_json(run.calls, spec_before_specs(run.space_id))
    for row in store.updates_of(run_id, user_id):
        if sent_only and row.sent_at is None:
            continue
        yield from render(rebuild_update(row), spec, timestamp=run.started_at, sent_at=row.sent_at)


def run_messages(
    store: Store, run_id: int, user_id: str | None = None, calls: bool = False
) -> Generator[dict[str, Any]]:
    """What the destination received in a run, as it received it (a dry run: what it would have received).

    - the ChartMogul webhook: each Send Contact or Send Customer body, after the job's mappings;
    - ChartMogul's API: each request made (``method``, ``path``, ``body``), lookups included, per subject;
    - Segment: the calls inside the batches;
    - ``calls``, or a run recorded before runs kept their job's definition: the Segment-spec calls each
      update rendered to.

    Updates that were never sent (refused before sending, or still pending) are left out of a real run's."""
    run = run_or_fail(store, run_id)
    definition = json.loads(run.definition) if run.definition else None
    kind = definition["destination"].get("type", "chartmogul") if definition else None
    if calls or kind in (None, "segment"):
        yield from run_calls(store, run_id, user_id, sent_only=not run.dry_run)
    elif kind == "chartmogul_api":
        for row in store.updates_of(run_id, user_id):
            for method, path, body in json.loads(row.requests or "[]"):
                yield {
                    "user_id": row.user_id,
                    "message_id": row.message_id,
                    "method": method,
                    "path": path,
                    "body": json.loads(body) if body else None,
                }
    else:
        assert definition is not None
        mappings = MappingsConfig.model_validate(definition["destination"].get("mappings") or {})
        for call in run_calls(store, run_id, user_id, sent_only=not run.dry_run):
            try:
                yield json.loads(encode_body(call, mappings))
            except PermanentDeliveryError:
                continue  # refused before sending: nothing was received


def prune_job(store: Store, job: JobConfig | JobOutline, now: datetime, days: int | None = None) -> int:
    """Remove the job's per-update rows older than its retention (or ``days``, at least one)."""
    keep = job.audit_retention_days if days is None else days
    if keep < 1:
        raise SyncError(f"job {job.name!r}: audit rows are kept at least one day (asked: {keep})")
    return store.prune(job.name, now - timedelta(days=keep))
