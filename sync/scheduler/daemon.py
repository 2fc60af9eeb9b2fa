"""``audience-sync schedule``: the long-lived daemon that runs each enabled job on its cadence.

Each job is an APScheduler one-shot trigger that reschedules itself after every run, so that the interval
counts from the end of the last run. Jobs run in their own threads: a slow or failing job never delays
another job. Overlap with a manual ``run`` (or another daemon) is prevented by the job's lease.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync.audit.queries import prune_job
from sync.clock import Clock, utc_now
from sync.config import Config, JobConfig
from sync.run.alerts import FAILING_AFTER, Alerts
from sync.run.lease import holder_is_dead, process_owner
from sync.run.runner import Runner, RunOptions
from sync.scheduler.cadence import earliest_after, next_run_at
from sync.scheduler.metrics import Metrics
from sync.store import TROUBLE, Store

log = logging.getLogger(__name__)

# A paused job is looked at again this often, so that `resume` takes effect soon.
PAUSED_RECHECK = timedelta(minutes=1)
# A fire that finds its job running elsewhere (a manual run, another worker) tries again after this long, or
# after the job's own interval when that is shorter; such fires are not recorded as runs.
BUSY_RETRY = timedelta(seconds=30)
# Statuses of a run that count as a completed sync (something was delivered and acknowledged).
COMPLETED = ("succeeded", "partial")
# A scheduler records that it is alive this often; `status` takes one unseen for SCHEDULER_STALE as gone.
BEAT_INTERVAL = timedelta(seconds=15)


class Daemon:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        stop: threading.Event | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        runner: Runner | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.stop = stop or threading.Event()
        self.clock = clock
        self.rng = rng or random.Random()
        self.runner = runner or Runner(
            store, clock=clock, stop=self.stop, owner=process_owner(), alerts=Alerts(config.notify), metrics=metrics
        )
        self.jobs = {job.name: job for job in config.jobs if job.schedule.enabled}
        self._planning = threading.Lock()
        self._beats = threading.Thread(target=self._beating, name="scheduler-heartbeat", daemon=True)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(self.jobs)) + 1)},  # + the daily prune
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def serve(self) -> None:
        """Run until ``stop`` is set (by SIGTERM or SIGINT), then wind down and return."""
        self.start()
        # Waking up now and then lets the main thread run the signal handlers: a signal delivered to another
        # thread (the engine's worker threads among them) does not interrupt a wait without a timeout.
        while not self.stop.wait(0.5):
            pass
        self.shutdown()

    def start(self) -> None:
        for job in self.jobs.values():
            lease = self.store.lease(job.name)
            if lease is None or lease.expires_at < self.clock():  # nobody is running it: earlier runs died
                self.store.mark_interrupted(job.name, self.clock())
            self._plan_next(job)
        self.scheduler.add_job(
            self._prune, IntervalTrigger(days=1), id="prune", name="prune", next_run_time=self.clock()
        )
        self._beat()
        self.scheduler.start()
        self._beats.start()
        log.info("scheduler started", extra={"event": "scheduler_started", "jobs": ",".join(self.jobs)})

    def shutdown(self) -> None:
        with self._planning:  # no job thread is between "not stopping" and add_job now, nor will be
            self.stop.set()
        # APScheduler 3 removes a one-shot job just after handing it to the executor; a shutdown in between
        # makes that removal fail in the scheduler's thread. Pausing stops new dispatches, and its job-store
        # lock, held for a whole dispatch, is free again once one in progress has finished.
        self.scheduler.pause()
        with self.scheduler._jobstores_lock:
            pass
        self.scheduler.shutdown(wait=True)
        if self._beats.is_alive():
            self._beats.join(timeout=10)
        try:
            self.store.scheduler_gone(self.runner.owner)
        except Exception:
            log.warning("could not record that the scheduler stopped; status will show it gone soon", exc_info=True)
        log.info("scheduler stopped", extra={"event": "scheduler_stopped"})

    def _beat(self) -> None:
        self.store.scheduler_beat(self.runner.owner, socket.gethostname(), os.getpid(), list(self.jobs), self.clock())

    def _beating(self) -> None:
        """Records that this scheduler is alive, every ``BEAT_INTERVAL``, until it stops."""
        while not self.stop.wait(BEAT_INTERVAL.total_seconds()):
            try:
                self._beat()
            except Exception:
                log.warning("could not record the scheduler's heartbeat; retrying", exc_info=True)

    def _plan_next(self, job: JobConfig, at: datetime | None = None, *, after_run: bool = False) -> datetime:
        """Plan the job's next fire; after one of its own runs the cadence always applies (no tight loop
        when an initial sync keeps failing)."""
        if at is None:
            last = self.store.last_run(job.name)
            completed = after_run or self.store.last_run(job.name, COMPLETED) is not None
            at = next_run_at(
                job.schedule,
                last_end=last.finished_at if last else None,
                has_completed_sync=completed,
                now=self.clock(),
                rng=self.rng,
            )
        with self._planning:
            if self.stop.is_set():
                return at
            self.store.update_schedule(job.name, self.clock(), next_run_at=at)
            self._add(job, at)
        log.info("next run planned", extra={"job": job.name, "at": at.isoformat(timespec="seconds")})
        return at

    def _add(self, job: JobConfig, at: datetime) -> None:
        # One APScheduler job per planned fire: re-adding the id of the instance that is still running would
        # trip max_instances and drop the fire. A job only plans its next fire from start or from its own.
        self.scheduler.add_job(
            self._fire,
            DateTrigger(run_date=at),
            args=[job.name],
            id=f"{job.name}@{at.isoformat()}",
            name=job.name,
            replace_existing=True,
        )

    def _fire(self, name: str) -> None:
        job = self.jobs[name]
        if self.stop.is_set():
            return
        try:
            if self._held_back(job) or self._busy(job):
                return
            report = self.runner.run(job, RunOptions(trigger="scheduled"))
            self._report_failures(job, report.status)
        except Exception:
            log.exception("the scheduled run could not be carried out", extra={"job": name})
        self._plan_next(job, after_run=True)

    def _busy(self, job: JobConfig) -> bool:
        """The job is running elsewhere: try again shortly instead of recording a skipped run."""
        lease = self.store.lease(job.name)
        now = self.clock()
        if lease is None or lease.expires_at < now or lease.owner == self.runner.owner or holder_is_dead(lease.owner):
            return False
        wait = min(BUSY_RETRY, job.schedule.every)
        log.info(
            "the job is running elsewhere; trying again shortly",
            extra={"job": job.name, "holder": lease.owner, "retry_in_s": wait.total_seconds()},
        )
        self._plan_next(job, now + wait)
        return True

    def _held_back(self, job: JobConfig) -> bool:
        """Paused, told to skip this run, or run by hand since it was planned: plan again instead of running."""
        now = self.clock()
        control = self.store.schedule(job.name)
        if control is not None and control.paused:
            log.info("job is paused", extra={"job": job.name})
            self._plan_next(job, now + min(PAUSED_RECHECK, job.schedule.every))
            return True
        if control is not None and control.skip_next:
            self.store.update_schedule(job.name, now, skip_next=False)
            log.info("run skipped by the operator", extra={"job": job.name})
            self._plan_next(job, now + job.schedule.every)
            return True
        last = self.store.last_run(job.name)
        completed = self.store.last_run(job.name, COMPLETED) is not None
        if completed and last and last.finished_at and earliest_after(job.schedule, last.finished_at) > now:
            log.info("a run finished since this one was planned; planning from its end", extra={"job": job.name})
            self._plan_next(job)
            return True
        return False

    def _prune(self) -> None:
        """Daily: per-update audit rows past each job's retention go; summaries and state stay."""
        for job in self.config.jobs:
            try:
                removed = prune_job(self.store, job, self.clock())
            except Exception:
                log.exception("pruning the audit trail failed", extra={"job": job.name})
                continue
            log.info(
                "audit rows pruned",
                extra={"job": job.name, "removed": removed, "retention_days": job.audit_retention_days},
            )

    def _report_failures(self, job: JobConfig, status: str) -> None:
        if status not in TROUBLE:
            return
        failures = self.store.consecutive_failures(job.name)
        if failures >= FAILING_AFTER:
            log.error(
                "job has failed or been blocked %d times in a row; it keeps being retried on its cadence",
                failures,
                extra={"event": "job_failing", "job": job.name, "consecutive_failures": failures},
            )
