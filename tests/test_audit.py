"""Auditing: history, filtered and exported diffs, audience sizes, retention — on SQLite and PostgreSQL."""

import csv
import json
import tracemalloc
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from sqlalchemy import update

from sync.audit.display import print_rows
from sync.audit.queries import ChangeFilter, audiences, change_records, history, moment, prune_job
from sync.config import JobConfig
from sync.dev.receiver import Action, Receiver
from sync.errors import SyncError
from sync.run.runner import Runner, RunReport
from sync.store import AuditFilter, Store
from sync.store.models import Run
from tests.conftest import Warehouse, make_job

NOW = datetime.now(UTC)


class Story:
    """Four runs of one job: an initial sync; exits and entries; u1 always rejected, dead after the second
    run; u6 rejected once (run 3) and delivered on the next run."""

    def __init__(self, store: Store, runner: Runner, warehouse: Warehouse, receiver: Receiver) -> None:
        self.store = store
        self.rejected = {"u1"}
        receiver.faults.respond = self.reject
        self.job: JobConfig = make_job(
            warehouse,
            receiver.url,
            dead_after=2,
            audiences=[warehouse.audience("VIP", "vip"), warehouse.audience("Beta", "beta")],
            traits=[warehouse.trait("LTV", "ltv")],
        )
        warehouse.set_members("vip", ["u1", "u2", "u3", "u4"])
        warehouse.set_members("beta", ["u2"])
        warehouse.set_trait("ltv", {"u2": 10, "u3": 20})
        self.reports: list[RunReport] = [runner.run(self.job)]
        warehouse.set_members("vip", ["u1", "u2", "u5"])  # u3, u4 exit; u5 enters
        warehouse.set_trait("ltv", {"u2": 15, "u3": 20})
        self.reports.append(runner.run(self.job))
        warehouse.set_members("beta", ["u2", "u3", "u6"])
        self.rejected.add("u6")
        self.reports.append(runner.run(self.job))  # u1 parked (dead after run 2); u6 rejected
        self.rejected.discard("u6")
        self.reports.append(runner.run(self.job))  # u6 delivered

    def reject(self, body: Mapping[str, Any]) -> Action:
        return 422 if body["user_id"] in self.rejected else None


@pytest.fixture
def story(store: Store, runner: Runner, warehouse: Warehouse, faulty_receiver: Receiver) -> Story:
    return Story(store, runner, warehouse, faulty_receiver)


def records(store: Store, changes: ChangeFilter | None = None, **filters: Any) -> list[dict[str, Any]]:
    return list(change_records(store, AuditFilter(**filters), changes))


def test_the_story_is_what_the_tests_below_assume(story: Story) -> None:
    assert [(r.kind, r.status, r.updates, r.delivered, r.failed, r.parked) for r in story.reports] == [
        ("initial", "partial", 4, 3, 1, 0),
        ("incremental", "partial", 5, 4, 1, 0),
        ("incremental", "partial", 2, 1, 1, 1),
        ("incremental", "succeeded", 1, 1, 0, 1),
    ]


def test_history_tells_why_a_user_is_in_an_audience(story: Story) -> None:
    u2 = history(story.store, "contacts", "u2")
    assert u2["acknowledged"] == {"vip": True, "beta": True, "ltv": 15}
    assert [(r["run_id"], r["key"], r["old"], r["new"], r["status"]) for r in u2["timeline"]] == [
        (1, "vip", None, True, "delivered"),
        (1, "beta", None, True, "delivered"),
        (1, "ltv", None, 10, "delivered"),
        (2, "ltv", 10, 15, "delivered"),
    ]
    assert all(r["message_id"].startswith("as-") and r["finished_at"] for r in u2["timeline"])
    u1 = history(story.store, "contacts", "u1")
    assert u1["acknowledged"] == {} and [(r["run_id"], r["status"]) for r in u1["timeline"]] == [
        (1, "dead"),
        (2, "dead"),
    ]
    assert all(r["http_status"] == 422 and r["error"].startswith("HTTP 422") for r in u1["timeline"])
    u6 = history(story.store, "contacts", "u6")
    assert [(r["run_id"], r["status"], r["http_status"]) for r in u6["timeline"]] == [
        (3, "failed", 422),
        (4, "delivered", 200),
    ]
    assert u6["acknowledged"] == {"beta": True}


def test_diff_filters_by_status_change_key_and_time(story: Story) -> None:
    store = story.store
    assert {(r["run_id"], r["user_id"]) for r in records(store, job="contacts", status="dead")} == {
        (1, "u1"),
        (2, "u1"),
    }
    assert {(r["run_id"], r["user_id"]) for r in records(store, job="contacts", status="failed")} == {(3, "u6")}
    assert {r["user_id"] for r in records(store, job="contacts", status="delivered", run_id=4)} == {"u6"}
    exits = records(store, ChangeFilter(change="exited"), job="contacts")
    assert {(r["user_id"], r["key"]) for r in exits} == {("u3", "vip"), ("u4", "vip")}
    entries = records(store, ChangeFilter(key="vip", change="entered"), job="contacts")
    assert {r["user_id"] for r in entries} == {"u1", "u2", "u3", "u4", "u5"}
    traits = records(store, ChangeFilter(change="trait"), job="contacts")
    assert {(r["user_id"], r["new"]) for r in traits} == {("u2", 10), ("u3", 20), ("u2", 15)}
    assert records(store, job="contacts", since=NOW + timedelta(hours=1)) == []
    assert len(records(store, job="contacts", until=NOW - timedelta(hours=1))) == 0
    assert {r["run_id"] for r in records(store, run_id=2)} == {2}
    with pytest.raises(SyncError, match="no run with id 99"):
        records(store, run_id=99)


