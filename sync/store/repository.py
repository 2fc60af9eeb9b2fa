"""The state store: one facade over its parts, each a concern of its own (runs, acknowledged state, the audit
trail, leases and schedules). Every method is one transaction.

The acknowledged state of a user changes only in ``record_results``, in the same transaction as the audit
row of the update the destination acknowledged.
"""

from __future__ import annotations

from sqlalchemy import (
    Engine,
    create_engine,
    delete,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sync.config import redact_url
from sync.errors import StoreError
from sync.store import dialect
from sync.store.audit import AuditStore
from sync.store.common import store_reason
from sync.store.control import ControlStore
from sync.store.models import (
    AckState,
    FingerprintIndex,
    JobKey,
)
from sync.store.runs import RunStore
from sync.store.schema import ensure_schema
from sync.store.state import StateStore


class Store(RunStore, StateStore, AuditStore, ControlStore):
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

    def delete_job(self, job: str) -> None:
        """Forget a job's acknowledged state and tracked keys (runs stay for the audit trail)."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(AckState).where(AckState.job == job))
            session.execute(delete(FingerprintIndex).where(FingerprintIndex.job == job))
            session.execute(delete(JobKey).where(JobKey.job == job))
