"""The audit trail: every planned and sent update of every run, read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Session

from sync.store import dialect
from sync.store.models import (
    FailedUpdate,
    Run,
    RunUpdate,
)

# Rows fetched at a time when streaming the audit trail.
_STREAM = 5000


@dataclass(frozen=True)
class AuditFilter:
    run_id: int | None = None
    job: str | None = None
    user_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None  # planned, pending, delivered, failed, unmatched or dead
    include_dry_runs: bool = False


@dataclass(frozen=True)
class AuditRow:
    run_id: int
    job: str
    run_kind: str
    run_started_at: datetime
    user_id: str
    message_id: str
    changes: str  # JSON [[key, kind, old, new], ...]
    status: str
    http_status: int | None
    attempts: int
    error: str | None
    sent_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class ChangeRow:
    """One (user, key) of a run, as ``audience-sync diff`` lists it."""

    user_id: str
    key: str
    old: Any
    new: Any
    message_id: str
    status: str
    http_status: int | None
    error: str | None


def _audit_conditions(filters: AuditFilter, status: Any) -> list[Any]:
    conditions: list[Any] = []
    if filters.run_id is not None:
        conditions.append(RunUpdate.run_id == filters.run_id)
    elif not filters.include_dry_runs:
        conditions.append(Run.dry_run.is_(False))
    if filters.job is not None:
        conditions.append(Run.job == filters.job)
    if filters.user_id is not None:
        conditions.append(RunUpdate.user_id == filters.user_id)
    if filters.since is not None:
        conditions.append(Run.started_at >= filters.since)
    if filters.until is not None:
        conditions.append(Run.started_at < filters.until)
    if filters.status is not None:
        conditions.append(status == filters.status)
    return conditions


class AuditStore:
    """The per-update audit trail."""

    engine: Engine

    def updates_of(self, run_id: int, user_id: str | None = None) -> Iterator[RunUpdate]:
        query = select(RunUpdate).where(RunUpdate.run_id == run_id).order_by(RunUpdate.id)
        if user_id is not None:
            query = query.where(RunUpdate.user_id == user_id)
        with Session(self.engine) as session:
            rows = session.scalars(query.execution_options(yield_per=1000))
            try:
                for row in rows:
                    session.expunge(row)
                    yield row
            finally:  # a reader that stops early (a page is full) ends the server-side cursor now
                rows.close()

    def update_counts(self, run_id: int) -> dict[str, int]:
        """A run's updates by status, as recorded so far (a run still sending records them as answers come)."""
        query = select(RunUpdate.status, func.count()).where(RunUpdate.run_id == run_id).group_by(RunUpdate.status)
        with self.engine.connect() as connection:
            return {status: int(count) for status, count in connection.execute(query)}

    def updates_for(self, job: str, user_id: str, limit: int) -> list[RunUpdate]:
        """A subject's newest updates in a job, newest first."""
        query = (
            select(RunUpdate)
            .join(Run, Run.id == RunUpdate.run_id)
            .where(Run.job == job, RunUpdate.user_id == user_id)
            .order_by(RunUpdate.run_id.desc())
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def changes_of(self, run_id: int, user_id: str | None = None, key: str | None = None) -> Iterator[ChangeRow]:
        """The run's changes, one per (user, key)."""
        for row in self.updates_of(run_id, user_id):
            for change_key, _kind, old, new in json.loads(row.changes):
                if key is None or change_key == key:
                    yield ChangeRow(
                        row.user_id,
                        change_key,
                        old,
                        new,
                        row.message_id,
                        row.status,
                        row.http_status,
                        row.error,
                    )

    def audit_rows(self, filters: AuditFilter) -> Iterator[AuditRow]:
        """Updates with their run, newest run last, streamed from the database in bounded memory."""
        query = self._audit_query(filters).order_by(RunUpdate.run_id, RunUpdate.id)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=_STREAM).execute(query)
            for row in result:
                yield AuditRow(*row[1:])

    def run_update_rows(self, run_id: int, job: str) -> Iterator[list[tuple[Any, ...]]]:
        """The run's updates as plain tuples (``user_id, message_id, changes, status, http_status, error,
        finished_at``), in batches of ``_STREAM``, through the driver's own cursor (a server-side one on
        PostgreSQL): the sync log reads a million of them, and a row object each would double its time."""
        params = {"job": job, "run_id": run_id}
        with self.engine.connect() as connection:
            driver: Any = connection.connection.driver_connection
            postgresql = dialect.is_postgresql(self.engine)
            cursor = driver.cursor(name="run_update_rows") if postgresql else driver.cursor()
            try:
                cursor.execute(dialect.run_update_rows_sql(self.engine), params)
                while batch := cursor.fetchmany(_STREAM):
                    yield batch
            finally:
                cursor.close()
                if postgresql:
                    driver.rollback()

    def audit_page(
        self, filters: AuditFilter, after: int, limit: int, key: str | None = None
    ) -> list[tuple[int, AuditRow]]:
        """Up to ``limit`` updates after the update ``after`` (its id), in id order, each with its id: a page
        read through the primary key, as fast at the millionth row as at the first. With ``key``, only updates
        whose changes may hold it (a text match the caller confirms)."""
        query = self._audit_query(filters).where(RunUpdate.id > after).order_by(RunUpdate.id).limit(limit)
        if key is not None:
            query = query.where(RunUpdate.changes.contains(json.dumps(key)))
        with self.engine.connect() as connection:
            return [(row[0], AuditRow(*row[1:])) for row in connection.execute(query)]

    def _audit_query(self, filters: AuditFilter) -> Any:
        dead = and_(FailedUpdate.dead.is_(True), FailedUpdate.message_id == RunUpdate.message_id)
        status = case((dead, "dead"), else_=RunUpdate.status)
        query = (
            select(
                RunUpdate.id,
                RunUpdate.run_id,
                Run.job,
                Run.kind,
                Run.started_at,
                RunUpdate.user_id,
                RunUpdate.message_id,
                RunUpdate.changes,
                status,
                RunUpdate.http_status,
                RunUpdate.attempts,
                RunUpdate.error,
                RunUpdate.sent_at,
                RunUpdate.finished_at,
            )
            .join(Run, Run.id == RunUpdate.run_id)
            .outerjoin(FailedUpdate, and_(FailedUpdate.job == Run.job, FailedUpdate.user_id == RunUpdate.user_id))
        )
        for condition in _audit_conditions(filters, status):
            query = query.where(condition)
        return query

    def failure_reasons(self, job: str, limit: int = 10) -> list[tuple[str | None, int | None, int, datetime | None]]:
        """The most frequent reasons updates of the job failed: (reason, HTTP status, updates, last seen)."""
        count = func.count().label("updates")
        query = (
            select(RunUpdate.error, RunUpdate.http_status, count, func.max(RunUpdate.finished_at))
            .join(Run, Run.id == RunUpdate.run_id)
            .where(Run.job == job, RunUpdate.status == "failed")
            .group_by(RunUpdate.error, RunUpdate.http_status)
            .order_by(count.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()  # max() keeps the column's type: aware UTC datetimes
        return [(error, status, int(n), last) for error, status, n, last in rows]

    def undelivered_of(self, run_id: int, limit: int) -> list[RunUpdate]:
        """Up to ``limit`` updates of a run that were not delivered (failed, or refused as unmatched)."""
        query = (
            select(RunUpdate)
            .where(RunUpdate.run_id == run_id, RunUpdate.status.in_(("failed", "unmatched")))
            .order_by(RunUpdate.id)
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def run_failure_reasons(self, run_id: int, limit: int = 10) -> list[tuple[str | None, int | None, int]]:
        """Why a run's updates failed, most frequent first: (reason, HTTP status, updates)."""
        count = func.count().label("updates")
        query = (
            select(RunUpdate.error, RunUpdate.http_status, count)
            .where(RunUpdate.run_id == run_id, RunUpdate.status == "failed")
            .group_by(RunUpdate.error, RunUpdate.http_status)
            .order_by(count.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [(error, status, int(n)) for error, status, n in connection.execute(query)]

    def prune(self, job: str, before: datetime) -> int:
        """Delete the per-update rows of the job's runs that started before ``before``; runs, their per-key
        counts, the acknowledged state and the failed-update records stay. Returns how many rows went."""
        old_runs = select(Run.id).where(Run.job == job, Run.started_at < before).scalar_subquery()
        with Session(self.engine) as session, session.begin():
            gone = session.execute(delete(RunUpdate).where(RunUpdate.run_id.in_(old_runs)).returning(RunUpdate.id))
            return len(gone.all())
