"""A new user's first hour: each command needs only the secrets of the jobs it acts on, problems are told in
the product's words, options go on either side of the command, and the demo runs from any folder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sync.config import load_config
from sync.dev.receiver import Faults, Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse, job_dict, make_config
from tests.test_cli import seeded  # noqa: F401 - the fixture is used by name


def two_jobs(tmp_path: Path, warehouse: Warehouse) -> Path:
    source = {"url": warehouse.url}
    vip = warehouse.audience("VIP", "vip")
    config = {
        "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "jobs": [
            {
                "name": "cm-webhook",
                "source": source,
                "audiences": [vip],
                "destination": {"webhook_url": "${CHARTMOGUL_WEBHOOK_URL}"},
            },
            {
                "name": "segment",
                "source": source,
                "audiences": [vip],
                "destination": {
                    "type": "segment",
                    "write_key": "${SEGMENT_WRITE_KEY}",
                    "endpoint": "http://127.0.0.1:9/v1/batch",
                },
            },
            {
                "name": "segment-eu",
                "source": source,
                "audiences": [vip],
                "destination": {
                    "type": "segment",
                    "write_key": "${SEGMENT_WRITE_KEY}",
                    "endpoint": "http://127.0.0.1:9/v1/batch",
                },
            },
        ],
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def audience_sync(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("AUDIENCE_SYNC_STATE_URL", "SEGMENT_WRITE_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "sync", *args],
        capture_output=True,
        text=True,
        env={**environment, **env},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_a_command_needs_only_the_secrets_of_the_job_it_acts_on(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    config = two_jobs(tmp_path, seeded)
    with Receiver() as receiver:
        env = {"CHARTMOGUL_WEBHOOK_URL": receiver.url}
        ran = audience_sync("--config", str(config), "run", "cm-webhook", env=env)
        assert ran.returncode == 0, ran.stderr
        assert len(receiver.records) == 2  # u1 and u2 are VIPs
    checked = audience_sync("--config", str(config), "validate", env=env)
    assert checked.returncode == 2
    problems = [line for line in checked.stderr.splitlines() if line.startswith("config error")]
    assert problems == [
        "config error: environment variable SEGMENT_WRITE_KEY is not set (used by job 'segment': "
        "destination.write_key, job 'segment-eu': destination.write_key; write ${SEGMENT_WRITE_KEY:-default} for "
        "a default)"
    ]
    assert audience_sync("--config", str(config), "validate", "cm-webhook", env=env).returncode == 0
    other = audience_sync("--config", str(config), "run", "segment", env=env)
    assert other.returncode == 2 and "SEGMENT_WRITE_KEY" in other.stderr and "at least 1 item" not in other.stderr
    unknown = audience_sync("--config", str(config), "run", "nope", env=env)
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr and "cm-webhook" in unknown.stderr


@pytest.mark.parametrize(
    "setting,expected",
    [
        ({"source": "oops"}, "job 'a': source: must be a mapping of settings (name: value), not text"),
        ({"audiance": []}, "job 'a': audiance: unknown setting; did you mean audiences?"),
        ({"destination": {"type": "chartmogull"}}, "unknown destination type 'chartmogull'; use one of chartmogul, "),
        ({"destination": {}}, "job 'a': destination.webhook_url: required, and not given"),
        ({"destination": {"webhook_url": "https://x.example.com/h", "max_atempts": 2}}, "did you mean max_attempts?"),
        ({"destination": {"webhook_url": "https://x.example.com/h", "timeout": [1]}}, "destination.timeout: "),
        ({"subject": "team"}, "job 'a': subject: must be 'user' or 'account', not 'team'"),
    ],
)
def test_configuration_problems_are_told_in_the_products_words(
    tmp_path: Path, setting: dict[str, object], expected: str
) -> None:
    job = {
        "name": "a",
        "audiences": [{"name": "x", "file": "x.csv"}],
        "destination": {"webhook_url": "https://x.example.com/h"},
    }
    (tmp_path / "x.csv").write_text("user_id\n")
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"jobs": [{**job, **setting}]}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = "\n".join(caught.value.problems)
    assert expected in text
    for phrase in ("Field required", "Input should be", "instance of", "Value error"):
        assert phrase not in text


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_postgres_url_as_hosting_providers_hand_it_out_is_postgresql_through_psycopg(scheme: str) -> None:
    url = f"{scheme}://user:pw@db.example.com:5432/analytics"
    job = {
        "name": "a",
        "source": {"url": url},
        "audiences": [{"name": "x", "query": "SELECT 1"}],
        "destination": {"webhook_url": "https://x.example.com/h"},
    }
    config = make_config(f"{scheme}://u@localhost/state", [job])
    assert config.jobs[0].source.url == "postgresql+psycopg://user:pw@db.example.com:5432/analytics"
    assert config.state_url == "postgresql+psycopg://u@localhost/state"


def test_a_profiles_query_without_user_id_says_so_and_how_to_fix_it(
    store: Store, warehouse: Warehouse, sleep: RecordingSleep
) -> None:
    warehouse.set_profiles([{"user_id": "u1", "email": "a@example.com", "first_name": "A"}])
    warehouse.set_members("vip", ["u1"])
    raw = job_dict(warehouse, "http://127.0.0.1:9/hook", audiences=[warehouse.audience("VIP", "vip")])
    raw["source"]["profiles"] = "SELECT user_id AS id, email FROM profiles"
    report = Runner(store, sleep=sleep).run(make_config("sqlite://", [raw]).jobs[0])
    assert report.status == "failed"
    assert (
        report.error is not None and "the query must return a user_id column (its columns: id, email)" in report.error
    )
    assert "SELECT id AS user_id" in report.error and "unknown column" not in report.error


def test_the_demo_runs_from_any_folder_and_its_hints_read_its_own_store(tmp_path: Path) -> None:
    demo = audience_sync("demo", "--dir", "d", env={}, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "`audience-sync --config d/jobs.yaml runs show 3`" in demo.stdout
    runs = audience_sync("runs", "--json", "--config", "d/jobs.yaml", env={}, cwd=tmp_path)  # options after too
    assert runs.returncode == 0, runs.stderr
    assert len(runs.stdout.splitlines()) == 4


def test_the_programs_options_go_on_either_side_of_the_command(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    from sync.cli.main import global_options_first

    assert global_options_first(["run", "j", "--config", "f.yaml", "--log-level=debug"]) == [
        "--config",
        "f.yaml",
        "--log-level=debug",
        "run",
        "j",
    ]
    assert global_options_first(["run", "--", "--config"]) == ["run", "--", "--config"]
    config = two_jobs(tmp_path, seeded)
    with Receiver() as receiver:
        env = {"CHARTMOGUL_WEBHOOK_URL": receiver.url}
        ran = audience_sync("run", "cm-webhook", "--config", str(config), "--log-format", "json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert '"event": "run_finished"' in ran.stderr or '"event":"run_finished"' in ran.stderr


def test_on_a_terminal_log_lines_and_the_progress_bar_do_not_write_over_each_other(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    import pty
    import re
    import select

    seeded.set_members("vip", [f"u{i}" for i in range(1, 5)])
    config = two_jobs(tmp_path, seeded)
    leader, follower = pty.openpty()
    with Receiver(faults=Faults(delay=0.3)) as receiver:  # the bar is up while the run logs
        env = {**os.environ, "CHARTMOGUL_WEBHOOK_URL": receiver.url, "COLUMNS": "120", "TERM": "xterm"}
        env.pop("AUDIENCE_SYNC_STATE_URL", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(config), "run", "cm-webhook"],
            stdout=subprocess.DEVNULL,
            stderr=follower,
            env=env,
        )
        os.close(follower)
        seen = b""
        try:
            while True:  # bounded by the process: it ends, the terminal closes, reading stops
                ready, _, _ = select.select([leader], [], [], 30)
                if not ready:
                    break
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            process.wait(timeout=60)
            os.close(leader)
    assert process.returncode == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace"))
    lines = [line for line in text.replace("\r", "\n").splitlines() if "run finished" in line or "run started" in line]
    assert lines, text
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), lines


def test_validate_connect_reaches_everything_a_run_needs_and_writes_nothing(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    from sync.dev.chartmogul_account import Account
    from sync.dev.chartmogul_api import ChartMogulApiReceiver

    state = tmp_path / "state.db"
    with Receiver() as receiver, ChartMogulApiReceiver(Account(), api_key="right-key") as api:
        good = {
            "name": "good",
            "source": {"url": seeded.url, "profiles": "SELECT user_id, email FROM profiles"},
            "audiences": [seeded.audience("VIP", "vip")],
            "traits": [seeded.trait("Revenue", "revenue")],
            "destination": {"webhook_url": receiver.url},
        }
        bad = {
            "name": "bad",
            "source": {"url": seeded.url},
            "audiences": [
                {"name": "Renamed", "query": "SELECT user_id AS customer_id FROM members"},
                {"name": "Gone", "query": "SELECT user_id FROM no_such_table"},
            ],
            "traits": [{"name": "Three", "query": "SELECT user_id, value, trait FROM trait_values;"}],
            "destination": {"type": "chartmogul_api", "api_key": "wrong-key", "base_url": api.url},
        }
        path = tmp_path / "jobs.yaml"
        path.write_text(yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [good, bad]}))
        before = sorted(p.name for p in tmp_path.iterdir())
        checked = audience_sync("--config", str(path), "validate", "--connect", env={})
        only_good = audience_sync("--config", str(path), "validate", "good", "--connect", env={})
        writes = [c for c in api.calls if c.method != "GET"]
    assert checked.returncode == 2
    problems = [line for line in checked.stderr.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: job 'bad': audiences[0] (Renamed): the query returns customer_id; it must return user_id — "
        "missing user_id (write customer_id AS user_id)",
        "problem: job 'bad': audiences[1] (Gone): the query failed: no such table: no_such_table",
        "problem: job 'bad': traits[0] (Three): the query returns columns it may not: trait (it may return user_id, "
        "value)",
        f"problem: job 'bad': ChartMogul's API at http://127.0.0.1:{api.url.split(':')[2].split('/')[0]}: the API key "
        "was refused (HTTP 401); check the key",
    ]
    assert "wrong-key" not in checked.stderr + checked.stdout
    assert "ok: job 'good': the ChartMogul webhook at http://127.0.0.1:" in checked.stdout
    assert "does not exist yet" in checked.stdout
    assert only_good.returncode == 0 and "everything a run needs answered" in only_good.stdout
    assert receiver.records == [] and writes == []  # nothing sent
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no state store created


def test_forget_removes_a_removed_jobs_state_after_asking_and_its_runs_only_when_told(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    config = two_jobs(tmp_path, seeded)
    with Receiver() as receiver:
        env = {"CHARTMOGUL_WEBHOOK_URL": receiver.url}
        assert audience_sync("--config", str(config), "run", "cm-webhook", env=env).returncode == 0
    unasked = audience_sync("--config", str(config), "forget", "cm-webhook", env=env)
    assert unasked.returncode == 2 and "--yes" in unasked.stderr  # no terminal to ask on: nothing removed
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert store.state_size("cm-webhook") == 2
        forgot = audience_sync("--config", str(config), "forget", "cm-webhook", "--yes", env=env)
        assert forgot.returncode == 0 and "ack_state 2" in forgot.stdout
        assert store.state_size("cm-webhook") == 0 and store.tracked_keys("cm-webhook") == {}
        assert len(store.runs("cm-webhook")) == 1  # the audit trail stays
        gone = audience_sync("--config", str(config), "forget", "cm-webhook", "--runs", "--yes", env=env)
        assert gone.returncode == 0 and "runs 1" in gone.stdout and "run_updates 2" in gone.stdout
        assert store.runs("cm-webhook") == [] and store.job_names() == []
    finally:
        store.close()
    unknown = audience_sync("--config", str(config), "forget", "segment", "--yes", env=env)
    assert unknown.returncode == 2 and "no job named 'segment' in the state store" in unknown.stderr


def test_diff_of_a_run_that_failed_before_planning_says_why_it_has_no_changes(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    job = {
        "name": "broken",
        "source": {"url": seeded.url},
        "audiences": [{"name": "VIP", "query": "SELECT user_id FROM no_such_table"}],
        "destination": {"webhook_url": "http://127.0.0.1:9/hook"},
    }
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"state_url": f"sqlite:///{tmp_path / 'state.db'}", "jobs": [job]}))
    assert audience_sync("--config", str(path), "run", "broken", env={}).returncode == 1
    shown = audience_sync("--config", str(path), "diff", "1", env={})
    assert shown.returncode == 0
    said = "run 1 failed before recording changes: job 'broken': the audience 'vip' query failed"
    assert shown.stdout.startswith(said)
    assert "no such table: no_such_table" in shown.stdout and "`audience-sync runs show 1`" in shown.stdout


def test_the_api_demo_ends_by_finding_and_repairing_a_drift(tmp_path: Path) -> None:
    demo = audience_sync("demo", "--destination", "chartmogul_api", "--dir", "d", env={}, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "8. Is ChartMogul right?" in out
    assert re.search(r"differs +u\d+ \w+: expected True, found False", out), out
    assert re.search(r"missing +u\d+ \w+: expected .+, found None", out), out
    assert re.search(r"run \d+ resent 2; reconciliation \d+: 0 drifted", out), out
    runs = audience_sync("runs", "--json", "--config", "d/jobs.yaml", env={}, cwd=tmp_path)
    kinds = [json.loads(line)["kind"] for line in runs.stdout.splitlines()]
    assert kinds.count("reconcile") == 2
