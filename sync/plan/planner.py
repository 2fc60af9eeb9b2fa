"""Planning a run: snapshot → the users worth a close look → their acknowledged states, diffs and updates,
``BATCH`` users at a time. Pure but for reading the source and the acknowledged state."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import Any, Protocol, TypeVar

import pandas as pd

from sync.config import JobConfig
from sync.errors import SourceError
from sync.model import PROFILE_KIND, Computation, Update
from sync.plan.diff import CHANGE_COLUMNS, diff_states
from sync.plan.guard import guard_problems, moves
from sync.plan.updates import plan_updates, tally
from sync.snapshot import warehouse
from sync.snapshot.columns import RowIssue
from sync.snapshot.engine import Examined, Selection
from sync.sources import computations, read_snapshot
from sync.store import Baseline, Store

log = logging.getLogger(__name__)

# Users examined together: their acknowledged states, diffs and updates are in memory one batch at a time.
BATCH = 20_000
# A plan of up to this many updates is kept in memory between planning and sending; a larger one is
# planned again, batch by batch, as it is sent.
KEEP = 200_000


_Loaded = TypeVar("_Loaded")

# Takes each batch of updates and fingerprints to refresh as it is planned; False stops planning.
Sink = Callable[[list[Update], list[tuple[str, int]]], bool]


class Totals(Protocol):
    """What a plan keeps of its snapshot, whichever engine made it."""

    computations: tuple[Computation, ...]
    issues: tuple[RowIssue, ...]

    @property
    def users(self) -> int: ...

    def member_counts(self, keys: Set[str] | None = None) -> dict[str, int]: ...


class Phases(Protocol):
    """Where a run says which phase it is in."""

    def enter(self, name: str) -> None: ...


@dataclass
class Plan:
    """What a run would send. ``batches()`` gives the updates, ``BATCH`` users' worth at a time: from memory
    when the plan is small, planned again batch by batch when it is large (an initial sync of millions of
    users never holds every update at once)."""

    snapshot: Totals
    users: int
    entered: int = 0
    exited: int = 0
    traits_changed: int = 0
    updates_count: int = 0
    parked: int = 0
    guard: tuple[str, ...] = ()
    refresh: list[tuple[str, int]] = field(default_factory=list)  # fingerprints of unchanged states to record
    examined: int = 0  # users whose acknowledged state was read and diffed
    key_counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    kept: list[list[Update]] | None = field(default_factory=list)
    replan: Callable[[], Iterator[list[Update]]] | None = None

    def batches(self) -> Iterator[list[Update]]:
        if self.kept is not None:
            yield from self.kept
        elif self.replan is not None:
            yield from self.replan()

    @property
    def updates(self) -> list[Update]:
        return [update for batch in self.batches() for update in batch]


class Planner:
    """Plans runs of jobs against one state store."""

    def __init__(self, store: Store, batch: int = BATCH, keep: int = KEEP) -> None:
        self.store, self.batch, self.keep = store, batch, keep

    def plan(
        self,
        job: JobConfig,
        tracked: dict[str, str],
        full: bool = False,
        sink: Sink | None = None,
        phases: Phases | None = None,
        prior: Prior | None = None,
    ) -> Plan:
        """Snapshot, diff against the acknowledged state of ``tracked`` keys, and the updates to send.

        Fingerprints pick the users worth a close look; only their acknowledged states are read and diffed,
        ``BATCH`` users at a time. ``sink`` takes each batch of updates and fingerprints to refresh as it is
        planned (a dry run records them, a streamed run sends them) and returns False to stop; without it,
        up to ``KEEP`` updates stay in memory for sending and a larger plan is planned again, batch by
        batch, when it is sent.

        ``prior``: what earlier runs settled about some subjects (``Prior``).
        """
        if phases:
            phases.enter("querying")
        comps = computations(job)
        new_keys = {c.key for c in comps if c.key not in tracked}
        prior = prior or Prior()
        force = Forced(
            {c.key for c in comps} if full else new_keys, new_keys, prior.resent if full else frozenset(), prior.repair
        )
        snapshot, selection = self._examined(job, comps, force.keys)
        if phases:
            phases.enter("planning")
        dead = self.store.parked(job.name)
        plan = Plan(snapshot, snapshot.users, examined=len(selection) + len(selection.gone))
        moved: dict[str, list[int]] = {}
        kept: list[list[Update]] | None = []
        for changes, updates, refresh in self._planned(job, selection, tracked, force, dead, prior.waiting):
            kinds = changes["change"].value_counts()
            plan.entered += int(kinds.get("entered", 0))
            plan.exited += int(kinds.get("exited", 0))
            plan.traits_changed += int(kinds.get("trait", 0))
            plan.updates_count += len(updates)
            plan.parked += changes["user_id"].nunique() - len(updates)
            tally(updates, plan.key_counts)
            moves(changes, moved)
            if sink is not None:
                if not sink(updates, refresh):
                    break
                if phases:
                    phases.enter("planning")
                continue
            plan.refresh += refresh
            if kept is not None:
                kept.append(updates)
                kept = kept if plan.updates_count <= self.keep else None
        plan.kept = None if sink is not None else kept
        if sink is None and kept is None:
            plan.replan = lambda: (
                batch for _, batch, _ in self._planned(job, selection, tracked, force, dead, prior.waiting)
            )
        if tracked:
            members = snapshot.member_counts({key for key, (_, leaving) in moved.items() if leaving})
            plan.guard = tuple(guard_problems(members, moved, comps, set(tracked), job.guard))
        return plan

    def _examined(self, job: JobConfig, comps: tuple[Computation, ...], force: Set[str]) -> tuple[Totals, Selection]:
        """The snapshot and the users worth a close look in it, by the job's engine."""
        if job.source.engine == "warehouse":
            return warehouse.examine(job, comps, self.store, force)
        snapshot = read_snapshot(job)
        return snapshot, snapshot.examine(self.store.stored_fingerprints(job.name), force)

    def settle(self, job: JobConfig, run_id: int, complete: bool) -> None:
        """After a run: the fingerprint index (local engine) or the warehouse copy of the acknowledged
        fingerprints is brought up to date. A warehouse that cannot take the copy now is warned about:
        the next run rebuilds it from the state store."""
        if job.source.engine != "warehouse":
            self.store.index_fingerprints(job.name, run_id)
            return
        try:
            warehouse.settle(job, self.store, complete)
        except SourceError as exc:
            log.warning(
                "could not write the acknowledged fingerprints to the warehouse; the next run brings them up "
                "to date: %s",
                exc,
                extra={"job": job.name, "run_id": run_id},
            )

    def _planned(
        self,
        job: JobConfig,
        selection: Selection,
        tracked: Mapping[str, str],
        force: Forced,
        dead: Mapping[str, str],
        waiting: Set[str],
    ) -> Iterator[tuple[pd.DataFrame, list[Update], list[tuple[str, int]]]]:
        """Per batch of examined users: the changes, the updates to send and the fingerprints to refresh.
        Subjects ``waiting`` for a record at the destination are left out of the changes and the updates,
        and their fingerprints are not refreshed: they are planned again once they are looked up again."""
        comps = selection.snapshot.computations
        gone = Examined(selection.gone, [0] * len(selection.gone), pd.DataFrame(columns=[c.key for c in comps]), {})
        batches = chain(selection.batches(self.batch), [gone] if selection.gone else [])

        def load(batch: Examined) -> tuple[Examined, Baseline]:
            return batch, self.store.load_baseline(job.name, comps, tracked, batch.user_ids)

        for batch, baseline in _prefetched(load, batches):
            examined = batch.user_ids
            changes = force.changes(baseline.state, batch.state, comps)
            changed = set(changes["user_id"].tolist())
            if waiting and not changed.isdisjoint(waiting):
                changes = changes[~changes["user_id"].isin(waiting)].reset_index(drop=True)
            signed = dict(zip(examined, batch.fingerprints, strict=True))
            profiles = _profiles(batch, baseline, changes)
            planned = plan_updates(job.name, changes, comps, batch.state, profiles, baseline.versions, signed)
            if force.repair:
                planned = (replace(u, reason="reconcile") if u.user_id in force.repair else u for u in planned)
            updates = [u for u in planned if dead.get(u.user_id) != u.message_id]
            refresh = [(u, signed[u]) for u in examined if u not in changed and u in baseline.versions]
            yield changes, updates, refresh


