"""One run of one job: snapshot → diff → updates → delivery → acknowledged state, all recorded.

The acknowledged state advances only for users whose update the destination answered with 2xx, in the
transaction that records that answer; everything else stays as it was and is sent again by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx

from sync.config import JobConfig
from sync.destinations.base import DeliveryResult, Outgoing
from sync.destinations.chartmogul import ChartMogulDestination, Clock, Sleep, utc_now
from sync.diff import diff_states
from sync.errors import SyncError
from sync.messages import Update, identify_call, plan_updates
from sync.snapshot import Snapshot
from sync.sources import read_snapshot
from sync.store import Store

log = logging.getLogger(__name__)

# Results are committed in groups: at most this many per transaction, and at least once a second.
COMMIT_EVERY = 200
COMMIT_INTERVAL_S = 1.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

Progress = Callable[[int, int], None]
ClientFactory = Callable[[int], httpx.AsyncClient]


def default_client(max_connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(limits=limits, follow_redirects=False)


@dataclass(frozen=True)
class RunOptions:
    full: bool = False
    dry_run: bool = False


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
    error: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return EXIT_FAILED
        return EXIT_PARTIAL if self.failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        return {
            k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool) and k != "run_id"
        }

    def summary(self) -> dict[str, Any]:
        """The fields ``run --json`` prints."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "kind": self.kind,
            "status": self.status,
            "users": self.users,
            "entered": self.entered,
            "exited": self.exited,
            "traits_changed": self.traits_changed,
            "updates": self.updates,
            "delivered": self.delivered,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Plan:
    snapshot: Snapshot
    updates: list[Update]
    entered: int
    exited: int
    traits_changed: int


class Runner:
    """Runs jobs against one state store. ``clock``, ``sleep`` and ``client_factory`` are the seams tests use."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        client_factory: ClientFactory = default_client,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.client_factory = client_factory
        self.progress = progress

    def run(self, job: JobConfig, options: RunOptions = RunOptions()) -> RunReport:
        now = self.clock()
        tracked = self.store.tracked_keys(job.name)
        kind = (
            "full"
            if options.full
            else ("initial" if not tracked or not self.store.state_size(job.name) else "incremental")
        )
        run_id = self.store.start_run(job.name, kind, options.dry_run, now, space_id=job.space_id)
        report = RunReport(run_id, job.name, kind, options.dry_run)
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
        try:
            plan = self._plan(job, tracked, options.full)
            self._fill(report, plan)
            if options.dry_run:
                self.store.record_plan(report.run_id, plan.updates, "planned")
                report.status = "planned"
            else:
                self.store.set_tracked_keys(job.name, plan.snapshot.computations, report.run_id)
                self.store.record_plan(report.run_id, plan.updates, "pending")
                asyncio.run(self._deliver(job, report, plan.updates, now))
                report.status = "partial" if report.failed else "succeeded"
        except SyncError as exc:
            report.status, report.error = "failed", str(exc)
        except Exception as exc:
            report.status, report.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
            log.exception("run failed", extra={"job": job.name, "run_id": report.run_id})
        self.store.finish_run(report.run_id, report.status, report.counts(), self.clock(), report.error, report.issues)
        log.info("run finished", extra={"event": "run_finished", **report.summary(), "error": report.error})
        return report

    def _plan(self, job: JobConfig, tracked: dict[str, str], full: bool) -> Plan:
        snapshot = read_snapshot(job)
        comps = snapshot.computations
        baseline = self.store.load_baseline(job.name, comps, tracked)
        force = {c.key for c in comps} if full else {c.key for c in comps if c.key not in tracked}
        changes = diff_states(baseline.state, snapshot.state, comps, force)
        profiles = dict(snapshot.profiles)
        missing = [u for u in changes["user_id"].unique().tolist() if u not in profiles]
        profiles.update(self.store.known_profiles(job.name, missing))
        updates = list(plan_updates(job.name, changes, comps, snapshot.state, profiles, baseline.versions))
        kinds = changes["change"].value_counts()
        return Plan(
            snapshot,
            updates,
            int(kinds.get("entered", 0)),
            int(kinds.get("exited", 0)),
            int(kinds.get("trait", 0)),
        )

    @staticmethod
    def _fill(report: RunReport, plan: Plan) -> None:
        report.users = len(plan.snapshot.state)
        report.entered, report.exited, report.traits_changed = plan.entered, plan.exited, plan.traits_changed
        report.updates = len(plan.updates)
        report.skipped_rows = sum(issue.count for issue in plan.snapshot.issues)
        report.issues = [asdict(issue) for issue in plan.snapshot.issues]

    async def _deliver(self, job: JobConfig, report: RunReport, updates: Sequence[Update], now: datetime) -> None:
        by_user = {update.user_id: update for update in updates}
        pending: list[tuple[Update, DeliveryResult]] = []
        last_commit = time.monotonic()
        async with self.client_factory(job.destination.max_connections) as client:
            destination = ChartMogulDestination(client, job.destination, sleep=self.sleep, clock=self.clock)
            async for result in destination.send(self._outgoing(job, updates, now)):
                pending.append((by_user[result.user_id], result))
                report.delivered += result.delivered
                report.failed += not result.delivered
                if len(pending) >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    self.store.record_results(job.name, report.run_id, pending)
                    pending, last_commit = [], time.monotonic()
                if self.progress:
                    self.progress(report.delivered + report.failed, len(updates))
        self.store.record_results(job.name, report.run_id, pending)

    @staticmethod
    def _outgoing(job: JobConfig, updates: Sequence[Update], now: datetime) -> Iterator[Outgoing]:
        for update in updates:
            yield Outgoing(
                update.user_id, update.message_id, identify_call(update, space_id=job.space_id, timestamp=now)
            )
