"""One run of one job: snapshot → diff → updates → delivery → acknowledged state, all recorded.

The acknowledged state advances only for users whose update the destination answered with 2xx, in the
transaction that records that answer; everything else stays as it was and is sent again by the next run.

A run holds the job's lease in the state store while it works, so two processes never run one job at
once; a run that finds the lease held is recorded as ``skipped``. A stop request (SIGTERM, SIGINT) stops
handing out new updates, lets requests in flight finish within the grace period, records what was
acknowledged and marks the run ``interrupted``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import chain, islice
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy.exc import SQLAlchemyError

from sync.alerts import RECENT_RUNS, Alerts, RunFacts
from sync.calls import CallSpec
from sync.clock import Clock, Sleep, utc_now
from sync.config import JobConfig
from sync.delivery import PROGRESS_INTERVAL_S, ClientFactory, Delivery, Pace, Progress, default_client
from sync.destinations.breaker import Breaker
from sync.destinations.factory import call_spec
from sync.diff import diff_states
from sync.engine import Examined, Selection, Snapshot
from sync.errors import GuardError, SyncError
from sync.guard import guard_problems, moves
from sync.messages import plan_updates, tally
from sync.metrics import Metrics
from sync.model import RUN_COUNTS, Update
from sync.sources import computations, read_snapshot
from sync.store import Baseline, Store, store_reason

log = logging.getLogger(__name__)

# A lease lives this long without a heartbeat; the holder renews it three times per period.
LEASE_TTL = timedelta(seconds=60)
# After a stop request, requests in flight get this long to finish before they are abandoned.
STOP_GRACE = timedelta(seconds=20)

_Loaded = TypeVar("_Loaded")

# What `run --json` prints, in this order.
SUMMARY_FIELDS = (
    "run_id",
    "job",
    "kind",
    "status",
    "users",
    "entered",
    "exited",
    "traits_changed",
    "updates",
    "delivered",
    "failed",
)

# Users examined together: their acknowledged states, diffs and updates are in memory one batch at a time.
BATCH = 20_000
# A plan of up to this many updates is kept in memory between planning and sending; a larger one is
# planned again, batch by batch, as it is sent.
KEEP = 200_000

# How loudly the end of a run is logged: anything that leaves work undone is at least a warning.
_LEVELS = {
    "failed": logging.ERROR,
    "blocked": logging.WARNING,
    "partial": logging.WARNING,
    "interrupted": logging.WARNING,
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_BUSY, EXIT_BLOCKED = 0, 1, 2, 3, 4, 5


def process_owner() -> str:
    """A lease owner name that tells an operator which process holds a job: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def holder_is_dead(owner: str) -> bool:
    """True when ``owner`` names a process of this host that has exited (killed, crashed)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass(frozen=True)
class RunOptions:
    full: bool = False
    dry_run: bool = False
    force: bool = False  # send even when the mass-change guard would stop the run
    trigger: str = "manual"  # or "scheduled": who started the run, for the audit trail


@dataclass
class RunReport:
    run_id: int
    job: str
    kind: str
    dry_run: bool
    status: str = "running"
    users: int = 0
    entered: int = 0
    exited: int = 0
    traits_changed: int = 0
    updates: int = 0
    delivered: int = 0
    failed: int = 0
    skipped_rows: int = 0
    parked: int = 0
    error: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)
    key_counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        if self.status == "skipped":
            return EXIT_BUSY
        if self.status == "blocked":
            return EXIT_BLOCKED
        return EXIT_PARTIAL if self.failed or self.status == "interrupted" else EXIT_OK

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in RUN_COUNTS}

    def summary(self) -> dict[str, Any]:
        """The fields ``run --json`` prints."""
        return {k: getattr(self, k) for k in SUMMARY_FIELDS}


@dataclass
class Plan:
    """What a run would send. ``batches()`` gives the updates, ``BATCH`` users' worth at a time: from memory
    when the plan is small, planned again batch by batch when it is large (an initial sync of millions of
    users never holds every update at once)."""

    snapshot: Snapshot
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


class _Phases:
    """The phase a run is in (querying, planning, sending, recording), logged as it changes, with time spent."""

    def __init__(self, job: str, run_id: int, display: Progress | None) -> None:
        self.job, self.run_id, self.display = job, run_id, display
        self.spent: dict[str, float] = {}
        self.current: str | None = None
        self._since = time.monotonic()

    def enter(self, name: str) -> None:
        if name == self.current:
            return
        self.close()
        first = name not in self.spent
        self.current, self._since = name, time.monotonic()
        self.spent.setdefault(name, 0.0)
        if self.display is not None:
            self.display.phase(name)
        if first:
            log.info(name, extra={"event": "run_phase", "job": self.job, "run_id": self.run_id, "phase": name})

    def close(self) -> None:
        if self.current is not None:
            self.spent[self.current] += time.monotonic() - self._since
            self.current = None

    def timings(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.spent.items())


@dataclass
class _Halt:
    """Per run: why it must stop sending (its lease was taken over, its destination is unreachable), its
    phases, and its delivery once it sends."""

    lost: threading.Event
    breaker: Breaker
    phases: _Phases
    spec: CallSpec
    delivery: Delivery | None = None

    def close(self) -> None:
        """End the run's delivery (its connections, its event loop); a failure to close fails nothing."""
        if self.delivery is not None:
            try:
                self.delivery.close()
            except Exception:
                log.warning("could not close the destination's connections cleanly", exc_info=True)
            self.delivery = None


