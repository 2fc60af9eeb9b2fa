"""What coordinates processes and operators: a job's lease, its schedule controls and its alert state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from sync.store import dialect
from sync.store.models import (
    JobAlert,
    JobLease,
    JobSchedule,
    SchedulerBeat,
)


class ControlStore:
    """Leases, schedules and alert state."""

    engine: Engine

    def acquire_lease(self, job: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        """Take the job's lease if it is free or expired; False when another holder's lease is live."""
        values = {"owner": owner, "run_id": None, "acquired_at": now, "heartbeat_at": now, "expires_at": now + ttl}
        with Session(self.engine) as session, session.begin():
            insert_ = (
                dialect.insert(self.engine, JobLease)
                .values(job=job, **values)
                .on_conflict_do_nothing(index_elements=["job"])
            )
            if session.execute(insert_.returning(JobLease.job)).first() is not None:
                return True
            # An expired lease, or our own left behind by a run of this process that could not release it.
            free = or_(JobLease.expires_at < now, JobLease.owner == owner)
            take = update(JobLease).where(JobLease.job == job, free).values(**values)
            return session.execute(take.returning(JobLease.job)).first() is not None

    def take_over_lease(self, job: str, holder: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        """Take the lease from ``holder`` (known to be dead), unless someone else took it meanwhile."""
        values = {"owner": owner, "run_id": None, "acquired_at": now, "heartbeat_at": now, "expires_at": now + ttl}
        with Session(self.engine) as session, session.begin():
            take = update(JobLease).where(JobLease.job == job, JobLease.owner == holder).values(**values)
            return session.execute(take.returning(JobLease.job)).first() is not None

    def renew_lease(self, job: str, owner: str, now: datetime, ttl: timedelta, run_id: int | None = None) -> bool:
        """Extend our lease; False when it is no longer ours (it expired and was taken over)."""
        values: dict[str, Any] = {"heartbeat_at": now, "expires_at": now + ttl}
        if run_id is not None:
            values["run_id"] = run_id
        with Session(self.engine) as session, session.begin():
            renew = update(JobLease).where(JobLease.job == job, JobLease.owner == owner).values(**values)
            return session.execute(renew.returning(JobLease.job)).first() is not None

    def release_lease(self, job: str, owner: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(delete(JobLease).where(JobLease.job == job, JobLease.owner == owner))

    def lease(self, job: str) -> JobLease | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(JobLease, job)

    def schedule(self, job: str) -> JobSchedule | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(JobSchedule, job)

    def update_schedule(self, job: str, now: datetime, **values: Any) -> None:
        """Set ``next_run_at``, ``paused`` or ``skip_next`` for a job (a new row takes the model's defaults
        for the others)."""
        self._put(JobSchedule, job, {**values, "updated_at": now})

    def scheduler_beat(self, owner: str, host: str, pid: int, jobs: Sequence[str], now: datetime) -> None:
        """A scheduler says it is alive (its first beat registers it)."""
        row = {"host": host, "pid": pid, "jobs": json.dumps(list(jobs)), "seen_at": now}
        upsert = dialect.insert(self.engine, SchedulerBeat).values(owner=owner, started_at=now, **row)
        with self.engine.begin() as connection:
            connection.execute(upsert.on_conflict_do_update(index_elements=["owner"], set_=row))

    def scheduler_gone(self, owner: str) -> None:
        """A scheduler stopped cleanly."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(SchedulerBeat).where(SchedulerBeat.owner == owner))

    def schedulers(self) -> list[SchedulerBeat]:
        """Every scheduler that beat and did not stop cleanly, the most recently seen first."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(SchedulerBeat).order_by(SchedulerBeat.seen_at.desc())))

    def alert_state(self, job: str) -> list[str]:
        """The alert conditions the job is in, as last announced."""
        with self.engine.connect() as connection:
            text = connection.execute(select(JobAlert.conditions).where(JobAlert.job == job)).scalar_one_or_none()
        return list(json.loads(text)) if text else []

    def set_alert_state(self, job: str, conditions: Sequence[str], now: datetime, run_id: int) -> None:
        self._put(JobAlert, job, {"conditions": json.dumps(list(conditions)), "since": now, "run_id": run_id})

    def _put(self, model: type[JobSchedule] | type[JobAlert], job: str, row: dict[str, Any]) -> None:
        """Insert the job's row or update the columns of ``row`` in it, in one statement: workers starting
        together plan the same new job at the same moment, and a read then an insert could lose to another's
        insert."""
        upsert = dialect.insert(self.engine, model).values(job=job, **row)
        with self.engine.begin() as connection:
            connection.execute(upsert.on_conflict_do_update(index_elements=["job"], set_=row))
