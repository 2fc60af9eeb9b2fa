"""The audit commands through the real entry point, on a store with failed and dead updates."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sync.dev.receiver import Receiver
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import LogWatch, RecordingSleep, Warehouse, job_dict
from tests.test_audit import Story


@pytest.fixture
def audited(tmp_path: Path, warehouse: Warehouse, faulty_receiver: Receiver, sleep: RecordingSleep) -> Path:
    """A jobs.yaml whose state store holds the audit story's four runs."""
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store.open(state_url)
    try:
        Story(store, Runner(store, sleep=sleep), warehouse, faulty_receiver)
    finally:
        store.close()
    job = job_dict(warehouse, "https://chartmogul.example/hook", audiences=[warehouse.audience("VIP", "vip")])
    config = tmp_path / "jobs.yaml"
    config.write_text(yaml.safe_dump({"state_url": state_url, "jobs": [job]}))
    return config


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDIENCE_SYNC_STATE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_history_explains_a_membership(audited: Path) -> None:
    table = cli(audited, "history", "contacts", "u2")
    assert table.returncode == 0, table.stderr
    assert "the destination acknowledged" in table.stdout and "vip=true" in table.stdout
    timeline = json.loads(cli(audited, "history", "contacts", "u2", "--json").stdout)
    assert [(r["run_id"], r["key"], r["new"]) for r in timeline["timeline"]][:1] == [(1, "vip", True)]
    assert timeline["acknowledged"]["vip"] is True


def test_export_last_weeks_exits_as_csv_and_parquet(audited: Path, tmp_path: Path) -> None:
    out = tmp_path / "exits.csv"
    result = cli(
        audited,
        "diff",
        "--job",
        "contacts",
        "--change",
        "exited",
        "--since",
        "7d",
        "--format",
        "csv",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "2 rows written" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {(r["user_id"], r["key"], r["new"], r["change"]) for r in rows} == {
        ("u3", "vip", "false", "exited"),
        ("u4", "vip", "false", "exited"),
    }
    parquet = tmp_path / "all.parquet"
    assert cli(audited, "diff", "--job", "contacts", "--format", "parquet", "--output", str(parquet)).returncode == 0
    assert pq.read_table(parquet).num_rows == sum(
        1 for _ in cli(audited, "diff", "--job", "contacts", "--format", "jsonl").stdout.splitlines()
    )
    dead = cli(audited, "diff", "--job", "contacts", "--status", "dead", "--format", "jsonl").stdout.splitlines()
    assert {json.loads(line)["user_id"] for line in dead} == {"u1"}


def test_usage_errors_of_the_audit_commands_exit_2(audited: Path) -> None:
    assert cli(audited, "diff").returncode == 2
    result = cli(audited, "diff", "1", "--format", "parquet")
    assert result.returncode == 2 and "--format parquet needs --output FILE" in result.stderr
    since = cli(audited, "diff", "--job", "contacts", "--since", "someday")
    assert since.returncode == 2 and "neither a time" in since.stderr
    assert cli(audited, "diff", "--job", "contacts", "--until", "yesterday").returncode == 2
    assert cli(audited, "diff", "999").returncode == 2


@pytest.mark.parametrize(
    "command",
    [
        ("history", "nojob", "u1"),
        ("audiences", "nojob"),
        ("report", "nojob", "--output", "r.html"),
        ("failed", "nojob"),
        ("runs", "nojob"),
        ("diff", "--job", "nojob"),
    ],
)
def test_audit_commands_on_a_job_the_store_does_not_know_exit_2(audited: Path, command: tuple[str, ...]) -> None:
    result = cli(audited, *command)
    assert result.returncode == 2, result.stderr
    assert "no job named 'nojob'" in result.stderr and "contacts" in result.stderr
    assert result.stdout == ""


def test_audiences_lists_sizes_and_flows(audited: Path) -> None:
    table = cli(audited, "audiences", "contacts")
    assert table.returncode == 0 and "vip" in table.stdout and "+1/-2" in table.stdout
    entries = [json.loads(line) for line in cli(audited, "audiences", "contacts", "--json").stdout.splitlines()]
    assert {e["key"]: e["size"] for e in entries if e["kind"] == "audience"} == {"vip": 2, "beta": 3}


def test_report_and_prune(audited: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = cli(audited, "report", "contacts", "--output", str(page))
    assert result.returncode == 0, result.stderr
    assert "<svg class=chart" in page.read_text()
    kept = cli(audited, "prune", "--days", "1")
    assert kept.returncode == 0 and "removed 0 update rows" in kept.stdout
    assert cli(audited, "diff", "1", "--format", "jsonl").stdout.strip()


def test_every_listing_has_json(audited: Path) -> None:
    for args in (
        ["runs", "--json"],
        ["audiences", "contacts", "--json"],
        ["failed", "contacts", "--json"],
        ["history", "contacts", "u1", "--json"],
        ["status", "--json"],
    ):
        lines = cli(audited, *args).stdout.strip().splitlines()
        assert lines and all(json.loads(line) is not None for line in lines), args


def test_the_daemon_prunes_when_it_starts(tmp_path: Path, warehouse: Warehouse, receiver: Receiver) -> None:
    from sync.config import parse_config
    from sync.scheduler.daemon import Daemon

    job = job_dict(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")])
    job["schedule"] = {"enabled": False}
    config = parse_config({"state_url": f"sqlite:///{tmp_path / 's.db'}", "jobs": [job]}, {}, tmp_path)
    store = Store.open(config.state_url)
    daemon = Daemon(config, store)
    with LogWatch("audit rows pruned") as pruned:
        daemon.start()
        try:
            assert pruned.seen.wait(20)
        finally:
            daemon.shutdown()
            store.close()
    assert pruned.records[0].__dict__["retention_days"] == 30
