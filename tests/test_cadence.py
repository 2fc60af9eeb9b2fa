import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sync.config import ScheduleConfig, parse_config
from sync.errors import ConfigError
from sync.scheduler.cadence import due_after, earliest_after, next_run_at

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DEFAULT = ScheduleConfig()


def test_a_job_without_a_completed_sync_runs_now() -> None:
    assert (
        next_run_at(
            DEFAULT, last_end=NOW - timedelta(minutes=5), has_completed_sync=False, now=NOW, rng=random.Random(1)
        )
        == NOW
    )
    assert next_run_at(DEFAULT, last_end=None, has_completed_sync=False, now=NOW, rng=random.Random(1)) == NOW


def test_the_default_cadence_is_two_to_three_hours_after_the_end_of_the_last_run() -> None:
    # A six-hour initial sync that just ended: the next run is 2-3 h from its end, not immediately.
    end = NOW - timedelta(minutes=1)
    starts = [
        next_run_at(DEFAULT, last_end=end, has_completed_sync=True, now=NOW, rng=random.Random(seed))
        for seed in range(200)
    ]
    assert all(end + timedelta(hours=2) <= s <= end + timedelta(hours=3) for s in starts)
    assert max(starts) - min(starts) > timedelta(minutes=45)  # the jitter spreads them


def test_an_overdue_job_runs_once_now_after_downtime() -> None:
    end = NOW - timedelta(hours=10)
    assert next_run_at(DEFAULT, last_end=end, has_completed_sync=True, now=NOW, rng=random.Random(3)) == NOW


def test_short_cadences_without_jitter_are_exact() -> None:
    schedule = ScheduleConfig(every=timedelta(seconds=45), jitter=timedelta(0))
    assert next_run_at(
        schedule, last_end=NOW, has_completed_sync=True, now=NOW, rng=random.Random(0)
    ) == NOW + timedelta(seconds=45)


def test_cron_fires_at_its_next_slot_after_the_last_end_in_its_time_zone() -> None:
    schedule = ScheduleConfig(cron="30 */3 * * *", timezone="Europe/Berlin")
    end = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)  # 11:00 in Berlin
    assert due_after(schedule, end, random.Random(0)) == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)  # 12:30 Berlin
    assert earliest_after(schedule, end) == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    overdue = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert next_run_at(schedule, last_end=overdue, has_completed_sync=True, now=NOW, rng=random.Random(0)) == NOW


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ({"cron": "every day"}, "schedule.cron: not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone: unknown time zone 'Mars/Olympus'"),
        ({"every": "0s"}, "schedule.every: must be longer than zero"),
        ({"every": "often"}, "schedule.every: expected a duration"),
        ({"enabled": "perhaps"}, "schedule.enabled: must be a valid boolean, not 'perhaps'"),
    ],
)
def test_schedules_are_validated(tmp_path: Path, schedule: dict[str, str], problem: str) -> None:
    jobs = [
        {
            "name": "j",
            "source": {"url": "sqlite:///w.db"},
            "audiences": [{"name": "a", "query": "SELECT 1"}],
            "destination": {"webhook_url": "https://example.com/h"},
            "schedule": schedule,
        }
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": jobs}, {}, tmp_path)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
