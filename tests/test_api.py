"""The Python API (``sync.api``) against a real SQLite state store and the loopback receiver: a run's result is
what ``runs show --json`` says of it, the other reads are the CLI's ``--json`` shapes, and every error is the
product's own exception, never ``SystemExit``."""

import json
from pathlib import Path

import pytest

from sync import api
from sync.audit.queries import CHANGE_FIELDS, RUN_DETAIL_FIELDS, RUN_FIELDS
from sync.audit.status import STATUS_JSON_FIELDS
from sync.dev.receiver import Receiver
from sync.errors import ConfigError, StoreError, SyncError
from tests.conftest import Warehouse
from tests.test_cli import cli, seeded, write_config  # noqa: F401 - the fixture is used by name


@pytest.fixture
def config(tmp_path: Path, seeded: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    monkeypatch.delenv("AUDIENCE_SYNC_STATE_URL", raising=False)
    return write_config(tmp_path, seeded, f"sqlite:///{tmp_path / 'state.db'}")


def test_a_run_answers_what_runs_show_says_of_it(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver() as receiver:
        monkeypatch.setenv("CHARTMOGUL_WEBHOOK_URL", receiver.url)
        result = api.run(config, "contacts")
        assert len(receiver.accepted()) == result.counts["delivered"] > 0
    assert result.ok and result.status == "succeeded" and result.exit_code == 0
    assert tuple(result.detail) == RUN_DETAIL_FIELDS and tuple(result.record) == RUN_FIELDS
    assert result.record["trigger"] == "api" and result.error is None and result.alerts == []
    shown = cli(config, "runs", "show", str(result.run_id), "--json", webhook="http://127.0.0.1:9/unused")
    assert json.loads(shown.stdout)["run"] == result.record  # the CLI's shape, the same values
    assert result.raise_for_status() is result
    [record] = api.runs(config, "contacts")
    assert record == result.record
    [state] = api.status(config)
    assert tuple(state) == STATUS_JSON_FIELDS and state["last_run"]["run_id"] == result.run_id
    rows = list(api.changes(config, result.run_id, key="vip_customers"))
    assert rows and all(tuple(r) == CHANGE_FIELDS and r["key"] == "vip_customers" for r in rows)


def test_a_failed_run_is_a_result_and_raise_for_status_makes_it_an_error(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTMOGUL_WEBHOOK_URL", "http://127.0.0.1:9/hook")  # nothing listens
    result = api.run(config, "contacts", dry_run=True)
    assert result.status == "planned" and result.ok  # a dry run sends nothing
    with Receiver() as receiver:
        monkeypatch.setenv("CHARTMOGUL_WEBHOOK_URL", receiver.url)
        receiver.faults.respond = lambda body: 400
        failed = api.run(config, "contacts")
    assert not failed.ok and failed.status in ("failed", "partial") and failed.exit_code in (1, 3)
    with pytest.raises(api.RunFailed, match=rf"run {failed.run_id} of contacts {failed.status}") as raised:
        failed.raise_for_status()
    assert raised.value.result is failed


def test_errors_are_the_products_own_never_system_exit(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTMOGUL_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    with pytest.raises(ConfigError, match="no job named 'nope'"):
        api.run(config, "nope")
    with pytest.raises(ConfigError):
        api.status(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text(config.read_text().replace("sqlite:///", "sqlite:////nonexistent-dir/"))
    with pytest.raises(StoreError):
        api.status(broken)
    with pytest.raises(SyncError, match="give a run_id, or a job"):
        list(api.changes(config))