class Stopped(SyncError):
    """The run was asked to stop before it began sending."""


class Runner:
    """Runs jobs against one state store.

    ``clock``, ``sleep`` and ``client_factory`` are the seams tests use; ``stop`` is set by signal handlers.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        client_factory: ClientFactory = default_client,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        owner: str | None = None,
        lease_ttl: timedelta = LEASE_TTL,
        grace: timedelta = STOP_GRACE,
        batch: int = BATCH,
        keep: int = KEEP,
        breaker: Callable[[], Breaker] = Breaker,
        progress_interval: float = PROGRESS_INTERVAL_S,
        alerts: Alerts | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.client_factory = client_factory
        self.progress = progress
        self.stop = stop or threading.Event()
        self.owner = owner or process_owner()
        self.lease_ttl = lease_ttl
        self.grace = grace
        self.batch, self.keep = batch, keep
        self.breaker = breaker
        self.progress_interval = progress_interval
        self.alerts = alerts
        self.metrics = metrics

    def run(self, job: JobConfig, options: RunOptions = RunOptions()) -> RunReport:
        """One run; it never raises for a failure of the run itself: the report says what happened."""
        if options.dry_run:
            return self._run(job, options)
        if not self._acquire(job.name):
            return self._skip(job, options)
        lost = threading.Event()
        heartbeat = _Heartbeat(self, job.name, lost)
        try:
            self.store.mark_interrupted(job.name, self.clock())
            heartbeat.start()
            return self._run(job, options, heartbeat, lost)
        finally:
            heartbeat.finish()
            self._release(job.name)

    def _release(self, job: str) -> None:
        try:
            self.store.release_lease(job, self.owner)
        except SQLAlchemyError:
            log.warning("could not release the job's lease; it expires by itself", extra={"job": job})

    def _acquire(self, job: str) -> bool:
        now = self.clock()
        if self.store.acquire_lease(job, self.owner, now, self.lease_ttl):
            return True
        lease = self.store.lease(job)
        if lease is None or not holder_is_dead(lease.owner):
            return False
        log.warning(
            "the job's lease is held by a process of this host that no longer exists; taking it over",
            extra={"job": job, "holder": lease.owner},
        )
        return self.store.take_over_lease(job, lease.owner, self.owner, now, self.lease_ttl)

    def _kind(self, job: JobConfig, tracked: dict[str, str], options: RunOptions) -> str:
        if options.full:
            return "full"
        return "initial" if not tracked or not self.store.has_state(job.name) else "incremental"

    def _skip(self, job: JobConfig, options: RunOptions) -> RunReport:
        now = self.clock()
        lease = self.store.lease(job.name)
        holder = f"{lease.owner} (lease expires {lease.expires_at.isoformat(timespec='seconds')})" if lease else "?"
        kind = self._kind(job, self.store.tracked_keys(job.name), options)
        report = RunReport(
            self.store.start_run(job.name, kind, False, now, job.space_id, options.trigger),
            job.name,
            kind,
            False,
            status="skipped",
            error=f"job {job.name!r} is already running in {holder}",
        )
        self.store.finish_run(report.run_id, "skipped", report.counts(), now, report.error)
        log.warning(
            "run skipped: the job is busy",
            extra={"event": "run_skipped", "job": job.name, "run_id": report.run_id, "holder": holder},
        )
        return report

    def _run(
        self,
        job: JobConfig,
        options: RunOptions,
        heartbeat: _Heartbeat | None = None,
        lost: threading.Event | None = None,
    ) -> RunReport:
        now = self.clock()
        tracked = self.store.tracked_keys(job.name)
        kind = self._kind(job, tracked, options)
        spec = call_spec(job, self.store.installation_id())
        report = RunReport(
            self.store.start_run(
                job.name, kind, options.dry_run, now, job.space_id, options.trigger, calls=spec.to_json()
            ),
            job.name,
            kind,
            options.dry_run,
        )
        if heartbeat:
            heartbeat.run_id = report.run_id
        log.info(
            "run started",
            extra={
                "event": "run_started",
                "job": job.name,
                "run_id": report.run_id,
                "kind": kind,
                "dry_run": options.dry_run,
            },
        )
        phases = _Phases(job.name, report.run_id, self.progress)
        halt = _Halt(lost or threading.Event(), self.breaker(), phases, spec)
        try:
            self._execute(job, options, tracked, report, now, halt)
        except Stopped:
            report.status = "interrupted"
        except GuardError as exc:
            report.status, report.error = "blocked", str(exc)
        except SyncError as exc:
            report.status, report.error = "failed", str(exc)
        except SQLAlchemyError as exc:  # no statement or parameters in the message: they may hold profile data
            report.status, report.error = "failed", f"the state store failed: {store_reason(exc)}"
        except Exception as exc:
            report.status, report.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
            log.exception("run failed", extra={"job": job.name, "run_id": report.run_id})
        finally:
            halt.close()
        phases.enter("recording")
        self._finish(report)
        phases.close()
        if not options.dry_run:
            self._alert(report, halt.breaker.opened)
            if self.metrics is not None:
                self.metrics.run_finished(job.name, report.status, options.trigger, report.updates, report.parked)
        log.log(
            _LEVELS.get(report.status, logging.INFO),
            "run finished",
            extra={"event": "run_finished", **report.summary(), "error": report.error, "timings": phases.timings()},
        )
        return report

    def _alert(self, report: RunReport, unreachable: bool) -> None:
        """Tell the notification targets what began or ended; never fails the run."""
        if self.alerts is None or not self.alerts.targets:
            return
        try:
            facts = RunFacts(
                report.job,
                report.run_id,
                report.status,
                report.error,
                unreachable,
                report.users,
                report.delivered,
                report.failed,
                self.store.consecutive_failures(report.job),
                self.store.recent_user_counts(report.job, RECENT_RUNS, before_run=report.run_id),
            )
            self.alerts.after_run(self.store, facts, self.clock())
        except Exception:
            log.warning("could not evaluate or send alerts", extra={"job": report.job}, exc_info=True)

    def _finish(self, report: RunReport) -> None:
        try:
            if report.key_counts:
                self.store.record_run_keys(report.run_id, report.key_counts)
            self.store.finish_run(
                report.run_id, report.status, report.counts(), self.clock(), report.error, report.issues
            )
        except SQLAlchemyError as exc:  # the store went away; the next run marks this one interrupted
            report.status = "failed"
            report.error = f"{report.error + '; ' if report.error else ''}the state store failed: {type(exc).__name__}"
            log.error("could not record the end of the run", extra={"job": report.job, "run_id": report.run_id})

    def _execute(
        self,
        job: JobConfig,
        options: RunOptions,
        tracked: dict[str, str],
        report: RunReport,
        now: datetime,
        halt: _Halt,
    ) -> None:
        # Runs the mass-change guard cannot stop plan and send batch by batch; the others plan in full first.
        streamed = not options.dry_run and (not tracked or not job.guard.enabled or options.force)
        if options.dry_run:
            plan = self._dry_run(job, tracked, options, report, halt.phases)
        elif streamed:
            plan = self._stream(job, tracked, options, report, now, halt)
        else:
            plan = self.plan(job, tracked, options.full, phases=halt.phases)
        self._fill(report, plan)
        if plan.guard and not options.force:
            explained = "; ".join(plan.guard)
            if not options.dry_run:
                raise GuardError(
                    f"mass-change guard: {explained}. Nothing was sent and the state is unchanged; "
                    "check the source queries, or run with --force to send anyway"
                )
            report.error = f"a real run would be stopped by the mass-change guard: {explained}"
        if options.dry_run:
            report.status = "planned"
            return
        if not streamed:  # planned in full first, sent now
            self._begin_sending(job, report)
            self.store.refresh_fingerprints(job.name, plan.refresh, report.run_id)
            for updates in plan.batches():
                if not self._send(job, updates, report, now, halt):
                    break
        if halt.lost.is_set():
            raise SyncError(
                f"job {job.name!r}: the lease was lost (another process took the job over); delivery stopped"
            )
        self.store.index_fingerprints(job.name, report.run_id)
        if self.stop.is_set():
            report.status = "interrupted"
        else:
            report.status = "partial" if report.failed else "succeeded"

    def _dry_run(
        self,
        job: JobConfig,
        tracked: dict[str, str],
        options: RunOptions,
        report: RunReport,
        phases: _Phases | None = None,
    ) -> Plan:
        """Plan and record every update as ``planned``; a batch is written while the next one is planned."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audience-sync-audit") as writer:
            written: Future[int] | None = None

            def record(updates: list[Update], _refresh: list[tuple[str, int]]) -> bool:
                nonlocal written
                if written is not None:
                    written.result()  # one batch in writing at a time; a failed write stops the run here
                written = writer.submit(self.store.record_plan, report.run_id, updates, "planned")
                return True

            plan = self.plan(job, tracked, options.full, sink=record, phases=phases)
            if written is not None:
                written.result()
        return plan

    def _stream(
        self,
        job: JobConfig,
        tracked: dict[str, str],
        options: RunOptions,
        report: RunReport,
        now: datetime,
        halt: _Halt,
    ) -> Plan:
        """Plan and send batch by batch, for runs the mass-change guard cannot stop (an initial sync, the
        guard off, ``--force``): a plan of any size is never held whole."""
        started = False
        failure: SyncError | None = None

        def send(updates: list[Update], refresh: list[tuple[str, int]]) -> bool:
            nonlocal started, failure
            try:
                if not started:
                    started = True
                    self._begin_sending(job, report)
                self.store.refresh_fingerprints(job.name, refresh, report.run_id)
                return self._send(job, updates, report, now, halt)
            except SyncError as exc:  # stops the run, once what was planned so far is counted in the report
                failure = exc
                return False

        plan = self.plan(job, tracked, options.full, sink=send, phases=halt.phases)
        if failure is not None:
            self._fill(report, plan)
            raise failure
        if not started:
            self._begin_sending(job, report)
        return plan

    def _begin_sending(self, job: JobConfig, report: RunReport) -> None:
        if self.stop.is_set():
            raise Stopped("stopped before sending")
        self.store.set_tracked_keys(job.name, computations(job), report.run_id)

    def _send(self, job: JobConfig, updates: list[Update], report: RunReport, now: datetime, halt: _Halt) -> bool:
        """Record a batch as pending and deliver it; False once the run must stop sending."""
        if self.stop.is_set() or halt.lost.is_set():
            return False
        if updates:
            self.store.record_plan(report.run_id, updates, "pending")
            if halt.delivery is None:
                halt.phases.enter("sending")
                pace = Pace(
                    self.clock,
                    self.sleep,
                    self.client_factory,
                    self.grace,
                    self.progress_interval,
                    self.progress,
                    self.metrics,
                    self.owner,
                )
                halt.delivery = Delivery(self.store, job, report, halt.spec, pace, self.stop, halt.lost, halt.breaker)
            halt.phases.enter("sending")
            halt.delivery.send(updates, now)
        return not (self.stop.is_set() or halt.lost.is_set())

    def plan(
        self,
        job: JobConfig,
        tracked: dict[str, str],
        full: bool = False,
        sink: Callable[[list[Update], list[tuple[str, int]]], bool] | None = None,
        phases: _Phases | None = None,
    ) -> Plan:
        """Snapshot, diff against the acknowledged state of ``tracked`` keys, and the updates to send.

        Fingerprints pick the users worth a close look; only their acknowledged states are read and diffed,
        ``BATCH`` users at a time. ``sink`` takes each batch of updates and fingerprints to refresh as it is
        planned (a dry run records them, a streamed run sends them) and returns False to stop; without it,
        up to ``KEEP`` updates stay in memory for sending and a larger plan is planned again, batch by
        batch, when it is sent.
        """
        if phases:
            phases.enter("querying")
        snapshot = read_snapshot(job)
        if phases:
            phases.enter("planning")
        comps = snapshot.computations
        force = {c.key for c in comps} if full else {c.key for c in comps if c.key not in tracked}
        selection = snapshot.examine(self.store.stored_fingerprints(job.name), force)
        dead = self.store.parked(job.name)
        plan = Plan(snapshot, snapshot.users, examined=len(selection) + len(selection.gone))
        moved: dict[str, list[int]] = {}
        kept: list[list[Update]] | None = []
        for changes, updates, refresh in self._planned(job, selection, tracked, force, dead):
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
            plan.replan = lambda: (batch for _, batch, _ in self._planned(job, selection, tracked, force, dead))
        if tracked:
            members = snapshot.member_counts()
            plan.guard = tuple(guard_problems(members, moved, comps, set(tracked), job.guard))
        return plan

    def _planned(
        self,
        job: JobConfig,
        selection: Selection,
        tracked: Mapping[str, str],
        force: set[str],
        dead: Mapping[str, str],
    ) -> Iterator[tuple[pd.DataFrame, list[Update], list[tuple[str, int]]]]:
        """Per batch of examined users: the changes, the updates to send and the fingerprints to refresh."""
        comps = selection.snapshot.computations
        gone = Examined(selection.gone, [0] * len(selection.gone), pd.DataFrame(columns=[c.key for c in comps]), {})
        batches = chain(selection.batches(self.batch), [gone] if selection.gone else [])

        def load(batch: Examined) -> tuple[Examined, Baseline]:
            return batch, self.store.load_baseline(job.name, comps, tracked, batch.user_ids)

        for batch, baseline in _prefetched(load, batches):
            examined = batch.user_ids
            changes = diff_states(baseline.state, batch.state, comps, force)
            signed = dict(zip(examined, batch.fingerprints, strict=True))
            profiles = _profiles(batch, baseline, changes)
            planned = plan_updates(job.name, changes, comps, batch.state, profiles, baseline.versions, signed)
            updates = [u for u in planned if dead.get(u.user_id) != u.message_id]
            changed = set(changes["user_id"].tolist())
            refresh = [(u, signed[u]) for u in examined if u not in changed and u in baseline.versions]
            yield changes, updates, refresh

    @staticmethod
    def _fill(report: RunReport, plan: Plan) -> None:
        report.users = plan.users
        report.entered, report.exited, report.traits_changed = plan.entered, plan.exited, plan.traits_changed
        report.updates = plan.updates_count
        report.parked = plan.parked
        for key, counts in plan.key_counts.items():  # delivered counts may be in already (a streamed run)
            report.key_counts.setdefault(key, {}).update(counts)
        report.skipped_rows = sum(issue.count for issue in plan.snapshot.issues)
        report.issues = [asdict(issue) for issue in plan.snapshot.issues]


class _Heartbeat:
    """Renews the job's lease from a thread while the run works; sets ``lost`` if the lease was taken."""

    def __init__(self, runner: Runner, job: str, lost: threading.Event) -> None:
        self.runner, self.job, self.lost = runner, job, lost
        self.run_id: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        interval = self.runner.lease_ttl.total_seconds() / 3
        while not self._done.wait(interval):
            try:
                renewed = self.runner.store.renew_lease(
                    self.job, self.runner.owner, self.runner.clock(), self.runner.lease_ttl, self.run_id
                )
            except Exception:
                log.warning("could not renew the job's lease; retrying", extra={"job": self.job}, exc_info=True)
                continue
            if not renewed:
                self.lost.set()
                log.error("the job's lease was taken over; stopping this run", extra={"job": self.job})
                return


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
