"""Tables of the state store. Every change to them goes through an Alembic migration in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    """One run of one job. ``kind``: initial, incremental or full; ``dry_run`` runs send nothing."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    dry_run: Mapped[bool] = mapped_column(default=False)
    space_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    users: Mapped[int] = mapped_column(Integer, default=0)
    entered: Mapped[int] = mapped_column(Integer, default=0)
    exited: Mapped[int] = mapped_column(Integer, default=0)
    traits_changed: Mapped[int] = mapped_column(Integer, default=0)
    updates: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    unmatched: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # no record at the destination
    skipped_rows: Mapped[int] = mapped_column(Integer, default=0)
    parked: Mapped[int] = mapped_column(Integer, default=0)
    throttled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # 429 answers from the destination
    error: Mapped[str | None] = mapped_column(Text)
    issues: Mapped[str | None] = mapped_column(Text)  # JSON list of skipped-row reports
    trigger: Mapped[str] = mapped_column(String(20), default="manual", server_default="manual")  # or scheduled
    calls: Mapped[str | None] = mapped_column(Text)  # how its calls were rendered (sync.calls.CallSpec as JSON)
    phases: Mapped[str | None] = mapped_column(Text)  # JSON [[phase, seconds], ...], in the run's order
    guard: Mapped[str | None] = mapped_column(Text)  # JSON list: what the mass-change guard found (empty: nothing)
    alerts: Mapped[str | None] = mapped_column(Text)  # JSON list of the alert texts this run sent
    definition: Mapped[str | None] = mapped_column(Text)  # JSON: the job's definition in effect, secrets left out
    reconcile: Mapped[str | None] = mapped_column(Text)  # JSON: what a reconciliation read and found
    undelivered: Mapped[int | None] = mapped_column(Integer)  # updates failed or not sent when it ended
    watermark: Mapped[str | None] = mapped_column(Text)  # what schedule.when_changed returned (JSON)
    written_back: Mapped[datetime | None] = mapped_column(UTCDateTime())  # its row and changes in the warehouse
    writeback_error: Mapped[str | None] = mapped_column(Text)  # why the last write-back failed


class RunUpdate(Base):
    """One update of a run: one user, its changes (``[[key, kind, old, new], ...]`` as JSON), and its delivery."""

    __tablename__ = "run_updates"
    __table_args__ = (
        Index("ix_run_updates_run_id_user_id", "run_id", "user_id", unique=True),
        Index("ix_run_updates_user_id_run_id", "user_id", "run_id"),  # one user's history
        Index("ix_run_updates_run_id_id", "run_id", "id"),  # a run's updates from a cursor on (the console)
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(100))
    changes: Mapped[str] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # planned, pending, delivered, failed, unmatched
    http_status: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The requests made, where they depend on what the destination held (ChartMogul's API: lookups, POST or
    # PUT): JSON [[method, path, body or null], ...]. NULL where the calls alone say what was sent.
    requests: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(String(20))  # why it was sent when nothing changed: "reconcile"


class AckState(Base):
    """What the destination acknowledged for a user: member audiences and non-null traits as JSON.

    ``version`` counts acknowledged updates; it feeds the messageId so that a new change never reuses one.
    ``run_id`` is the last run that wrote the row (its state or its fingerprint).
    """

    __tablename__ = "ack_state"
    __table_args__ = (Index("ix_ack_state_job_run_id", "job", "run_id"),)

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # ``sync.snapshot.engine`` fingerprint of ``state`` (as a signed 64-bit integer); NULL when not known.
    fingerprint: Mapped[int | None] = mapped_column(BigInteger)


class FingerprintIndex(Base):
    """Every acknowledged (user, fingerprint) of a job as of run ``as_of_run``, as Parquet in parts.

    A copy for speed, never the truth: rows of ``ack_state`` written by later runs are read on top of it,
    and it is rewritten when they grow past a share of it (``Store.index_fingerprints``).
    """

    __tablename__ = "fingerprint_index"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    scheme: Mapped[str] = mapped_column(String(100))
    as_of_run: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunKey(Base):
    """Per run and audience or trait key: what was planned and what the destination acknowledged.

    Audience sizes over time are the running sum of ``delivered_entered - delivered_exited``; these rows
    are kept when ``prune`` removes old per-update rows.
    """

    __tablename__ = "run_keys"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    entered: Mapped[int] = mapped_column(Integer, default=0)
    exited: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    delivered_entered: Mapped[int] = mapped_column(Integer, default=0)
    delivered_exited: Mapped[int] = mapped_column(Integer, default=0)
    delivered_changed: Mapped[int] = mapped_column(Integer, default=0)


class FailedUpdate(Base):
    """A user's update that the destination keeps rejecting (400, 404, 422…), counted over runs.

    ``failed_runs`` counts the runs that were refused this same update (same ``message_id``); at the job's
    ``dead_after`` the update is parked as ``dead`` and left out of later runs until ``retry --dead``.
    A different change of the user (a new messageId) or a delivery ends the record.
    """

    __tablename__ = "failed_updates"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(100))
    failed_runs: Mapped[int] = mapped_column(Integer)
    dead: Mapped[bool] = mapped_column(default=False)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_run_id: Mapped[int] = mapped_column(Integer)


