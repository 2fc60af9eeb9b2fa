"""The acknowledged state of each job: tracked keys, per-user states and fingerprints, and recording the
destination's answers, which is the only place a user's state changes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from sync.destinations.base import DeliveryResult
from sync.destinations.outcomes import is_rejection
from sync.model import Computation, Update
from sync.store import dialect
from sync.store.common import dumps
from sync.store.models import (
    AckState,
    FailedUpdate,
    FingerprintIndex,
    JobKey,
    JobLease,
    RunUpdate,
)
from sync.store.rejections import RejectionStore
from sync.store.remote import RemoteStore

if TYPE_CHECKING:  # at run time pandas, pyarrow and DuckDB (150 MiB) load only in the methods a run uses
    import pandas as pd
    import pyarrow as pa

# Rows per INSERT/UPDATE statement: keeps SQLite under its bound-parameter limit.
_CHUNK = 500
# Values of one IN list when reading states back: under SQLite's 32,766 and PostgreSQL's 65,535 parameters.
_IN_CHUNK = 5000
# Rows of (user_id, fingerprint) read from the driver at a time.
_FETCH = 100_000
# Users per part of the fingerprint index (a part is one Parquet blob of about 20 MB).
_INDEX_PART = 1_000_000


def _status(result: DeliveryResult) -> str:
    return "delivered" if result.delivered else "unmatched" if result.unmatched else "failed"


def _chunks(items: Iterable[Update], size: int) -> Iterator[list[Update]]:
    chunk: list[Update] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
        requests=bindparam("b_requests"),
    )
)


_acked = cast(Table, AckState.__table__)
_REFRESH_FINGERPRINT = (
    update(_acked)
    .where(_acked.c.job == bindparam("b_job"), _acked.c.user_id == bindparam("b_user"))
    .values(fingerprint=bindparam("b_fingerprint"), run_id=bindparam("b_run"))
)


class StateStore(RemoteStore, RejectionStore):
    """Acknowledged state: what the destination has accepted, per user."""

    engine: Engine

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

    def load_baseline(
        self,
        job: str,
        computations: Sequence[Computation],
        tracked: Iterable[str],
        user_ids: Sequence[str] | None = None,
    ) -> Baseline:
        """The acknowledged state restricted to the tracked keys of ``computations``: of every user, or of
        ``user_ids`` only."""
        import pandas as pd

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
        """Every acknowledged user of the job with its fingerprint (``sync.snapshot.engine.STORED_SCHEMA``).

        Read from the fingerprint index plus the rows written since it was made; fingerprints of another
        hash scheme come back as not known. Without an index, every row is read.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from sync.snapshot.engine import SCHEME

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
        import pyarrow as pa

        from sync.snapshot.engine import stored_table

        pieces = list(self.fingerprint_pieces(job, after_run))
        return pa.concat_tables(pieces) if pieces else stored_table([], [])

    def fingerprint_pieces(self, job: str, after_run: int | None = None) -> Iterator[pa.Table]:
        """``_fingerprint_rows`` in pieces of at most ``_FETCH`` rows, for a reader that never needs them all
        at once (``STORED_SCHEMA``; a fingerprint not recorded is 0 and not known)."""
        from sync.snapshot.engine import stored_table

        query = select(AckState.user_id, AckState.fingerprint).where(AckState.job == job)
        if after_run is not None:
            query = query.where(AckState.run_id > after_run)
        compiled = query.compile(self.engine)
        with self.engine.connect() as connection:  # the driver's cursor, in pieces: millions of rows
            result = connection.execution_options(stream_results=True, yield_per=_FETCH).exec_driver_sql(
                str(compiled), dialect.positional(compiled, self.engine.dialect.paramstyle)
            )
            for rows in result.partitions(_FETCH):
                yield stored_table([row[0] for row in rows], [row[1] for row in rows])

    def fingerprint_facts(self, job: str, checksum: Callable[[Any], Any]) -> tuple[int, int, int]:
        """The last run that wrote an acknowledged row of the job, how many rows it has and ``checksum`` of
        their fingerprints: what a copy of them elsewhere must agree with."""
        query = select(func.coalesce(func.max(AckState.run_id), 0), func.count(), checksum(AckState.fingerprint)).where(
            AckState.job == job
        )
        with self.engine.connect() as connection:
            last, count, total = connection.execute(query).one()
        return int(last), int(count), int(total)

    def index_fingerprints(self, job: str, run_id: int, *, share: float = 0.05) -> bool:
        """Rewrite the job's fingerprint index when it is missing, of another scheme, or when the rows
        written since it was made exceed ``share`` of it; run by the job's lease holder after a run.
        Returns whether it was rewritten."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from sync.snapshot.engine import SCHEME

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

    def record_plan(self, run_id: int, updates: Iterable[Update], status: str) -> int:
        """Audit rows for a run's updates, ``planned`` (dry run) or ``pending`` (about to be sent)."""
        count = 0
        with self.engine.begin() as connection:
            for chunk in _chunks(updates, _CHUNK):
                self._bulk_plan.execute(
                    connection,
                    [
                        {
                            "run_id": run_id,
                            "user_id": u.user_id,
                            "message_id": u.message_id,
                            "status": status,
                            "changes": dumps([[c.key, c.kind, c.old, c.new] for c in u.changes]),
                            "profile": dumps(u.profile),
                            "attempts": 0,
                            "reason": u.reason,
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
        scope: str | None = None,
    ) -> bool:
        """Record delivery outcomes; advance the acknowledged state of every delivered user, atomically.

        Rejections of the record itself are counted per user in ``failed_updates``; a delivery clears them.
        With ``owner``, the state advances only while ``owner`` holds the job's lease (checked in the same
        transaction): a run that lost its lease records its answers but leaves the state to the run that
        took over, which sends those updates again with the same messageIds. With ``scope``, the records
        found at the destination and the attributes created there are kept too. Returns whether it advanced.
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
            # The answers of one request share their two moments: each is written once.
            stamps = {t for _, r in results for t in (r.sent_at, r.finished_at)}
            moment = {t: self._moment(t) for t in stamps}.__getitem__
            self._bulk_outcome.execute(
                connection,
                [
                    {
                        "b_run": run_id,
                        "b_user": u.user_id,
                        "b_status": _status(r),
                        "b_http": r.http_status,
                        "b_attempts": r.attempts,
                        "b_error": r.error,
                        "b_sent": moment(r.sent_at),
                        "b_finished": moment(r.finished_at),
                        "b_requests": dumps([list(q) for q in r.requests]) if r.requests else None,
                    }
                    for u, r in results
                ],
            )
            acknowledged = [(u, r) for u, r in results if r.delivered]
            if acknowledged and owner is not None and not self._holds_lease(connection, job, owner):
                return False
            if scope is not None:
                self._record_remote(connection, job, scope, [r for _, r in results])
            if acknowledged:
                self._bulk_state.execute(
                    connection,
                    [
                        {
                            "job": job,
                            "user_id": u.user_id,
                            "state": dumps(u.state),
                            "profile": dumps(u.profile),
                            "version": 1,
                            "fingerprint": u.fingerprint,
                            "run_id": run_id,
                            "updated_at": moment(r.finished_at),
                        }
                        for u, r in acknowledged
                    ],
                )
        return True

    def _holds_lease(self, connection: Connection, job: str, owner: str) -> bool:
        """Whether ``owner`` holds the job's lease; on PostgreSQL the lease row stays locked until commit,
        so that no one takes it over in between (SQLite's write lock, taken above, does the same)."""
        query = select(JobLease.owner).where(JobLease.job == job)
        if dialect.is_postgresql(self.engine):
            query = query.with_for_update()
        return connection.execute(query).scalar() == owner

    # The statements a run executes for every answer and every planned update, compiled once (dialect.Bulk).
    @cached_property
    def _moment(self) -> Callable[[Any], Any]:
        return dialect.moment(self.engine)

    @cached_property
    def _bulk_outcome(self) -> dialect.Bulk:
        keys = ("b_run", "b_user", "b_status", "b_http", "b_attempts", "b_error", "b_sent", "b_finished", "b_requests")
        return dialect.Bulk(self.engine, _RECORD_OUTCOME, keys)

    @cached_property
    def _bulk_state(self) -> dialect.Bulk:
        keys = ("job", "user_id", "state", "profile", "version", "fingerprint", "run_id", "updated_at")
        return dialect.Bulk(self.engine, self._state_upsert, keys)

    @cached_property
    def _bulk_plan(self) -> dialect.Bulk:
        keys = ("run_id", "user_id", "message_id", "status", "changes", "profile", "attempts", "reason")
        return dialect.Bulk(self.engine, _outcomes.insert(), keys)

    @cached_property
    def _state_upsert(self) -> Any:
        statement = dialect.insert(self.engine, _acked)
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
