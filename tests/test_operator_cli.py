"""What an operator types, through the real entry point: control commands without secrets, `prune` that
never deletes more than asked, `validate` on hostile or absurd files, missing warehouse drivers."""

import time
from pathlib import Path

import pytest
import yaml

from sync.dev.receiver import Receiver
from tests.conftest import Warehouse
from tests.test_cli import cli, seeded, write_config  # noqa: F401 - the fixture is used by name


@pytest.fixture
def synced(tmp_path: Path, seeded: Warehouse, receiver: Receiver) -> Path:  # noqa: F811
    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    assert cli(config, "run", "contacts", webhook=receiver.url).returncode == 0
    return config


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("status",), "contacts"),
        (("pause", "contacts"), "paused"),
        (("resume", "contacts"), "resumed"),
        (("skip", "contacts"), "skip"),
        (("prune",), "removed 0 update rows"),
        (("runs",), "contacts"),
    ],
)
def test_control_and_audit_commands_work_without_the_webhook_url(
    synced: Path, command: tuple[str, ...], said: str
) -> None:
    result = cli(synced, *command, webhook="")  # CHARTMOGUL_WEBHOOK_URL is empty: ${…} cannot expand
    assert result.returncode == 0, result.stderr
    assert said in result.stdout


@pytest.mark.parametrize("days", ["-1", "0", "-30"])
def test_prune_refuses_days_below_one_and_deletes_nothing(synced: Path, days: str) -> None:
    before = cli(synced, "diff", "1", "--format", "jsonl").stdout
    result = cli(synced, "prune", "--days", days)
    assert result.returncode == 2 and "--days" in result.stderr
    assert before and cli(synced, "diff", "1", "--format", "jsonl").stdout == before


def test_prune_of_an_unknown_job_exits_2(synced: Path) -> None:
    result = cli(synced, "prune", "nojob")
    assert result.returncode == 2 and "no job named 'nojob'" in result.stderr


@pytest.mark.parametrize(
    ("url", "package"),
    [
        ("mssql+pymssql://me:secret@host/db", "pymssql"),
        ("oracle+oracledb://me@host/db", "oracledb"),
    ],
)
def test_a_missing_warehouse_driver_fails_validate_and_run_naming_the_package(
    tmp_path: Path, warehouse: Warehouse, url: str, package: str
) -> None:
    config = write_config(tmp_path, warehouse, f"sqlite:///{tmp_path / 'state.db'}")
    raw = yaml.safe_load(config.read_text())
    raw["jobs"][0]["source"]["url"] = url
    config.write_text(yaml.safe_dump(raw))
    checked = cli(config, "validate", webhook="https://hooks.example.com/x")
    assert checked.returncode == 2 and f"pip install {package}" in checked.stderr and "source.url" in checked.stderr
    ran = cli(config, "run", "contacts", webhook="https://hooks.example.com/x")
    assert ran.returncode == 2 and f"pip install {package}" in ran.stderr
    assert "state store" not in ran.stderr and "NoSuchModuleError" not in ran.stderr


def _validate(tmp_path: Path, text: str | bytes) -> tuple[int, str, float]:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    started = time.monotonic()
    result = cli(path, "validate", webhook="https://hooks.example.com/x")
    return result.returncode, result.stderr, time.monotonic() - started


ALIAS_BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    + ["jobs: [*i]"]
)


def _job(**destination: object) -> dict[str, object]:
    return {
        "name": "contacts",
        "audiences": [{"name": "VIP", "file": "vip.csv"}],
        "destination": {"webhook_url": "https://hooks.example.com/x", **destination},
    }


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("alias bomb", ALIAS_BOMB, "more than 100,000 values"),
        ("deep nesting", "jobs: " + "[" * 10_000 + "]" * 10_000, "nests deeper"),
        ("not UTF-8", b"jobs:\n  - name: caf\xe9\n", "not UTF-8"),
        ("absurd duration", yaml.safe_dump({"jobs": [_job(timeout="99999999999999999999d")]}), "too long"),
        ("infinite rate", yaml.safe_dump({"jobs": [_job(requests_per_second=float("inf"))]}), "requests_per_second"),
        ("long job name", yaml.safe_dump({"jobs": [{**_job(), "name": "j" * 101}]}), "at most 100"),
        (
            "long key",
            yaml.safe_dump({"jobs": [{**_job(), "audiences": [{"name": "a" * 201, "file": "vip.csv"}]}]}),
            "over 200",
        ),
    ],
)
def test_validate_answers_a_bad_file_with_one_line_and_exit_2_within_a_second(
    tmp_path: Path, name: str, text: str | bytes, said: str
) -> None:
    (tmp_path / "vip.csv").write_text("user_id\nu1\n")
    code, stderr, took = _validate(tmp_path, text)
    assert code == 2, (name, stderr)
    assert said in stderr, (name, stderr)
    assert "Traceback" not in stderr
    assert took < 5.0  # the interpreter's start included; the check itself is well under a second


def test_a_table_too_wide_for_the_terminal_is_shown_as_blocks_with_nothing_cut() -> None:
    import io

    from rich.console import Console

    from sync.audit.display import print_rows

    row = {
        "job": "crm-contacts-production",
        "run_id": 12,
        "kind": "incremental",
        "status": "partial",
        "started_at": "2026-11-30T12:00:00.000Z",
        "error": "HTTP 503: the destination is unavailable, come back later",
    }
    for width in (100, 120):
        out = io.StringIO()
        print_rows(Console(file=out, width=width), [row, row], list(row), "table")
        text = out.getvalue()
        assert "…" not in text
        assert all(str(value) in text for value in row.values())
    wide = io.StringIO()
    print_rows(Console(file=wide, width=400), [row], list(row), "table")
    assert "│" in wide.getvalue()  # a table where it fits


def test_failed_all_lists_updates_still_being_retried_and_plan_summarises_first(
    tmp_path: Path,
    seeded: Warehouse,  # noqa: F811
) -> None:
    import json

    from sync.dev.receiver import Faults

    config = write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")
    planned = cli(config, "plan", "contacts", webhook="https://hooks.example.com/x")
    assert planned.returncode == 0
    assert planned.stdout.index("run 1 (contacts, initial)") < planned.stdout.index("user_id")  # summary first
    with Receiver(faults=Faults(error_rate=1.0, error_statuses=(503,), retry_after=0)) as failing:
        result = cli(config, "run", "contacts", webhook=failing.url)
    # Nothing delivered and every update failed: the run failed, and says where and why
    assert result.returncode == 1, result.stderr
    assert "the ChartMogul webhook at http://127.0.0.1" in result.stderr and "HTTP 503" in result.stderr
    rows = [json.loads(line) for line in cli(config, "failed", "contacts", "--all", "--json").stdout.splitlines()]
    assert {row["user_id"] for row in rows} == {"u1", "u2", "u3", "u4"}
    assert {row["state"] for row in rows} == {"retrying"} and {row["http_status"] for row in rows} == {503}
    assert cli(config, "failed", "contacts").stdout.strip() == "no dead updates"  # none is dead
    status = json.loads(cli(config, "status", "--json").stdout)
    assert status["pending"] == 4 and status["dead"] == 0