class RemoteId(Base):
    """The record a subject was found to be at the destination (a ChartMogul customer or contact uuid), so
    later runs write to it without looking it up again. ``scope`` says how it was found."""

    __tablename__ = "remote_ids"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    scope: Mapped[str] = mapped_column(String(100))
    remote_id: Mapped[str] = mapped_column(String(200))
    matched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RemoteAttribute(Base):
    """A custom attribute a job created at the destination, with the type it was created with."""

    __tablename__ = "remote_attributes"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    type: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FullResync(Base):
    """A full resync of a job that has not finished: runs of the job go on resending, to the subjects not
    delivered since ``run_id`` began it, until one ends with nothing left. A new ``--full`` starts over."""

    __tablename__ = "full_resyncs"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    remaining: Mapped[int] = mapped_column(Integer)  # subjects its last run planned and did not deliver


class Drift(Base):
    """What a reconciliation (a run of the kind ``reconcile``) found the destination holding other than the
    acknowledged state: one row per subject and key (``key`` null for a whole record ``gone`` or ``found``)."""

    __tablename__ = "drifts"
    __table_args__ = (Index("ix_drifts_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(String(200))
    drift: Mapped[str] = mapped_column(String(20))  # missing, differs, type, gone, found
    expected: Mapped[str | None] = mapped_column(Text)  # JSON: the acknowledged value (or type)
    found: Mapped[str | None] = mapped_column(Text)  # JSON: what the destination holds
    remote_id: Mapped[str | None] = mapped_column(String(200))


class Repair(Base):
    """A subject a reconciliation asked the next run of its job to resend (``keys``: JSON list, the drifted
    ones), removed once an update to it is acknowledged."""

    __tablename__ = "repairs"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    keys: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SchedulerBeat(Base):
    """A scheduler daemon's heartbeat: it renews ``seen_at`` while it runs and removes its row when it stops."""

    __tablename__ = "schedulers"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    jobs: Mapped[str] = mapped_column(Text)  # JSON list of the jobs it schedules
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobLease(Base):
    """Who is running a job now. A holder renews ``expires_at`` while it works; an expired lease may be taken."""

    __tablename__ = "job_leases"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[int | None] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobSchedule(Base):
    """The daemon's plan for a job and the operator's controls over it (pause, skip the next run)."""

    __tablename__ = "job_schedules"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paused: Mapped[bool] = mapped_column(default=False)
    skip_next: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobKey(Base):
    """The audience and trait keys a job has synced; a key not listed here gets its own initial sync."""

    __tablename__ = "job_keys"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    since_run_id: Mapped[int] = mapped_column(Integer)


class JobAlert(Base):
    """The alert conditions a job is in (``failed``, ``blocked``, ...) as a JSON list, since when and as of
    which run: a condition is announced when it begins and its end once, never once per run."""

    __tablename__ = "job_alerts"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    conditions: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    run_id: Mapped[int] = mapped_column(Integer)


class Installation(Base):
    """One row, made with the store: this installation's id (it salts messageIds sent into Segment)."""

    __tablename__ = "installation"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