@dataclass(frozen=True)
class Prior:
    """What earlier runs settled about some subjects: those a full resync being resumed has ``resent``
    already (a full plan sends them only what really changed), those ``waiting`` for a record at the
    destination until they are looked up again (no plan has them: their changes are not this run's), and
    those to ``repair``: a reconciliation found the destination holding other values for these keys, which
    are sent again whether or not they changed (with the reason ``reconcile``)."""

    resent: Set[str] = frozenset()
    waiting: Set[str] = frozenset()
    repair: Mapping[str, Set[str]] = field(default_factory=dict)  # subject → keys a reconciliation found drifted


@dataclass(frozen=True)
class Forced:
    """Which keys a plan sends whether or not they changed (``keys``: a new key's initial sync, every key of a
    full resync), and the subjects ``resent`` already by the full resync being resumed, which get only the
    keys a plan would force anyway (``new_keys``)."""

    keys: set[str]
    new_keys: set[str]
    resent: Set[str] = frozenset()
    repair: Mapping[str, Set[str]] = field(default_factory=dict)

    def changes(self, old: pd.DataFrame, new: pd.DataFrame, comps: tuple[Computation, ...]) -> pd.DataFrame:
        changes = self._changes(old, new, comps)
        if not self.repair:
            return changes
        return _with_repairs(changes, old, new, comps, self.repair)

    def _changes(self, old: pd.DataFrame, new: pd.DataFrame, comps: tuple[Computation, ...]) -> pd.DataFrame:
        changes = diff_states(old, new, comps, self.keys)
        if not self.resent or self.keys == self.new_keys:
            return changes
        done = changes["user_id"].isin(self.resent).to_numpy()
        if not done.any():
            return changes
        ids = changes["user_id"].to_numpy()[done]
        again = diff_states(old.loc[old.index.isin(ids)], new.loc[new.index.isin(ids)], comps, self.new_keys)
        wanted = set(zip(again["user_id"].tolist(), again["key"].tolist(), strict=True))
        pairs = zip(changes["user_id"].tolist(), changes["key"].tolist(), strict=True)
        keep = [not was_done or pair in wanted for was_done, pair in zip(done.tolist(), pairs, strict=True)]
        return changes[keep].reset_index(drop=True)


