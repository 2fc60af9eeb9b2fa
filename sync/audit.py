"""What a run changed and sent, read back from the state store for ``diff``, ``messages`` and ``runs``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sync.errors import SyncError
from sync.messages import KeyChange, Update, identify_call, iso
from sync.store import Store
from sync.store.models import Run, RunUpdate

RUN_FIELDS = (
    "run_id",
    "job",
    "kind",
    "status",
    "started_at",
    "finished_at",
    "users",
    "entered",
    "exited",
    "traits_changed",
    "updates",
    "delivered",
    "failed",
    "skipped_rows",
    "error",
)
CHANGE_FIELDS = ("user_id", "key", "old", "new", "message_id", "status", "http_status", "error")


def run_or_fail(store: Store, run_id: int) -> Run:
    run = store.run(run_id)
    if run is None:
        raise SyncError(f"no run with id {run_id} in the state store")
    return run


def run_record(run: Run) -> dict[str, Any]:
    kind = f"{run.kind} (dry run)" if run.dry_run else run.kind
    return {
        "run_id": run.id,
        "job": run.job,
        "kind": kind,
        "status": run.status,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at) if run.finished_at else None,
        "users": run.users,
        "entered": run.entered,
        "exited": run.exited,
        "traits_changed": run.traits_changed,
        "updates": run.updates,
        "delivered": run.delivered,
        "failed": run.failed,
        "skipped_rows": run.skipped_rows,
        "error": run.error,
        "issues": json.loads(run.issues) if run.issues else [],
    }


def change_records(
    store: Store, run_id: int, user_id: str | None = None, key: str | None = None
) -> Iterator[dict[str, Any]]:
    run_or_fail(store, run_id)
    for change in store.changes_of(run_id, user_id, key):
        yield {
            "user_id": change.user_id,
            "key": change.key,
            "old": change.old,
            "new": change.new,
            "message_id": change.message_id,
            "status": change.status,
            "http_status": change.http_status,
            "error": change.error,
        }


def rebuild_update(row: RunUpdate) -> Update:
    changes = tuple(KeyChange(key, kind, old, new) for key, kind, old, new in json.loads(row.changes))
    return Update(row.user_id, row.message_id, changes, json.loads(row.profile), {})


def identify_calls(store: Store, run_id: int, user_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The run's identify calls exactly as built: same messageId, timestamp and sentAt."""
    run = run_or_fail(store, run_id)
    for row in store.updates_of(run_id, user_id):
        yield identify_call(rebuild_update(row), space_id=run.space_id, timestamp=run.started_at, sent_at=row.sent_at)
