"""Updates the destination keeps rejecting (400, 422…): counted per user over runs, parked as dead after
``dead_after`` runs of the same update, un-parked by ``retry --dead``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, case, func, select, update
from sqlalchemy.orm import Session

from sync.destinations.base import DeliveryResult
from sync.model import Update
from sync.store import dialect
from sync.store.models import FailedUpdate


class RejectionStore:
    engine: Engine

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
        statement = dialect.insert(self.engine, FailedUpdate)
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

    def dead_count(self, job: str) -> int:
        query = select(func.count()).select_from(FailedUpdate)
        query = query.where(FailedUpdate.job == job, FailedUpdate.dead.is_(True))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
