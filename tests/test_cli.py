"""The command line through its real entry point, in a subprocess, against a loopback receiver."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from sync.dev.receiver import Receiver
from tests.conftest import Warehouse

SECRET_PATH = "/webhook/s3cret-token"


def write_config(tmp_path: Path, warehouse: Warehouse, state_url: str, **destination: Any) -> Path:
    config = {
        "state_url": state_url,
        "jobs": [
            {
                "name": "contacts",
                "space_id": "spa_cli",
                "source": {"url": warehouse.url, "profiles": "SELECT user_id, email, first_name FROM profiles"},
                "audiences": [
                    warehouse.audience("VIP", "vip", key="vip_customers"),
                    warehouse.audience("Beta Testers", "beta"),
                ],
                "traits": [warehouse.trait("Total Revenue 180 Days", "revenue")],
                "destination": {
                    "webhook_url": "${CHARTMOGUL_WEBHOOK_URL}",
                    "backoff_initial": "10ms",
                    "backoff_max": "20ms",
                    "max_attempts": 2,
                    **destination,
                },
            }
        ],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(
    config: Path, *args: str, webhook: str = "", entry: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHARTMOGUL_WEBHOOK_URL": webhook}
    env.pop("AUDIENCE_SYNC_STATE_URL", None)
    command = (entry or [sys.executable, "-m", "sync"]) + ["--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def seeded(warehouse: Warehouse) -> Warehouse:
    warehouse.set_profiles(
        [{"user_id": f"u{i}", "email": f"user{i}@example.com", "first_name": f"F{i}"} for i in range(1, 5)]
    )
    warehouse.set_members("vip", ["u1", "u2"])
    warehouse.set_members("beta", ["u2", "u3"])
    warehouse.set_trait("revenue", {"u1": 5.5, "u4": 7})
    return warehouse


def secret_url(receiver: Receiver) -> str:
    return receiver.url.replace("/webhook", SECRET_PATH)


def test_validate_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "jobs:\n  - name: BAD\n    audiences: [{name: '!!!', query: 'SELECT 1'}]\n"
        "    destination: {webhook_url: 'http://hooks.example.com/s3cret', max_connections: -1}\n"
    )
    result = cli(path, "validate")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("config error: job 'BAD': ") for line in lines)
    assert "s3cret" not in result.stderr + result.stdout


def test_validate_accepts_the_shipped_jobs_yaml() -> None:
    result = cli(Path(__file__).parent.parent / "jobs.yaml", "validate")
    assert result.returncode == 0, result.stderr
    assert "order_completed_last_30days, vip_customers, churn_risk, beta_testers" in result.stdout


def test_run_json_then_runs_diff_and_messages(tmp_path: Path, seeded: Warehouse, receiver: Receiver) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    result = cli(config, "run", "contacts", "--json", webhook=receiver.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {
        "run_id": 1,
        "job": "contacts",
        "kind": "initial",
        "status": "succeeded",
        "users": 4,
        "entered": 4,
        "exited": 0,
        "traits_changed": 2,
        "updates": 4,
        "delivered": 4,
        "failed": 0,
        "unmatched": 0,
    }

    seeded.set_members("vip", ["u1"])
    second = json.loads(cli(config, "run", "contacts", "--json", webhook=receiver.url).stdout.splitlines()[-1])
    assert (second["kind"], second["exited"], second["updates"]) == ("incremental", 1, 1)

    runs = [json.loads(line) for line in cli(config, "runs", "--json").stdout.splitlines()]
    assert [(r["run_id"], r["kind"], r["status"]) for r in runs] == [
        (2, "incremental", "succeeded"),
        (1, "initial", "succeeded"),
    ]

    rows = list(csv.DictReader(io.StringIO(cli(config, "diff", "2", "--format", "csv").stdout)))
    assert rows == [
        {
            "user_id": "u2",
            "key": "vip_customers",
            "old": "true",
            "new": "false",
            "message_id": rows[0]["message_id"],
            "status": "delivered",
            "http_status": "200",
            "error": "",
            "run_id": "2",
            "change": "exited",
            "finished_at": rows[0]["finished_at"],
        }
    ]
    assert rows[0]["finished_at"].endswith("Z")
    jsonl = [
        json.loads(line) for line in cli(config, "diff", "1", "--format", "jsonl", "--user", "u1").stdout.splitlines()
    ]
    assert [(r["key"], r["new"]) for r in jsonl] == [("vip_customers", True), ("total_revenue_180_days", 5.5)]
    keyed = cli(config, "diff", "1", "--format", "jsonl", "--key", "beta_testers").stdout.splitlines()
    assert sorted(json.loads(line)["user_id"] for line in keyed) == ["u2", "u3"]
    table = cli(config, "diff", "2").stdout
    assert "vip_customers" in table and "delivered" in table

    shown = [json.loads(line) for line in cli(config, "messages", "1").stdout.splitlines()]
    received = [b for b in receiver.accepted() if b["message_id"] in {s["message_id"] for s in shown}]
    key = lambda body: body["message_id"]  # noqa: E731
    assert sorted(shown, key=key) == sorted(received, key=key) and len(shown) == 4  # the bodies as received
    calls = [json.loads(line) for line in cli(config, "messages", "1", "--calls").stdout.splitlines()]
    bodies = {b["message_id"]: b for b in receiver.accepted()}
    assert len(calls) == 4
    for call in calls:
        body = bodies[call["messageId"]]
        assert (call["userId"], call["timestamp"], call["sentAt"]) == (
            body["user_id"],
            body["timestamp"],
            body["sent_at"],
        )
        assert call["context"]["personas"]["space_id"] == "spa_cli"
        assert call["integrations"] == {"All": False, "ChartMogul": True}


def test_partial_failure_exits_3_and_never_prints_the_webhook(
    tmp_path: Path, seeded: Warehouse, faulty_receiver: Receiver
) -> None:
    faulty_receiver.faults.respond = lambda body: (
        422 if body["user_id"] == "u1" else (503 if body["user_id"] == "u2" else None)
    )
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    webhook = secret_url(faulty_receiver)
    outputs = [cli(config, "--log-level", "debug", "run", "contacts", webhook=webhook)]
    assert outputs[0].returncode == 3, outputs[0].stderr
    assert "2 delivered, 2 failed" in outputs[0].stdout
    outputs += [
        cli(config, *args)
        for args in (["runs"], ["runs", "--json"], ["diff", "1", "--format", "jsonl"], ["messages", "1"])
    ]
    failed = {
        json.loads(line)["user_id"]: json.loads(line)
        for line in outputs[3].stdout.splitlines()
        if json.loads(line)["status"] == "failed"
    }
    assert failed["u1"]["http_status"] == 422 and failed["u1"]["error"].startswith("HTTP 422")
    assert failed["u2"]["http_status"] == 503
    for output in outputs:
        assert "s3cret" not in output.stdout + output.stderr
    state = (tmp_path / "state.db").read_bytes()
    assert b"s3cret" not in state


def test_plan_prints_the_changes_and_sends_nothing(tmp_path: Path, seeded: Warehouse, receiver: Receiver) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    result = cli(config, "plan", "contacts", webhook=receiver.url)
    assert result.returncode == 0, result.stderr
    assert "total_revenue_180_days" in result.stdout and "planned" in result.stdout
    assert receiver.records == []
    assert "(dry run)" in cli(config, "runs").stdout


def test_a_failing_query_exits_1_and_an_unknown_job_exits_2(
    tmp_path: Path, seeded: Warehouse, receiver: Receiver
) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    with seeded._db() as db:
        db.execute("DROP TABLE members")
    failed = cli(config, "run", "contacts", webhook=receiver.url)
    assert failed.returncode == 1
    assert "audience 'vip_customers' query failed: no such table: members" in failed.stderr
    unknown = cli(config, "run", "nope", webhook=receiver.url)
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr


def test_an_unreachable_state_store_exits_1_without_its_password(tmp_path: Path, seeded: Warehouse) -> None:
    config = write_config(tmp_path, seeded, "postgresql+psycopg://sync:hunter2@127.0.0.1:1/state")
    result = cli(config, "run", "contacts", webhook="https://example.com/hook")
    assert result.returncode == 1
    assert "cannot use the state store" in result.stderr and "hunter2" not in result.stderr


def test_the_console_script_is_installed_and_runs(tmp_path: Path, seeded: Warehouse, receiver: Receiver) -> None:
    script = Path(sys.executable).parent / "audience-sync"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    result = cli(config, "run", "contacts", "--json", webhook=receiver.url, entry=[str(script)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["delivered"] == 4


def test_json_logs_carry_counts_and_no_pii(tmp_path: Path, seeded: Warehouse, receiver: Receiver) -> None:
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    result = cli(config, "--log-format", "json", "run", "contacts", webhook=receiver.url)
    events = [json.loads(line) for line in result.stderr.splitlines()]
    finished = [e for e in events if e.get("event") == "run_finished"]
    assert finished and finished[0]["delivered"] == 4 and finished[0]["level"] == "info"
    assert "example.com" not in result.stderr and "127.0.0.1" not in result.stderr


def test_progress_is_logged_without_a_terminal_and_drawn_on_one(
    tmp_path: Path, seeded: Warehouse, receiver: Receiver
) -> None:
    import pty

    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    plain = cli(config, "run", "contacts", webhook=receiver.url)
    progress = [line for line in plain.stderr.splitlines() if "delivery progress" in line]
    assert progress and "done=4 total=4" in progress[-1]
    assert "querying" in plain.stderr and "sending" in plain.stderr and "timings=" in plain.stderr

    seeded.set_members("beta", ["u1", "u2", "u3", "u4"])
    main, follower = pty.openpty()
    env = {**os.environ, "CHARTMOGUL_WEBHOOK_URL": receiver.url, "COLUMNS": "100"}
    process = subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), "run", "contacts"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        timeout=60,
        check=False,
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main)
    assert process.returncode == 0
    assert b"sending" in drawn and b"delivery progress" not in drawn  # the bar names the phase


def test_every_command_runs_with_the_collector_thresholds_a_run_needs() -> None:
    """A run's millions of short-lived containers would trigger a full collection every few thousand updates
    at CPython's default thresholds (bench/segment.py measures what that costs)."""
    from sync.cli.main import GC_THRESHOLDS

    shipped = Path(__file__).parent.parent / "jobs.yaml"
    script = (
        "import gc\nfrom sync.cli.main import cli\n"
        f"cli.main(['--config', {str(shipped)!r}, 'validate'], standalone_mode=False)\nprint(gc.get_threshold())"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(GC_THRESHOLDS) != str((700, 10, 10))


def test_validate_loads_the_configuration_alone_and_every_listed_command_resolves() -> None:
    """``validate`` answers without importing what a run needs (pandas, the HTTP clients, the state store),
    and every name ``--help`` lists is the command of that name."""
    from sync.cli.main import COMMANDS, cli

    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert command is not None and command.name == name
    shipped = Path(__file__).parent.parent / "jobs.yaml"
    heavy = ["pandas", "pyarrow", "duckdb", "httpx", "aiohttp", "sync.store", "sync.run.runner", "alembic"]
    script = (
        "import sys\nfrom sync.cli.main import cli\n"
        f"cli.main(['--config', {str(shipped)!r}, 'validate'], standalone_mode=False)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
