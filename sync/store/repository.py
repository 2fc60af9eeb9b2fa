"""The state store: one facade over its parts, each a concern of its own (runs, acknowledged state, the audit
trail, leases and schedules). Every method is one transaction.

The acknowledged state of a user changes only in ``record_results``, in the same transaction as the audit
row of the update the destination acknowledged.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    create_engine,
    delete,
    select,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sync.config import redact_url
from sync.errors import StoreError
from sync.store import dialect
from sync.store.audit import AuditStore
from sync.store.common import store_reason
from sync.store.control import ControlStore
from sync.store.drift import DriftStore
from sync.store.models import (
    AckState,
    Drift,
    FailedUpdate,
    FingerprintIndex,
    FullResync,
    JobAlert,
    JobKey,
    JobLease,
    JobSchedule,
    RemoteAttribute,
    RemoteId,
    Repair,
    Run,
    RunKey,
    RunUpdate,
)
from sync.store.runs import RunStore
from sync.store.schema import ensure_schema
from sync.store.state import StateStore


class Store(RunStore, StateStore, AuditStore, ControlStore, DriftStore):
    """The state store (APScheduler's job stores are the size of interface each part aims for)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """Connect, check the schema and bring it up to date; StoreError when that is not possible."""
        engine = create_engine(url, pool_pre_ping=True)
        try:
            dialect.check(engine)
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

    def forget_job(self, job: str, runs: bool = False) -> dict[str, int]:
        """Forget a job, in one transaction: its acknowledged state, fingerprints, tracked keys, failed updates,
        destination record ids and attributes, schedule, alert state, unfinished full resync and repairs; with
        ``runs``, its runs and their audit and drift rows too (otherwise they stay for the audit trail). Rows removed,
        per table."""
        tables: list[Any] = [
            AckState, FingerprintIndex, JobKey, FailedUpdate, RemoteId, RemoteAttribute, JobSchedule, JobAlert,
            FullResync, JobLease, Repair,
        ]  # fmt: skip
        removed: dict[str, int] = {}
        with Session(self.engine) as session, session.begin():
            if runs:
                ids = select(Run.id).where(Run.job == job).scalar_subquery()
                for model in (RunUpdate, RunKey, Drift):
                    gone = session.execute(delete(model).where(model.run_id.in_(ids)))
                    removed[model.__tablename__] = cast(CursorResult[Any], gone).rowcount
                tables.append(Run)
            for model in tables:
                gone = session.execute(delete(model).where(model.job == job))
                removed[model.__tablename__] = cast(CursorResult[Any], gone).rowcount
        return removed
