"""What a destination that finds records before it writes keeps between runs: each subject's record id there,
and the custom attributes a job created with their types. Both are scoped (``customer:external_id``…), so a
changed ``target`` or ``match`` never reuses ids found another way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, func, select

from sync.destinations.base import DeliveryResult
from sync.store import dialect
from sync.store.models import RemoteAttribute, RemoteId

_CHUNK = 500


class RemoteStore:
    engine: Engine

    def remote_ids(
        self, job: str, scope: str, user_ids: Sequence[str], unmatched_since: datetime | None = None
    ) -> dict[str, str]:
        """The record id of each of ``user_ids`` found before in ``scope``; "" for those found to have none
        at ``unmatched_since`` or later."""
        found: dict[str, str] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[start : start + _CHUNK])
                rows = connection.execute(
                    select(RemoteId.user_id, RemoteId.remote_id, RemoteId.matched_at).where(
                        RemoteId.job == job, RemoteId.scope == scope, RemoteId.user_id.in_(chunk)
                    )
                )
                found.update(
                    {
                        user: remote
                        for user, remote, at in rows
                        if remote or (unmatched_since is not None and at >= unmatched_since)
                    }
                )
        return found

    def awaiting_records(self, job: str, scope: str, since: datetime) -> set[str]:
        """Subjects found in ``scope`` to have no record at the destination at ``since`` or later."""
        query = select(RemoteId.user_id).where(
            RemoteId.job == job, RemoteId.scope == scope, RemoteId.remote_id == "", RemoteId.matched_at >= since
        )
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def match_counts(self, job: str) -> tuple[int, int]:
        """(subjects with a record found at the destination, subjects found to have none), over every scope."""
        matched = func.count().filter(RemoteId.remote_id != "")
        query = select(matched, func.count()).where(RemoteId.job == job)
        with self.engine.connect() as connection:
            found, total = connection.execute(query).one()
        return int(found), int(total) - int(found)

    def remote_attributes(self, job: str, scope: str) -> dict[str, str]:
        """The custom attributes ``job`` created in ``scope``: key → type."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(RemoteAttribute.key, RemoteAttribute.type).where(
                    RemoteAttribute.job == job, RemoteAttribute.scope == scope
                )
            )
            return {key: kind for key, kind in rows}

    def _record_remote(self, connection: Connection, job: str, scope: str, results: Sequence[DeliveryResult]) -> None:
        """Keep the ids records were found by and the attributes created; forget an id that no longer finds
        its record. Runs in the transaction that records the results."""
        # a subject with no record is kept as "" with when that was found, and looked up again later
        found = {
            r.user_id: (r.remote_id, r.finished_at)
            for r in results
            if r.remote_id is not None or (r.unmatched and r.attempts)
        }
        if found:
            upsert = dialect.insert(self.engine, RemoteId)
            upsert = upsert.on_conflict_do_update(
                index_elements=["job", "user_id"],
                set_={
                    "scope": upsert.excluded.scope,
                    "remote_id": upsert.excluded.remote_id,
                    "matched_at": upsert.excluded.matched_at,
                },
            )
            connection.execute(
                upsert,
                [
                    {"job": job, "user_id": user, "scope": scope, "remote_id": remote or "", "matched_at": at}
                    for user, (remote, at) in found.items()
                ],
            )
        created = {key: (kind, r.finished_at) for r in results if r.delivered for key, kind in r.created}
        if created:
            connection.execute(
                dialect.insert(self.engine, RemoteAttribute).on_conflict_do_nothing(
                    index_elements=["job", "scope", "key"]
                ),
                [
                    {"job": job, "scope": scope, "key": key, "type": kind, "created_at": at}
                    for key, (kind, at) in created.items()
                ],
            )