def test_moments_are_times_or_ages() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert moment("7d", now) == datetime(2026, 11, 15, 12, tzinfo=UTC)
    assert moment("2026-11-15", now) == datetime(2026, 11, 15, tzinfo=UTC)
    assert moment("2026-11-15T08:30+01:00", now) == datetime(2026, 11, 15, 7, 30, tzinfo=UTC)
    with pytest.raises(SyncError, match="neither a time"):
        moment("last tuesday", now)


def test_exports_in_every_format(story: Story, tmp_path: Path) -> None:
    fields = ("user_id", "key", "old", "new", "status", "run_id", "change")
    console = Console(file=open(tmp_path / "table.txt", "w"), width=200)  # noqa: SIM115 - closed below
    expected = records(story.store, job="contacts")
    for fmt in ("csv", "jsonl", "parquet"):
        written = print_rows(console, iter(expected), fields, fmt, tmp_path / f"out.{fmt}")
        assert written == len(expected)
    with open(tmp_path / "out.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["user_id"], r["key"], r["new"]) for r in rows] == [
        (r["user_id"], r["key"], json.dumps(r["new"])) for r in expected
    ]
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["new"]) for r in lines] == [(r["user_id"], r["new"]) for r in expected]
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == len(expected)
    assert table.schema.field("run_id").type == "int64"
    assert table.column("new").to_pylist() == [json.dumps(r["new"]) for r in expected]
    assert print_rows(console, iter(expected), fields, "table") == len(expected)
    console.file.close()
    with pytest.raises(SyncError, match="needs --output"):
        print_rows(console, iter(expected), fields, "parquet")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_exports_stream_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    def rows(n: int) -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield {
                "user_id": f"u{i:010d}",
                "key": "vip",
                "old": None,
                "new": True,
                "run_id": 1,
                "message_id": f"as-{i:040d}",
                "status": "delivered",
            }

    fields = ("user_id", "key", "old", "new", "run_id", "message_id", "status")
    peaks = []
    for n in (60_000, 240_000):
        tracemalloc.start()
        print_rows(Console(), rows(n), fields, fmt, tmp_path / f"{n}.{fmt}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Four times the rows: memory stays within one Parquet row group, far from four times as much.
    assert peaks[1] < 1.5 * peaks[0] + 1_000_000


def test_audience_sizes_over_time_match_the_acknowledged_state(story: Story) -> None:
    by_key = {entry["key"]: entry for entry in audiences(story.store, "contacts")}
    assert [r["size"] for r in by_key["vip"]["runs"]] == [3, 2, 2, 2]  # u1 never acknowledged
    assert by_key["vip"]["size"] == sum(
        1 for u in ("u1", "u2", "u3", "u4", "u5") if (story.store.acknowledged("contacts", u) or ({},))[0].get("vip")
    )
    assert [(r["delivered_entered"], r["delivered_exited"]) for r in by_key["vip"]["runs"]] == [
        (3, 0),
        (1, 2),
        (0, 0),
        (0, 0),
    ]
    assert by_key["beta"]["size"] == 3 and by_key["ltv"]["kind"] == "trait"
    assert by_key["vip"]["last_change"] is not None


def test_recent_audience_sizes_are_the_tail_of_the_whole_history(story: Story) -> None:
    whole = audiences(story.store, "contacts")
    for recent in (1, 2, 3):
        tail = audiences(story.store, "contacts", recent=recent)
        assert [e["size"] for e in tail] == [e["size"] for e in whole]  # the size counts every run
        assert [e["runs"] for e in tail] == [e["runs"][-recent:] for e in whole]


def test_pruning_keeps_summaries_state_and_sizes(story: Story) -> None:
    store = story.store
    with store.engine.begin() as connection:  # the first two runs are old
        connection.execute(update(Run).where(Run.id <= 2).values(started_at=NOW - timedelta(days=45)))
    sizes = audiences(store, "contacts")
    removed = prune_job(store, story.job, NOW)
    assert removed == story.reports[0].updates + story.reports[1].updates
    assert {r["run_id"] for r in records(store, job="contacts")} == {3, 4}
    assert [r.id for r in store.runs("contacts")] == [4, 3, 2, 1]
    assert audiences(store, "contacts") == sizes
    assert store.acknowledged("contacts", "u2") == ({"vip": True, "beta": True, "ltv": 15}, 2)
    assert prune_job(store, story.job, NOW) == 0
