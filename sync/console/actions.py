"""What the console does when started with ``--allow-actions``: run a job now (a dry run, a full resync),
retry its failed updates, pause, resume or skip it — each the CLI's own code path, recorded with the trigger
``console``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sync.clock import utc_now
from sync.config import Config, JobConfig
from sync.errors import SyncError
from sync.run.report import RunOptions
from sync.store import Store

if TYPE_CHECKING:  # a run (and the pandas, pyarrow and DuckDB it needs) loads with the first action
    from sync.run.runner import Runner

log = logging.getLogger(__name__)

# What the console can do to a job beside running it.
CONTROLS = ("retry", "pause", "resume", "skip")
# How long a request waits for the run it started to be recorded.
START_WAIT_S = 10.0


class Busy(SyncError):
    """A run of the job is going already (409)."""


@dataclass(frozen=True)
class Actions:
    """Acts on jobs; ``load`` reads one job's configuration (with its secrets) when it is acted on."""

    store: Store
    load: Callable[[str], Config]

    def start_run(self, job: str, full: bool = False, dry_run: bool = False, retry: bool = False) -> int:
        """Start a run of ``job`` in a thread of its own; the id of the run, once recorded."""
        config = self.load(job)
        settings = config.job(job)
        self._refuse_if_running(job)
        before = max((run.id for run in self.store.runs(job, 1)), default=0)
        options = RunOptions(full=full, dry_run=dry_run, trigger="console")
        from sync.run.alerts import Alerts
        from sync.run.runner import Runner

        runner = Runner(self.store, alerts=Alerts(config.notify))
        if retry:
            self.store.revive(job)
        thread = threading.Thread(target=self._run, args=(runner, settings, options), name=f"console-run-{job}")
        thread.start()
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:  # bounded: a run is recorded as soon as it starts
            newest = self.store.runs(job, 1)
            if newest and newest[0].id > before:
                return newest[0].id
            time.sleep(0.05)
        raise SyncError(f"job {job!r}: the run did not start within {START_WAIT_S:g} s")

    def control(self, job: str, action: str, now: datetime) -> str:
        """Pause, resume or skip the job's scheduled runs, or send its failed updates again now."""
        if action == "retry":
            return f"run {self.start_run(job, retry=True)} started"
        values: dict[str, bool] = {"pause": {"paused": True}, "resume": {"paused": False}, "skip": {"skip_next": True}}[
            action
        ]
        self.store.update_schedule(job, now, **values)
        return {"pause": "paused", "resume": "resumed", "skip": "will skip its next scheduled run"}[action]

    def _refuse_if_running(self, job: str) -> None:
        lease = self.store.lease(job)
        if lease is not None and lease.expires_at >= utc_now():
            raise Busy(f"job {job!r} is running now (run {lease.run_id} on {lease.owner})")

    @staticmethod
    def _run(runner: Runner, job: JobConfig, options: RunOptions) -> None:
        try:
            runner.run(job, options)
        except Exception:
            log.exception("a run started from the console could not be carried out", extra={"job": job.name})
