"""Runs of the state store: each run, its counts and per-key counts, and what the history says of a job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Row,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from sync.errors import StoreError
from sync.model import KEY_COUNTS, RECONCILE_KIND, RUN_COUNTS
from sync.store.common import dumps
from sync.store.models import (
    FullResync,
    Installation,
    Run,
    RunKey,
    RunUpdate,
)

# Update statuses that the next run sends again.
_UNDELIVERED = ("failed", "pending")
# Run statuses that delivered nothing; repeated ones make a job FAILING.
TROUBLE = ("failed", "blocked")


def _syncs(job: str) -> tuple[Any, ...]:
    """The runs of ``job`` that synced: not dry runs, not reconciliations (which send nothing)."""
    return (Run.job == job, Run.dry_run.is_(False), Run.kind != RECONCILE_KIND)


class RunStore:
    """The runs of each job and what they add up to."""

    engine: Engine

    def start_run(
        self,
        job: str,
        kind: str,
        dry_run: bool,
        now: datetime,
        space_id: str | None = None,
        trigger: str = "manual",
        calls: str | None = None,
        definition: Mapping[str, Any] | None = None,
    ) -> int:
        with Session(self.engine) as session, session.begin():
            run = Run(
                job=job,
                kind=kind,
                dry_run=dry_run,
                status="running",
                started_at=now,
                space_id=space_id,
                trigger=trigger,
                calls=calls,
                definition=dumps(definition) if definition is not None else None,
                **dict.fromkeys(RUN_COUNTS, 0),
            )
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: Mapping[str, int],
        now: datetime,
        error: str | None = None,
        issues: Sequence[Mapping[str, Any]] = (),
        phases: Mapping[str, float] | None = None,
        guard: Sequence[str] | None = None,
    ) -> None:
        """The run's end: its status, counts and error, the phases it went through with their seconds, and
        what the mass-change guard found (None: the guard did not look)."""
        undelivered = (
            select(func.count())
            .select_from(RunUpdate)
            .where(RunUpdate.run_id == run_id, RunUpdate.status.in_(_UNDELIVERED))
            .scalar_subquery()
        )
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    undelivered=undelivered,
                    status=status,
                    finished_at=now,
                    error=error,
                    issues=dumps(list(issues)) if issues else None,
                    phases=dumps([[name, round(seconds, 3)] for name, seconds in phases.items()]) if phases else None,
                    guard=dumps(list(guard)) if guard is not None else None,
                    **{k: v for k, v in counts.items() if k in RUN_COUNTS},
                )
            )

    def set_watermark(self, run_id: int, watermark: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(update(Run).where(Run.id == run_id).values(watermark=watermark))

    def unwritten_runs(self, job: str, limit: int) -> list[Run]:
        """The job's finished runs whose row and changes are not in the warehouse yet, newest first."""
        query = (
            select(Run)
            .where(Run.job == job, Run.finished_at.is_not(None), Run.written_back.is_(None))
            .order_by(Run.id.desc())
            .limit(limit)
        )
        with Session(self.engine) as session:
            return list(session.scalars(query))

    def set_written_back(self, run_id: int, at: datetime | None, error: str | None = None) -> None:
        """A write-back of the run done (``at``), or failed (``error``: the next run writes it again)."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(Run).where(Run.id == run_id).values(written_back=at, writeback_error=error))

    def record_alerts(self, run_id: int, texts: Sequence[str]) -> None:
        """The alerts a run's end sent, as their texts."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(Run).where(Run.id == run_id).values(alerts=dumps(list(texts))))

    def start_full_resync(self, job: str, run_id: int, now: datetime) -> None:
        """A full resync of ``job`` begins with run ``run_id``; one unfinished before is given up."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(FullResync).where(FullResync.job == job))
            session.add(FullResync(job=job, run_id=run_id, started_at=now, remaining=0))

    def full_resync(self, job: str) -> FullResync | None:
        """The job's unfinished full resync, if any."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(FullResync, job)

    def resynced(self, job: str, since_run_id: int) -> set[str]:
        """Subjects a full resync begun by run ``since_run_id`` has delivered (or found no record for)."""
        query = (
            select(RunUpdate.user_id)
            .join(Run, Run.id == RunUpdate.run_id)
            .where(*_syncs(job), Run.id >= since_run_id)
            .where(RunUpdate.status.in_(("delivered", "unmatched")))
        )
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def settle_full_resync(self, job: str, remaining: int) -> None:
        """After a run of a full resync: finished when nothing is left, else what is left to deliver."""
        with Session(self.engine) as session, session.begin():
            if remaining:
                session.execute(update(FullResync).where(FullResync.job == job).values(remaining=remaining))
            else:
                session.execute(delete(FullResync).where(FullResync.job == job))

    def record_run_keys(self, run_id: int, counts: Mapping[tuple[str, str], Mapping[str, int]]) -> None:
        """Per-key counts of a run (planned and acknowledged), replacing any recorded before."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(RunKey).where(RunKey.run_id == run_id))
            session.add_all(
                RunKey(run_id=run_id, key=key, kind=kind, **{f: values.get(f, 0) for f in KEY_COUNTS})
                for (key, kind), values in counts.items()
            )

    def run_keys(self, job: str, since: int | None = None) -> list[Row[Any]]:
        """The per-key counts of every real run of a job (from run ``since`` on, if given), oldest first: rows
        with ``run_id``, ``key``, ``kind`` and the counts (``KEY_COUNTS``), read without building objects."""
        columns = [RunKey.run_id, RunKey.key, RunKey.kind, *(getattr(RunKey, name) for name in KEY_COUNTS)]
        query = (
            select(*columns).join(Run, RunKey.run_id == Run.id).where(*_syncs(job)).order_by(RunKey.run_id, RunKey.key)
        )
        if since is not None:
            query = query.where(RunKey.run_id >= since)  # a range of the key table's primary key
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def run_times(self, job: str, limit: int) -> list[Row[Any]]:
        """The newest ``limit`` real runs (not dry, not skipped) of a job, oldest first: ``id``,
        ``started_at`` and ``finished_at`` only (a chart's x axis)."""
        query = (
            select(Run.id, Run.started_at, Run.finished_at)
            .where(*_syncs(job), Run.status != "skipped")
            .order_by(Run.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return list(reversed(list(connection.execute(query))))

    def run_started(self, run_id: int) -> datetime | None:
        with self.engine.connect() as connection:
            return connection.execute(select(Run.started_at).where(Run.id == run_id)).scalar()

    def key_sizes(self, job: str, before: int) -> dict[str, tuple[str, int]]:
        """Per key of a job: its kind and its acknowledged size (entries less exits) over the real runs
        before run ``before``."""
        net = func.sum(RunKey.delivered_entered - RunKey.delivered_exited)
        query = (
            select(RunKey.key, func.max(RunKey.kind), net)
            .join(Run, RunKey.run_id == Run.id)
            .where(*_syncs(job))
            .where(RunKey.run_id < before)
            .group_by(RunKey.key)
        )
        with Session(self.engine) as session:
            return {key: (kind, int(size or 0)) for key, kind, size in session.execute(query)}

    def runs_before(self, job: str, before: int) -> int:
        """How many runs of a job are older than run ``before``: a cheap fingerprint of the finished past."""
        query = select(func.count()).select_from(Run).where(Run.job == job, Run.id < before)
        with Session(self.engine) as session:
            return int(session.scalar(query) or 0)

    def installation_id(self) -> str:
        """This installation's id, made with the store (migration 0008)."""
        with Session(self.engine) as session:
            found = session.scalar(select(Installation.id).limit(1))
        if found is None:
            raise StoreError("the state store has no installation id; run `audience-sync migrate`")
        return found

    def run(self, run_id: int) -> Run | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Run, run_id)

    def runs(
        self,
        job: str | None = None,
        limit: int = 50,
        statuses: Sequence[str] = (),
        trigger: str | None = None,
        before: int | None = None,
    ) -> list[Run]:
        """Runs newest first, of one job or all, with one of ``statuses``, started by ``trigger`` and older than
        run ``before`` if given."""
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if before is not None:
            query = query.where(Run.id < before)
        if job:
            query = query.where(Run.job == job)
        if statuses:
            query = query.where(Run.status.in_(statuses))
        if trigger:
            query = query.where(Run.trigger == trigger)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def mark_interrupted(self, job: str, now: datetime, keep: int | None = None) -> int:
        """Runs of ``job`` still marked running (their process died) become ``interrupted``."""
        with Session(self.engine) as session, session.begin():
            query = update(Run).where(Run.job == job, Run.status == "running")
            if keep is not None:
                query = query.where(Run.id != keep)
            note = "the process running it stopped before it finished"
            marked = query.values(status="interrupted", finished_at=now, error=note).returning(Run.id)
            return len(session.execute(marked).all())

    def last_run(self, job: str, statuses: Sequence[str] | None = None) -> Run | None:
        """The newest real run of a job (one that synced: not dry, not a reconciliation, not skipped), optionally
        with one of ``statuses``."""
        query = select(Run).where(*_syncs(job), Run.status != "skipped")
        if statuses is not None:
            query = query.where(Run.status.in_(statuses))
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(query.order_by(Run.id.desc()).limit(1)).first()

    def consecutive_failures(self, job: str, limit: int = 100, statuses: Sequence[str] = TROUBLE) -> int:
        """Real runs in a row, newest first, that ended with one of ``statuses`` (by default failed or
        blocked: runs that delivered nothing)."""
        query = (
            select(Run.status)
            .where(*_syncs(job), Run.status != "skipped", Run.status != "running")
            .order_by(Run.id.desc())
            .limit(limit)
        )
        count = 0
        with self.engine.connect() as connection:
            for (status,) in connection.execute(query):
                if status not in statuses:
                    break
                count += 1
        return count

    def pending_updates(self, job: str) -> int:
        """Updates the last run that planned did not deliver: the next run sends them again."""
        last = self._last_planned_run(job)
        if last is None or last.status == "succeeded":
            return 0
        if last.status == "blocked":
            return last.updates
        if last.undelivered is not None:  # counted when it ended; its updates do not change after that
            return last.undelivered
        query = select(func.count()).select_from(RunUpdate).where(RunUpdate.run_id == last.id)
        with self.engine.connect() as connection:
            return int(connection.execute(query.where(RunUpdate.status.in_(_UNDELIVERED))).scalar_one())

    def undelivered(self, job: str) -> list[RunUpdate]:
        """The updates of the last run that planned which were not delivered (being retried, or not sent)."""
        last = self._last_planned_run(job)
        if last is None or last.status in ("succeeded", "blocked"):
            return []
        query = select(RunUpdate).where(RunUpdate.run_id == last.id, RunUpdate.status.in_(_UNDELIVERED))
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query.order_by(RunUpdate.user_id)))

    def _last_planned_run(self, job: str, look_back: int = 20) -> Run | None:
        """The newest real run that got as far as a plan: succeeded, blocked (it recorded no update rows but
        counted what it planned), or one with update rows. A run that failed before planning (the warehouse
        was down) is passed over for the one before it."""
        runs = (
            select(Run)
            .where(*_syncs(job), Run.status.not_in(("skipped", "running")))
            .order_by(Run.id.desc())
            .limit(look_back)
        )
        has_rows = select(RunUpdate.id).where(RunUpdate.run_id == bindparam("run_id")).limit(1)
        with Session(self.engine, expire_on_commit=False) as session:
            for run in session.scalars(runs):
                if run.status in ("succeeded", "blocked"):
                    return run
                if session.execute(has_rows, {"run_id": run.id}).first() is not None:
                    return run
        return None

    def recent_user_counts(self, job: str, count: int, before_run: int | None = None) -> list[int]:
        """Snapshot sizes of the job's last completed runs (succeeded or partial), newest first."""
        query = select(Run.users).where(*_syncs(job), Run.status.in_(("succeeded", "partial")))
        if before_run is not None:
            query = query.where(Run.id < before_run)
        with self.engine.connect() as connection:
            return [int(n) for n in connection.execute(query.order_by(Run.id.desc()).limit(count)).scalars()]

    def job_names(self) -> list[str]:
        """Every job the state store has runs of."""
        with self.engine.connect() as connection:
            return list(connection.execute(select(Run.job).distinct().order_by(Run.job)).scalars())
