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
import json
import logging
import threading
import time
from collections.abc import Callable, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from sync.calls import CallSpec
from sync.clock import Clock, Sleep, utc_now
from sync.config import JobConfig
from sync.destinations.breaker import Breaker
from sync.destinations.factory import call_spec, remote_ids
from sync.destinations.transport import ClientFactory, default_client
from sync.errors import GuardError, SyncError
from sync.lineage import Lineage, ParentRun, parent_from_env
from sync.model import Update
from sync.plan.planner import BATCH, KEEP, Plan, Planner, Prior
from sync.run import lease
from sync.run.alerts import RECENT_RUNS, Alerts, RunFacts
from sync.run.delivery import PROGRESS_INTERVAL_S, Delivery, Pace, Progress
from sync.run.lease import LEASE_TTL, process_owner
from sync.run.report import RunOptions as RunOptions
from sync.run.report import RunReport as RunReport
from sync.run.writeback import write_back
from sync.scheduler.metrics import Metrics
from sync.sources import computations, driver_reason, warehouse_engine
from sync.store import Store, store_reason

log = logging.getLogger(__name__)

# After a stop request, requests in flight get this long to finish before they are abandoned.
STOP_GRACE = timedelta(seconds=20)


# How loudly the end of a run is logged: anything that leaves work undone is at least a warning.
_LEVELS = {
    "failed": logging.ERROR,
    "blocked": logging.WARNING,
    "partial": logging.WARNING,
    "interrupted": logging.WARNING,
}


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

    def so_far(self) -> dict[str, float]:
        """Seconds per phase, the current one counted up to now."""
        spent = dict(self.spent)
        if self.current is not None:
            spent[self.current] += time.monotonic() - self._since
        return spent


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
        self.planner = Planner(store, batch, keep)
        self.breaker = breaker
        self.progress_interval = progress_interval
        self.alerts = alerts
        self.metrics = metrics

    def run(self, job: JobConfig, options: RunOptions | None = None) -> RunReport:
        """One run; it never raises for a failure of the run itself: the report says what happened."""
        options = options or RunOptions()
        if options.dry_run:
            return self._run(job, options)
        if not lease.acquire(self.store, job.name, self.owner, self.clock, self.lease_ttl):
            return self._skip(job, options)
        lost = threading.Event()
        heartbeat = lease.Heartbeat(self.store, job.name, self.owner, self.clock, self.lease_ttl, lost)
        try:
            self.store.mark_interrupted(job.name, self.clock())
            heartbeat.start()  # before the watermark query, which may take the warehouse a while
            watermark = self._watermark(job)
            if watermark is not None and options.trigger == "scheduled":
                why = self._unchanged(job, watermark)
                if why is not None:
                    return self._skip(job, options, why)
            return self._run(job, options, heartbeat, lost, watermark)
        finally:
            heartbeat.finish()
            lease.release(self.store, job.name, self.owner)

    def _kind(self, job: JobConfig, tracked: dict[str, str], options: RunOptions) -> str:
        if options.full:
            return "full"
        return "initial" if not tracked or not self.store.has_state(job.name) else "incremental"

    def _skip(self, job: JobConfig, options: RunOptions, why: str | None = None) -> RunReport:
        """A run recorded as skipped: the job is busy, or (``why``) its data has not changed."""
        now = self.clock()
        holder = "?"
        if why is None:
            held = self.store.lease(job.name)
            holder = f"{held.owner} (lease expires {held.expires_at.isoformat(timespec='seconds')})" if held else "?"
        kind = self._kind(job, self.store.tracked_keys(job.name), options)
        report = RunReport(
            self.store.start_run(
                job.name, kind, False, now, job.space_id, options.trigger, definition=job.definition()
            ),
            job.name,
            kind,
            False,
            status="skipped",
            error=why or f"job {job.name!r} is already running in {holder}",
        )
        self.store.finish_run(report.run_id, "skipped", report.counts(), now, report.error)
        if why is not None:
            log.info("run skipped: %s", why, extra={"event": "run_skipped", "job": job.name, "run_id": report.run_id})
            return report
        log.warning(
            "run skipped: the job is busy",
            extra={"event": "run_skipped", "job": job.name, "run_id": report.run_id, "holder": holder},
        )
        return report

    def _watermark(self, job: JobConfig) -> str | None:
        """What the job's ``schedule.when_changed`` query returns now (JSON); None without one, or when it
        fails (then the run goes ahead: a warning, never a skipped sync)."""
        sql = job.schedule.when_changed
        if sql is None:
            return None
        engine = warehouse_engine(job)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text(sql)).fetchmany(2)
        except (SQLAlchemyError, SyncError) as exc:
            reason = driver_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            log.warning("schedule.when_changed failed; running the job anyway: %s", reason, extra={"job": job.name})
            return None
        finally:
            engine.dispose()
        if len(rows) != 1 or len(rows[0]) != 1:
            log.warning(
                "schedule.when_changed must return one row of one value; running the job anyway",
                extra={"job": job.name},
            )
            return None
        return json.dumps(rows[0][0], default=str)

    def _unchanged(self, job: JobConfig, watermark: str) -> str | None:
        """Why a scheduled run need not go: the last run that succeeded saw the same watermark and is younger
        than ``at_least``; None when it must go."""
        last = self.store.last_run(job.name, statuses=("succeeded",))
        if last is None or last.watermark != watermark or last.finished_at is None:
            return None
        at_least = job.schedule.at_least
        if at_least is not None and self.clock() - last.finished_at >= at_least:
            return None
        shown = watermark if len(watermark) <= 60 else watermark[:57] + "…"
        return f"the data has not changed since run {last.id} (schedule.when_changed returned {shown} again)"

    def _run(
        self,
        job: JobConfig,
        options: RunOptions,
        heartbeat: lease.Heartbeat | None = None,
        lost: threading.Event | None = None,
        watermark: str | None = None,
    ) -> RunReport:
        now = self.clock()
        tracked = self.store.tracked_keys(job.name)
        resync = None if options.full else self.store.full_resync(job.name)
        if resync is not None:  # an unfinished full resync: this run goes on with it
            options = replace(options, full=True)
        kind = self._kind(job, tracked, options)
        spec = call_spec(job, self.store.installation_id())
        report = RunReport(
            self.store.start_run(
                job.name,
                kind,
                options.dry_run,
                now,
                job.space_id,
                options.trigger,
                calls=spec.to_json(),
                definition=job.definition(),
            ),
            job.name,
            kind,
            options.dry_run,
        )
        if heartbeat:
            heartbeat.attach(report.run_id)
        if watermark is not None:
            self.store.set_watermark(report.run_id, watermark)
        resent: Set[str] = frozenset()
        if resync is not None:
            resent = self.store.resynced(job.name, resync.run_id)
            log.info(
                "resuming the full resync begun by run %s: %s subjects were delivered since",
                resync.run_id,
                len(resent),
                extra={"job": job.name, "run_id": report.run_id},
            )
        elif options.full and not options.dry_run:
            self.store.start_full_resync(job.name, report.run_id, now)
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
        lineage = self._lineage(job, options, report.run_id, now)
        phases = _Phases(job.name, report.run_id, self.progress)
        halt = _Halt(lost or threading.Event(), self.breaker(), phases, spec)
        repair: dict[str, frozenset[str]] = {}
        try:
            repair = self.store.repairs(job.name)
            if repair:
                log.info(
                    "resending %s subjects a reconciliation found drifted at the destination",
                    len(repair),
                    extra={"job": job.name, "run_id": report.run_id},
                )
            prior = Prior(resent, self._waiting(job, now), repair)
            self._execute(job, options, tracked, report, now, halt, prior)
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
        if options.full and not options.dry_run:
            self._settle_resync(report)
        if repair and not options.dry_run:
            self._settle_repairs(report)
        phases.enter("recording")
        self._finish(report, phases)
        phases.close()
        if not options.dry_run:
            self._alert(report, halt.breaker.opened)
            if self.metrics is not None:
                self.metrics.run_finished(job.name, report.status, options.trigger, report.updates, report.parked)
        if lineage is not None:
            lineage.finish(report.status, report.error, report.delivered, self.clock())
        self._write_back(job)
        log.log(
            _LEVELS.get(report.status, logging.INFO),
            "run finished",
            extra={"event": "run_finished", **report.summary(), "error": report.error, "timings": phases.timings()},
        )
        return report

    def _waiting(self, job: JobConfig, now: datetime) -> Set[str]:
        """Subjects found to have no record at the destination lately, not to be looked up again yet."""
        remote = remote_ids(job.destination)
        if remote is None:
            return frozenset()
        return self.store.awaiting_records(job.name, remote.scope, now - remote.rematch_after)

    def _settle_repairs(self, report: RunReport) -> None:
        """Repairs this run delivered are done; the others wait for the next run."""
        try:
            self.store.settle_repairs(report.job, report.run_id)
        except SQLAlchemyError as exc:  # the next run sends them again: harmless, and said
            log.warning(
                "could not record the repairs this run delivered: %s", store_reason(exc), extra={"job": report.job}
            )

    def _settle_resync(self, report: RunReport) -> None:
        """A full resync ends with a run that succeeded; otherwise the next run goes on with it, and what its
        last run planned and did not deliver is what is left (a run that ended before planning changes
        nothing)."""
        if report.status == "succeeded":
            self.store.settle_full_resync(report.job, 0)
            return
        if report.guard is None:
            return
        report.full_left = max(1, report.updates - report.delivered - report.unmatched)
        self.store.settle_full_resync(report.job, report.full_left)
        log.warning(
            "the full resync is not finished: %s subjects left; the next run of the job goes on with it",
            report.full_left,
            extra={"job": report.job, "run_id": report.run_id},
        )

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
            sent = self.alerts.after_run(self.store, facts, self.clock())
            if sent:
                self.store.record_alerts(report.run_id, sent)
        except Exception:
            log.warning("could not evaluate or send alerts", extra={"job": report.job}, exc_info=True)

    def _lineage(self, job: JobConfig, options: RunOptions, run_id: int, now: datetime) -> Lineage | None:
        """The run's OpenLineage events, START sent now; None without ``lineage`` or for a dry run."""
        if job.lineage is None or options.dry_run:
            return None
        parent = ParentRun.parse(options.parent) if options.parent else parent_from_env()
        lineage = Lineage(job, job.lineage, parent)
        lineage.start(self.store.installation_id(), run_id, now)
        return lineage

    def _write_back(self, job: JobConfig) -> None:
        """The sync log in the warehouse, after the run is recorded; never fails the run."""
        if job.writeback is None:
            return
        try:
            write_back(self.store, job, self.clock())
        except Exception:
            log.warning("could not write the sync log to the warehouse", extra={"job": job.name}, exc_info=True)

    def _finish(self, report: RunReport, phases: _Phases) -> None:
        try:
            if report.key_counts:
                self.store.record_run_keys(report.run_id, report.key_counts)
            self.store.finish_run(
                report.run_id,
                report.status,
                report.counts(),
                self.clock(),
                report.error,
                report.issues,
                phases=phases.so_far(),
                guard=report.guard,
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
        prior: Prior,
    ) -> None:
        # Runs the mass-change guard cannot stop plan and send batch by batch; the others plan in full first.
        streamed = not options.dry_run and (not tracked or not job.guard.enabled or options.force)
        if options.dry_run:
            plan = self._dry_run(job, tracked, options, report, halt.phases, prior)
        elif streamed:
            plan = self._stream(job, tracked, options, report, now, halt, prior)
        else:
            plan = self.planner.plan(job, tracked, options.full, phases=halt.phases, prior=prior)
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
        # The snapshot (every result's rows, the engine) goes before the fingerprint index reads every
        # acknowledged fingerprint and writes them again: the two need not be in memory together.
        del plan
        self.planner.settle(job, report.run_id, complete=not report.failed and not self.stop.is_set())
        if self.stop.is_set():
            report.status = "interrupted"
        elif report.failed > report.rejected and not report.delivered and not report.unmatched:
            # nothing delivered, and not only records refused: the destination itself is in trouble
            report.status, report.error = "failed", nothing_delivered(report)
        else:
            report.status = "partial" if report.failed else "succeeded"

    def _dry_run(
        self,
        job: JobConfig,
        tracked: dict[str, str],
        options: RunOptions,
        report: RunReport,
        phases: _Phases | None = None,
        prior: Prior | None = None,
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

            plan = self.planner.plan(job, tracked, options.full, sink=record, phases=phases, prior=prior)
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
        prior: Prior,
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

        plan = self.planner.plan(job, tracked, options.full, sink=send, phases=halt.phases, prior=prior)
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
            if halt.delivery is None:  # one for the whole run: its connections, rate limit and breaker last
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

    @staticmethod
    def _fill(report: RunReport, plan: Plan) -> None:
        report.users = plan.users
        report.entered, report.exited, report.traits_changed = plan.entered, plan.exited, plan.traits_changed
        report.updates = plan.updates_count
        report.parked = plan.parked
        report.guard = list(plan.guard)
        for key, counts in plan.key_counts.items():  # delivered counts may be in already (a streamed run)
            report.key_counts.setdefault(key, {}).update(counts)
        report.skipped_rows = sum(issue.count for issue in plan.snapshot.issues)
        report.issues = [asdict(issue) for issue in plan.snapshot.issues]


def nothing_delivered(report: RunReport) -> str:
    """Why a run that sent updates delivered none of them: the destination (no secrets) and the causes."""
    causes = "; ".join(f"{reason} ×{count}" for reason, count in report.reasons.most_common(3)) or "no answer"
    where = report.destination or "the destination"
    return (
        f"{where} accepted none of the {report.failed} updates sent ({causes}). Nothing was delivered; "
        "the updates stay pending for the next run"
    )