def _with_repairs(
    changes: pd.DataFrame,
    old: pd.DataFrame,
    new: pd.DataFrame,
    comps: tuple[Computation, ...],
    repair: Mapping[str, Set[str]],
) -> pd.DataFrame:
    """``changes`` and, for each subject to repair in this batch, its drifted keys with their values now (an
    audience's ``false`` too: the destination holds something else), each (subject, key) once."""
    kinds = {c.key: c.kind for c in comps if c.kind != PROFILE_KIND}
    planned = set(zip(changes["user_id"].tolist(), changes["key"].tolist(), strict=True))
    rows: list[tuple[str, str, Any, Any, str]] = []
    for user in [u for u in (*new.index.tolist(), *old.index.tolist()) if u in repair]:
        for key in sorted(repair[user]):
            if key not in kinds or (user, key) in planned:
                continue
            planned.add((user, key))
            was: Any = old.at[user, key] if user in old.index and key in old.columns else None
            now: Any = new.at[user, key] if user in new.index and key in new.columns else None
            if isinstance(now, float) and now != now:  # NaN: null
                now = None
            if kinds[key] == "audience":
                member = bool(now)
                rows.append((user, key, None if was is None else bool(was), member, "entered" if member else "exited"))
            else:
                rows.append((user, key, was, now, "trait"))
    if not rows:
        return changes
    extra = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    return pd.concat([changes, extra], ignore_index=True)


def _profiles(batch: Examined, baseline: Baseline, changes: pd.DataFrame) -> dict[str, Mapping[str, str]]:
    """Profiles of the changed users; the last acknowledged one for users without one in the snapshot."""
    profiles: dict[str, Mapping[str, str]] = {}
    for user_id in changes["user_id"].unique().tolist():
        known = batch.profiles[user_id] if user_id in batch.profiles else baseline.profile(user_id)
        if known is not None:
            profiles[user_id] = known
    return profiles


def _prefetched(load: Callable[[Examined], _Loaded], batches: Iterator[Examined]) -> Iterator[_Loaded]:
    """``load`` of each batch, the next one loading in a thread while the caller works on the current one.

    The store's reads wait on the database with the GIL released, so they overlap the caller's Python work.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audience-sync-prefetch") as pool:
        ahead = [pool.submit(load, batch) for batch in islice(batches, 1)]
        while ahead:
            loaded = ahead.pop().result()
            ahead = [pool.submit(load, batch) for batch in islice(batches, 1)]
            yield loaded
