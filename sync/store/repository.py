"""Reading and writing the state store. Every method is one transaction.

The acknowledged state of a user changes only in ``record_results``, in the same transaction as the
audit row of the update the destination acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from sync.config import redact_url
from sync.destinations.base import DeliveryResult
from sync.destinations.outcomes import is_rejection
from sync.engine import SCHEME, stored_table
from sync.errors import StoreError
from sync.model import KEY_COUNTS, RUN_COUNTS, Computation, Update
from sync.store.models import (
    AckState,
    FailedUpdate,
    FingerprintIndex,
    Installation,
    JobAlert,
    JobKey,
    JobLease,
    JobSchedule,
    Run,
    RunKey,
    RunUpdate,
)
from sync.store.schema import ensure_schema

# Rows per INSERT/UPDATE statement: keeps SQLite under its bound-parameter limit.
_CHUNK = 500
# Values of one IN list when reading states back: under SQLite's 32,766 and PostgreSQL's 65,535 parameters.
_IN_CHUNK = 5000
# Rows of (user_id, fingerprint) read from the driver at a time.
_FETCH = 100_000
# Users per part of the fingerprint index (a part is one Parquet blob of about 20 MB).
_INDEX_PART = 1_000_000
# Rows fetched at a time when streaming the audit trail.
_STREAM = 5000
# Update statuses that the next run sends again.
_UNDELIVERED = ("failed", "pending")
# Run statuses that delivered nothing; repeated ones make a job FAILING.
TROUBLE = ("failed", "blocked")


@dataclass(frozen=True)
class Baseline:
    """The acknowledged state of a job: a wide frame like a snapshot's, each user's version and each user's
    last acknowledged profile (as stored JSON, read from the same row; ``profile`` decodes one)."""

    state: pd.DataFrame
    versions: Mapping[str, int]
    profiles: Mapping[str, str]

    def profile(self, user_id: str) -> dict[str, str] | None:
        stored = self.profiles.get(user_id)
        return None if stored is None else cast(dict[str, str], orjson.loads(stored))


@dataclass(frozen=True)
class AuditFilter:
    run_id: int | None = None
    job: str | None = None
    user_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None  # planned, pending, delivered, failed or dead
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


def _dumps(value: object) -> str:
    """Compact JSON with sorted keys; orjson, because runs write tens of thousands of these at a time."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """Connect, check the schema and bring it up to date; StoreError when that is not possible."""
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            ensure_schema(engine, upgrade=upgrade)
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot use the state store {redact_url(url)}: {store_reason(exc)}") from None
        except StoreError:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def label(self) -> str:
        return redact_url(self.engine.url.render_as_string(hide_password=False))

    # Runs --------------------------------------------------------------------------------------------------

    def start_run(
        self,
        job: str,
        kind: str,
        dry_run: bool,
        now: datetime,
        space_id: str | None = None,
        trigger: str = "manual",
        calls: str | None = None,
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
    ) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    status=status,
                    finished_at=now,
                    error=error,
                    issues=_dumps(list(issues)) if issues else None,
                    **{k: v for k, v in counts.items() if k in RUN_COUNTS},
                )
            )

    def record_run_keys(self, run_id: int, counts: Mapping[tuple[str, str], Mapping[str, int]]) -> None:
        """Per-key counts of a run (planned and acknowledged), replacing any recorded before."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(RunKey).where(RunKey.run_id == run_id))
            session.add_all(
                RunKey(run_id=run_id, key=key, kind=kind, **{f: values.get(f, 0) for f in KEY_COUNTS})
                for (key, kind), values in counts.items()
            )

    def run_keys(self, job: str) -> list[tuple[Run, RunKey]]:
        """Every real run of a job with its per-key counts, oldest first."""
        query = (
            select(Run, RunKey)
            .join(RunKey, RunKey.run_id == Run.id)
            .where(Run.job == job, Run.dry_run.is_(False))
            .order_by(Run.id, RunKey.key)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return [(run, key) for run, key in session.execute(query)]

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

    def runs(self, job: str | None = None, limit: int = 50) -> list[Run]:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if job:
            query = query.where(Run.job == job)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    # Tracked keys ------------------------------------------------------------------------------------------

    def tracked_keys(self, job: str) -> dict[str, str]:
        with Session(self.engine) as session:
            return {row.key: row.kind for row in session.scalars(select(JobKey).where(JobKey.job == job))}

    def set_tracked_keys(self, job: str, computations: Sequence[Computation], run_id: int) -> None:
        """Track exactly these keys from now on; a key dropped and later re-added gets a new initial sync."""
        with Session(self.engine) as session, session.begin():
            existing = {row.key: row for row in session.scalars(select(JobKey).where(JobKey.job == job))}
            wanted = {c.key for c in computations}
            for key in set(existing) - wanted:
                session.delete(existing[key])
            session.add_all(
                JobKey(job=job, key=c.key, kind=c.kind, since_run_id=run_id)
                for c in computations
                if c.key not in existing
            )

    # Acknowledged state ------------------------------------------------------------------------------------

    def load_baseline(
        self,
        job: str,
        computations: Sequence[Computation],
        tracked: Iterable[str],
        user_ids: Sequence[str] | None = None,
    ) -> Baseline:
        """The acknowledged state restricted to the tracked keys of ``computations``: of every user, or of
        ``user_ids`` only."""
        keys = [c.key for c in computations if c.key in set(tracked)]
        users: list[str] = []
        states: list[dict[str, Any]] = []
        versions: dict[str, int] = {}
        profiles: dict[str, str] = {}
        for user_id, state, version, profile in self._states(job, user_ids):
            users.append(user_id)
            states.append(orjson.loads(state))
            versions[user_id] = version
            profiles[user_id] = profile
        index = pd.Index(users, dtype=object, name="user_id")
        columns: dict[str, Any] = {}
        for computation in computations:
            if computation.key not in keys:
                continue
            values = [state.get(computation.key) for state in states]
            if computation.kind == "audience":
                columns[computation.key] = pd.Series([v is True for v in values], index=index, dtype=bool)
            else:
                columns[computation.key] = pd.Series(values, index=index, dtype=object)
        frame = pd.DataFrame(columns, index=index, columns=pd.Index(keys))
        return Baseline(frame, versions, profiles)

    def _states(self, job: str, user_ids: Sequence[str] | None) -> Iterator[tuple[str, str, int, str]]:
        query = select(AckState.user_id, AckState.state, AckState.version, AckState.profile).where(AckState.job == job)
        with self.engine.connect() as connection:
            if user_ids is None:
                yield from ((row[0], row[1], row[2], row[3]) for row in connection.execute(query))
                return
            for start in range(0, len(user_ids), _IN_CHUNK):
                chunk = list(user_ids[start : start + _IN_CHUNK])
                rows = connection.execute(query.where(AckState.user_id.in_(chunk)))
                yield from ((row[0], row[1], row[2], row[3]) for row in rows)

    def stored_fingerprints(self, job: str) -> pa.Table:
        """Every acknowledged user of the job with its fingerprint (``sync.engine.STORED_SCHEMA``).

        Read from the fingerprint index plus the rows written since it was made; fingerprints of another
        hash scheme come back as not known. Without an index, every row is read.
        """
        parts = self._index_parts(job)
        if not parts:
            return self._fingerprint_rows(job)
        index = pa.concat_tables([pq.read_table(pa.BufferReader(data)) for _, _, data in parts])
        since = self._fingerprint_rows(job, after_run=parts[0][1])
        if since.num_rows:
            fresh = pc.invert(pc.is_in(index.column("user_id"), value_set=since.column("user_id")))
            index = pa.concat_tables([index.filter(fresh), since])
        if parts[0][0] != SCHEME:
            index = index.set_column(2, "known", pa.array(np.zeros(index.num_rows, dtype=bool)))
        return index

    def _index_parts(self, job: str) -> list[tuple[str, int, bytes]]:
        query = (
            select(FingerprintIndex.scheme, FingerprintIndex.as_of_run, FingerprintIndex.data)
            .where(FingerprintIndex.job == job)
            .order_by(FingerprintIndex.part)
        )
        with self.engine.connect() as connection:
            return [(scheme, as_of, bytes(data)) for scheme, as_of, data in connection.execute(query)]

    def _fingerprint_rows(self, job: str, after_run: int | None = None) -> pa.Table:
        """(user_id, fingerprint) rows of ``ack_state``, all or those written after run ``after_run``."""
        query = select(AckState.user_id, AckState.fingerprint).where(AckState.job == job)
        if after_run is not None:
            query = query.where(AckState.run_id > after_run)
        compiled = query.compile(self.engine)
        pieces = []
        with self.engine.connect() as connection:  # the driver's cursor, in pieces: millions of rows
            result = connection.execution_options(stream_results=True, yield_per=_FETCH).exec_driver_sql(
                str(compiled), _positional(compiled, self.engine.dialect.paramstyle)
            )
            for rows in result.partitions(_FETCH):
                pieces.append(stored_table([row[0] for row in rows], [row[1] for row in rows]))
        return pa.concat_tables(pieces) if pieces else stored_table([], [])

    def index_fingerprints(self, job: str, run_id: int, *, share: float = 0.05) -> bool:
        """Rewrite the job's fingerprint index when it is missing, of another scheme, or when the rows
        written since it was made exceed ``share`` of it; run by the job's lease holder after a run.
        Returns whether it was rewritten."""
        with self.engine.connect() as connection:
            meta = connection.execute(
                select(FingerprintIndex.scheme, FingerprintIndex.as_of_run, func.sum(FingerprintIndex.rows))
                .where(FingerprintIndex.job == job)
                .group_by(FingerprintIndex.scheme, FingerprintIndex.as_of_run)
            ).first()
            if meta is not None and meta[0] == SCHEME:
                since = connection.execute(
                    select(func.count()).select_from(AckState).where(AckState.job == job, AckState.run_id > meta[1])
                ).scalar_one()
                if since <= share * int(meta[2] or 0):
                    return False
        table = self.stored_fingerprints(job) if meta is not None and meta[0] == SCHEME else self._fingerprint_rows(job)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(FingerprintIndex).where(FingerprintIndex.job == job))
            for part, start in enumerate(range(0, max(table.num_rows, 1), _INDEX_PART)):
                chunk = table.slice(start, _INDEX_PART)
                sink = pa.BufferOutputStream()
                pq.write_table(chunk, sink, compression="zstd")
                session.add(
                    FingerprintIndex(
                        job=job,
                        part=part,
                        scheme=SCHEME,
                        as_of_run=run_id,
                        rows=chunk.num_rows,
                        data=sink.getvalue().to_pybytes(),
                    )
                )
        return True

    def refresh_fingerprints(self, job: str, fingerprints: Sequence[tuple[str, int]], run_id: int) -> None:
        """Record fingerprints recomputed for unchanged acknowledged states (a key was removed, or none was
        recorded yet); the states themselves do not change."""
        with Session(self.engine) as session, session.begin():
            for start in range(0, len(fingerprints), _CHUNK):
                session.connection().execute(
                    _REFRESH_FINGERPRINT,
                    [
                        {"b_job": job, "b_user": user_id, "b_fingerprint": value, "b_run": run_id}
                        for user_id, value in fingerprints[start : start + _CHUNK]
                    ],
                )

    def has_state(self, job: str) -> bool:
        """Whether the job has any acknowledged state (cheaper than counting it)."""
        with self.engine.connect() as connection:
            return connection.execute(select(AckState.user_id).where(AckState.job == job).limit(1)).first() is not None

    def state_size(self, job: str) -> int:
        with self.engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(AckState).where(AckState.job == job))
            return int(count.scalar_one())

    def acknowledged(self, job: str, user_id: str) -> tuple[dict[str, Any], int] | None:
        """One user's acknowledged state and version, or None."""
        query = select(AckState.state, AckState.version).where(AckState.job == job, AckState.user_id == user_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return (json.loads(row[0]), int(row[1])) if row else None

    # Updates -----------------------------------------------------------------------------------------------

    def record_plan(self, run_id: int, updates: Iterable[Update], status: str) -> int:
        """Audit rows for a run's updates, ``planned`` (dry run) or ``pending`` (about to be sent)."""
        count = 0
        with self.engine.begin() as connection:  # Core executemany: no ORM bookkeeping per row
            for chunk in _chunks(updates, _CHUNK):
                connection.execute(
                    _outcomes.insert(),
                    [
                        {
                            "run_id": run_id,
                            "user_id": u.user_id,
                            "message_id": u.message_id,
                            "status": status,
                            "changes": _dumps([[c.key, c.kind, c.old, c.new] for c in u.changes]),
                            "profile": _dumps(u.profile),
                            "attempts": 0,
                        }
                        for u in chunk
                    ],
                )
                count += len(chunk)
        return count

    def record_results(
        self,
        job: str,
        run_id: int,
        results: Sequence[tuple[Update, DeliveryResult]],
        dead_after: int = 5,
        owner: str | None = None,
    ) -> bool:
        """Record delivery outcomes; advance the acknowledged state of every delivered user, atomically.

        Rejections of the record itself are counted per user in ``failed_updates``; a delivery clears them.
        With ``owner``, the state advances only while ``owner`` holds the job's lease (checked in the same
        transaction): a run that lost its lease records its answers but leaves the state to the run that
        took over, which sends those updates again with the same messageIds. Returns whether it advanced.
        """
        if not results:
            return True
        with self.engine.begin() as connection:  # Core statements built once: a run commits this often
            self._count_rejections(connection, job, run_id, [(u, r) for u, r in results if is_rejection(r)], dead_after)
            delivered = [u.user_id for u, r in results if r.delivered]
            if delivered and self._has_failures(connection, job):
                for start in range(0, len(delivered), _CHUNK):
                    chunk = delivered[start : start + _CHUNK]
                    connection.execute(
                        delete(FailedUpdate).where(FailedUpdate.job == job, FailedUpdate.user_id.in_(chunk))
                    )
            connection.execute(
                _RECORD_OUTCOME,
                [
                    {
                        "b_run": run_id,
                        "b_user": u.user_id,
                        "b_status": "delivered" if r.delivered else "failed",
                        "b_http": r.http_status,
                        "b_attempts": r.attempts,
                        "b_error": r.error,
                        "b_sent": r.sent_at,
                        "b_finished": r.finished_at,
                    }
                    for u, r in results
                ],
            )
            acknowledged = [(u, r) for u, r in results if r.delivered]
            if acknowledged and owner is not None and not self._holds_lease(connection, job, owner):
                return False
            if acknowledged:
                connection.execute(
                    self._state_upsert,
                    [
                        {
                            "job": job,
                            "user_id": u.user_id,
                            "state": _dumps(u.state),
                            "profile": _dumps(u.profile),
                            "version": 1,
                            "fingerprint": u.fingerprint,
                            "run_id": run_id,
                            "updated_at": r.finished_at,
                        }
                        for u, r in acknowledged
                    ],
                )
        return True

    def _holds_lease(self, connection: Connection, job: str, owner: str) -> bool:
        """Whether ``owner`` holds the job's lease; on PostgreSQL the lease row stays locked until commit,
        so that no one takes it over in between (SQLite's write lock, taken above, does the same)."""
        query = select(JobLease.owner).where(JobLease.job == job)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        return connection.execute(query).scalar() == owner

    @staticmethod
    def _has_failures(connection: Connection, job: str) -> bool:
        query = select(FailedUpdate.job).where(FailedUpdate.job == job).limit(1)
        return connection.execute(query).first() is not None

    def _count_rejections(
        self,
        connection: Connection,
        job: str,
        run_id: int,
        rejected: Sequence[tuple[Update, DeliveryResult]],
        dead_after: int,
    ) -> None:
        if not rejected:
            return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(FailedUpdate)
        same = FailedUpdate.message_id == statement.excluded.message_id
        runs = case((same, FailedUpdate.failed_runs + 1), else_=1)
        upsert = statement.on_conflict_do_update(
            index_elements=[FailedUpdate.job, FailedUpdate.user_id],
            set_={
                "message_id": statement.excluded.message_id,
                "failed_runs": runs,
                "dead": runs >= dead_after,
                "http_status": statement.excluded.http_status,
                "error": statement.excluded.error,
                "first_failed_at": case((same, FailedUpdate.first_failed_at), else_=statement.excluded.first_failed_at),
                "last_failed_at": statement.excluded.last_failed_at,
                "last_run_id": statement.excluded.last_run_id,
            },
        )
        connection.execute(
            upsert,
            [
                {
                    "job": job,
                    "user_id": u.user_id,
                    "message_id": u.message_id,
                    "failed_runs": 1,
                    "dead": dead_after <= 1,
                    "http_status": r.http_status,
                    "error": r.error,
                    "first_failed_at": r.finished_at,
                    "last_failed_at": r.finished_at,
                    "last_run_id": run_id,
                }
                for u, r in rejected
            ],
        )

    def failed_updates(self, job: str, dead_only: bool = False) -> list[FailedUpdate]:
        query = select(FailedUpdate).where(FailedUpdate.job == job).order_by(FailedUpdate.user_id)
        if dead_only:
            query = query.where(FailedUpdate.dead.is_(True))
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def parked(self, job: str) -> dict[str, str]:
        """user id → messageId of the dead updates that runs leave out."""
        query = select(FailedUpdate.user_id, FailedUpdate.message_id).where(
            FailedUpdate.job == job, FailedUpdate.dead.is_(True)
        )
        with self.engine.connect() as connection:
            return {user_id: message_id for user_id, message_id in connection.execute(query)}

    def revive(self, job: str) -> int:
        """Un-park the job's dead updates so that the next run sends them again; how many there were."""
        with Session(self.engine) as session, session.begin():
            revived = update(FailedUpdate).where(FailedUpdate.job == job, FailedUpdate.dead.is_(True))
            return len(session.execute(revived.values(dead=False, failed_runs=0).returning(FailedUpdate.user_id)).all())

    @cached_property
    def _state_upsert(self) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(_acked)
        return statement.on_conflict_do_update(
            index_elements=[_acked.c.job, _acked.c.user_id],
            set_={
                "state": statement.excluded.state,
                "profile": statement.excluded.profile,
                "version": _acked.c.version + 1,
                "fingerprint": statement.excluded.fingerprint,
                "run_id": statement.excluded.run_id,
                "updated_at": statement.excluded.updated_at,
            },
        )

    def updates_of(self, run_id: int, user_id: str | None = None) -> Iterator[RunUpdate]:
        query = select(RunUpdate).where(RunUpdate.run_id == run_id).order_by(RunUpdate.id)
        if user_id is not None:
            query = query.where(RunUpdate.user_id == user_id)
        with Session(self.engine) as session:
            for row in session.scalars(query.execution_options(yield_per=1000)):
                session.expunge(row)
                yield row

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

    # Leases: one run of a job at a time, across processes --------------------------------------------------

    def acquire_lease(self, job: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        """Take the job's lease if it is free or expired; False when another holder's lease is live."""
        values = {"owner": owner, "run_id": None, "acquired_at": now, "heartbeat_at": now, "expires_at": now + ttl}
        with Session(self.engine) as session, session.begin():
            dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
            insert_ = dialect.insert(JobLease).values(job=job, **values).on_conflict_do_nothing(index_elements=["job"])
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

    def mark_interrupted(self, job: str, now: datetime, keep: int | None = None) -> int:
        """Runs of ``job`` still marked running (their process died) become ``interrupted``."""
        with Session(self.engine) as session, session.begin():
            query = update(Run).where(Run.job == job, Run.status == "running")
            if keep is not None:
                query = query.where(Run.id != keep)
            note = "the process running it stopped before it finished"
            marked = query.values(status="interrupted", finished_at=now, error=note).returning(Run.id)
            return len(session.execute(marked).all())

    # Schedule and status ------------------------------------------------------------------------------------

    def schedule(self, job: str) -> JobSchedule | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(JobSchedule, job)

    def update_schedule(self, job: str, now: datetime, **values: Any) -> None:
        """Set ``next_run_at``, ``paused`` or ``skip_next`` for a job."""
        with Session(self.engine) as session, session.begin():
            row = session.get(JobSchedule, job)
            if row is None:
                row = JobSchedule(job=job, next_run_at=None, paused=False, skip_next=False, updated_at=now)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = now

    def last_run(self, job: str, statuses: Sequence[str] | None = None) -> Run | None:
        """The newest real (not dry, not skipped) run of a job, optionally with one of ``statuses``."""
        query = select(Run).where(Run.job == job, Run.dry_run.is_(False), Run.status != "skipped")
        if statuses is not None:
            query = query.where(Run.status.in_(statuses))
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(query.order_by(Run.id.desc()).limit(1)).first()

    def consecutive_failures(self, job: str, limit: int = 100, statuses: Sequence[str] = TROUBLE) -> int:
        """Real runs in a row, newest first, that ended with one of ``statuses`` (by default failed or
        blocked: runs that delivered nothing)."""
        query = (
            select(Run.status)
            .where(Run.job == job, Run.dry_run.is_(False), Run.status != "skipped", Run.status != "running")
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
            .where(Run.job == job, Run.dry_run.is_(False), Run.status.not_in(("skipped", "running")))
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

    def dead_count(self, job: str) -> int:
        query = select(func.count()).select_from(FailedUpdate)
        query = query.where(FailedUpdate.job == job, FailedUpdate.dead.is_(True))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def alert_state(self, job: str) -> list[str]:
        """The alert conditions the job is in, as last announced."""
        with self.engine.connect() as connection:
            text = connection.execute(select(JobAlert.conditions).where(JobAlert.job == job)).scalar_one_or_none()
        return list(json.loads(text)) if text else []

    def set_alert_state(self, job: str, conditions: Sequence[str], now: datetime, run_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            session.merge(JobAlert(job=job, conditions=json.dumps(list(conditions)), since=now, run_id=run_id))

    def recent_user_counts(self, job: str, count: int, before_run: int | None = None) -> list[int]:
        """Snapshot sizes of the job's last completed runs (succeeded or partial), newest first."""
        query = select(Run.users).where(
            Run.job == job, Run.dry_run.is_(False), Run.status.in_(("succeeded", "partial"))
        )
        if before_run is not None:
            query = query.where(Run.id < before_run)
        with self.engine.connect() as connection:
            return [int(n) for n in connection.execute(query.order_by(Run.id.desc()).limit(count)).scalars()]

    def job_names(self) -> list[str]:
        """Every job the state store has runs of."""
        with self.engine.connect() as connection:
            return list(connection.execute(select(Run.job).distinct().order_by(Run.job)).scalars())

    def audit_rows(self, filters: AuditFilter) -> Iterator[AuditRow]:
        """Updates with their run, newest run last, streamed from the database in bounded memory."""
        dead = and_(FailedUpdate.dead.is_(True), FailedUpdate.message_id == RunUpdate.message_id)
        status = case((dead, "dead"), else_=RunUpdate.status)
        query = (
            select(
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
            .order_by(RunUpdate.run_id, RunUpdate.id)
        )
        for condition in _audit_conditions(filters, status):
            query = query.where(condition)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=_STREAM).execute(query)
            for row in result:
                yield AuditRow(*row)

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

    def prune(self, job: str, before: datetime) -> int:
        """Delete the per-update rows of the job's runs that started before ``before``; runs, their per-key
        counts, the acknowledged state and the failed-update records stay. Returns how many rows went."""
        old_runs = select(Run.id).where(Run.job == job, Run.started_at < before).scalar_subquery()
        with Session(self.engine) as session, session.begin():
            gone = session.execute(delete(RunUpdate).where(RunUpdate.run_id.in_(old_runs)).returning(RunUpdate.id))
            return len(gone.all())

    def delete_job(self, job: str) -> None:
        """Forget a job's acknowledged state and tracked keys (runs stay for the audit trail)."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(AckState).where(AckState.job == job))
            session.execute(delete(FingerprintIndex).where(FingerprintIndex.job == job))
            session.execute(delete(JobKey).where(JobKey.job == job))


_outcomes = cast(Table, RunUpdate.__table__)
# One statement for every outcome of a group, executed as executemany.
_RECORD_OUTCOME = (
    update(_outcomes)
    .where(_outcomes.c.run_id == bindparam("b_run"), _outcomes.c.user_id == bindparam("b_user"))
    .values(
        status=bindparam("b_status"),
        http_status=bindparam("b_http"),
        attempts=bindparam("b_attempts"),
        error=bindparam("b_error"),
        sent_at=bindparam("b_sent"),
        finished_at=bindparam("b_finished"),
    )
)


_acked = cast(Table, AckState.__table__)
_REFRESH_FINGERPRINT = (
    update(_acked)
    .where(_acked.c.job == bindparam("b_job"), _acked.c.user_id == bindparam("b_user"))
    .values(fingerprint=bindparam("b_fingerprint"), run_id=bindparam("b_run"))
)


def _positional(compiled: Any, paramstyle: str) -> Any:
    """The bound values of a compiled statement in the form the driver's cursor takes."""
    params = compiled.params
    if paramstyle in ("qmark", "numeric", "format"):
        return tuple(params[name] for name in compiled.positiontup)
    return params


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


def _chunks(items: Iterable[Update], size: int) -> Iterator[list[Update]]:
    chunk: list[Update] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (status, diff) do not block the running sync
    # Durable across a crash of the process (not of the machine): a lost acknowledgement is resent with the
    # same messageId, and commits stay cheap enough to record every answer as it arrives.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MiB of page cache (the default is 2 MiB): a run looks up thousands of users' rows in tables of
    # millions, and a cache that small reads the same index pages from disk again and again.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def store_reason(exc: SQLAlchemyError) -> str:
    """The driver's first line, without SQLAlchemy's statement and parameters (they may hold profile data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"
