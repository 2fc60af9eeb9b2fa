"""What reading the destination back leaves in the state store: the drift a reconciliation found (``drifts``,
with its run), and the subjects it asked the next run to resend (``repairs``)."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, exists, func, insert, literal, literal_column, select, union_all, update

from sync.store.common import dumps
from sync.store.models import AckState, Drift, RemoteId, Repair, Run, RunUpdate

_CHUNK = 500
_IN_CHUNK = 5000
_FETCH = 10_000


class DriftStore:
    engine: Engine

    def subjects_to_check(self, job: str, scope: str) -> Generator[tuple[str, str, str | None]]:
        """Every subject a reconciliation checks, in user id order: each acknowledged one with its state as
        kept (JSON) and its record id in ``scope`` (None: never found), and each found to have no record and
        never acknowledged (state ``"{}"``, record id ``""``). Streamed: one pass, nothing held."""
        remote = (
            select(RemoteId.user_id, RemoteId.remote_id).where(RemoteId.job == job, RemoteId.scope == scope).subquery()
        )
        acknowledged = (
            select(AckState.user_id, AckState.state, remote.c.remote_id)
            .join(remote, remote.c.user_id == AckState.user_id, isouter=True)
            .where(AckState.job == job)
        )
        never = (
            select(RemoteId.user_id, literal("{}"), RemoteId.remote_id)
            .where(RemoteId.job == job, RemoteId.scope == scope, RemoteId.remote_id == "")
            .where(~exists().where(AckState.job == job, AckState.user_id == RemoteId.user_id))
        )
        query = union_all(acknowledged, never).order_by(literal_column("user_id"))
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=_FETCH).execute(query)
            try:
                yield from ((user_id, state, remote_id) for user_id, state, remote_id in result)
            finally:  # also when the reader stops early (--limit): the server-side cursor ends here
                result.close()

    def last_profiles(self, job: str, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The profile each subject's newest update carried (what it is found by, for one never acknowledged)."""
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(user_ids), _IN_CHUNK):
                chunk = list(user_ids[start : start + _IN_CHUNK])
                newest = (
                    select(func.max(RunUpdate.id))
                    .join(Run, Run.id == RunUpdate.run_id)
                    .where(Run.job == job, RunUpdate.user_id.in_(chunk))
                    .group_by(RunUpdate.user_id)
                )
                rows = connection.execute(select(RunUpdate.user_id, RunUpdate.profile).where(RunUpdate.id.in_(newest)))
                found.update({user: json.loads(profile or "{}") for user, profile in rows})
        return found

    def record_drifts(self, run_id: int, drifts: Iterable[Mapping[str, Any]]) -> int:
        """Keep a reconciliation's drifted rows (``user_id, key, drift, expected, found, remote_id``)."""
        rows = [
            {
                "run_id": run_id,
                "user_id": d["user_id"],
                "key": d["key"],
                "drift": d["drift"],
                "expected": dumps(d["expected"]),
                "found": dumps(d["found"]),
                "remote_id": d["remote_id"],
            }
            for d in drifts
        ]
        with self.engine.begin() as connection:
            for start in range(0, len(rows), _CHUNK):
                connection.execute(insert(Drift), rows[start : start + _CHUNK])
        return len(rows)

    def drifts_of(
        self, run_id: int, user_id: str | None = None, key: str | None = None, drift: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """A reconciliation's drifted rows, in the order found, filtered."""
        query = select(Drift).where(Drift.run_id == run_id).order_by(Drift.id)
        if user_id is not None:
            query = query.where(Drift.user_id == user_id)
        if key is not None:
            query = query.where(Drift.key == key)
        if drift is not None:
            query = query.where(Drift.drift == drift)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=_FETCH).execute(query)
            for row in result.mappings():
                yield {
                    "user_id": row["user_id"],
                    "key": row["key"],
                    "drift": row["drift"],
                    "expected": json.loads(row["expected"]) if row["expected"] is not None else None,
                    "found": json.loads(row["found"]) if row["found"] is not None else None,
                    "remote_id": row["remote_id"],
                    "run_id": run_id,
                }

    def set_reconcile_summary(self, run_id: int, summary: Mapping[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(Run).where(Run.id == run_id).values(reconcile=dumps(summary)))

    def request_repairs(
        self, job: str, run_id: int, resend: Mapping[str, Sequence[str]], look_up: Sequence[str], now: datetime
    ) -> None:
        """Ask the next run of ``job`` to resend ``resend`` (subject → keys) and to look ``look_up`` up again,
        in one transaction: their kept record ids go, and their fingerprints are marked not known so that any
        engine looks at them again; their acknowledged states do not change."""
        looked_up = set(look_up)
        users = sorted(set(resend) | looked_up)
        with self.engine.begin() as connection:
            for start in range(0, len(users), _CHUNK):
                chunk = users[start : start + _CHUNK]
                connection.execute(delete(Repair).where(Repair.job == job, Repair.user_id.in_(chunk)))
                ids = [u for u in chunk if u in looked_up]
                if ids:
                    connection.execute(delete(RemoteId).where(RemoteId.job == job, RemoteId.user_id.in_(ids)))
                again = [u for u in chunk if u in resend]
                if again:
                    connection.execute(
                        update(AckState)
                        .where(AckState.job == job, AckState.user_id.in_(again))
                        .values(fingerprint=None, run_id=run_id)
                    )
                    connection.execute(
                        insert(Repair),
                        [
                            {
                                "job": job,
                                "user_id": u,
                                "keys": dumps(sorted(resend[u])),
                                "run_id": run_id,
                                "requested_at": now,
                            }
                            for u in again
                        ],  # fmt: skip
                    )

    def repairs(self, job: str) -> dict[str, frozenset[str]]:
        """The subjects the next run of ``job`` resends, with the keys to resend."""
        query = select(Repair.user_id, Repair.keys).where(Repair.job == job)
        with self.engine.connect() as connection:
            return {user: frozenset(json.loads(keys)) for user, keys in connection.execute(query)}

    def settle_repairs(self, job: str, run_id: int) -> int:
        """Repairs the run ``run_id`` delivered are done; how many."""
        delivered = select(RunUpdate.user_id).where(
            RunUpdate.run_id == run_id, RunUpdate.status == "delivered", RunUpdate.reason == "reconcile"
        )
        with self.engine.begin() as connection:
            done = connection.execute(delete(Repair).where(Repair.job == job, Repair.user_id.in_(delivered)))
            return int(done.rowcount or 0)
