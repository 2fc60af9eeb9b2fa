"""When a job runs next. Pure: the schedule, what the store says about past runs, and ``now`` in; a time out.

- A job with no completed sync runs now (its initial sync).
- ``every`` + ``jitter``: the next run starts ``every`` plus a random share of ``jitter`` after the *end* of
  the last run, so a six-hour initial sync is followed by the next sync two to three hours after it ends.
- ``cron``: the first fire time at or after the end of the last run.
- A run that is already due (the scheduler was down) happens now, once, however many slots were missed.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from sync.config import ScheduleConfig


def next_run_at(
    schedule: ScheduleConfig, *, last_end: datetime | None, has_completed_sync: bool, now: datetime, rng: random.Random
) -> datetime:
    if not has_completed_sync or last_end is None:
        return now
    return max(due_after(schedule, last_end, rng), now)


def due_after(schedule: ScheduleConfig, last_end: datetime, rng: random.Random) -> datetime:
    """The next start the cadence allows after a run that ended at ``last_end`` (may be in the past)."""
    if schedule.cron:
        trigger = CronTrigger.from_crontab(schedule.cron, timezone=schedule.timezone)
        fire: datetime | None = trigger.get_next_fire_time(None, last_end)
        if fire is None:
            raise ValueError(f"the cron expression {schedule.cron!r} never fires again")
        return fire
    jitter = rng.uniform(0.0, schedule.jitter.total_seconds())
    return last_end + schedule.every + timedelta(seconds=jitter)


def earliest_after(schedule: ScheduleConfig, last_end: datetime) -> datetime:
    """The earliest start the cadence allows after ``last_end``, ignoring jitter (to tell early from due)."""
    if schedule.cron:
        return due_after(schedule, last_end, random.Random(0))
    return last_end + schedule.every
