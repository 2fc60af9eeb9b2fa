"""The JSON the console and the Python API build on: each command's `--json` has exactly its documented fields
(the README's "JSON output" lists them from the same constants), read through the one query layer."""

import json
import re
from pathlib import Path

import pytest

from sync.audit.queries import CHANGE_FIELDS, HISTORY_FIELDS, HISTORY_JSON_FIELDS, RUN_DETAIL_FIELDS, RUN_FIELDS
from sync.audit.status import STATUS_JSON_FIELDS
from sync.dev.receiver import Receiver
from tests.conftest import Warehouse
from tests.test_cli import cli, seeded, write_config  # noqa: F401 - the fixture is used by name

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("contracts")
    warehouse = Warehouse(tmp_path / "warehouse.db")
    warehouse.set_profiles([{"user_id": f"u{i}", "email": f"u{i}@example.com", "first_name": "F"} for i in range(4)])
    warehouse.set_members("vip", ["u1", "u2"])
    warehouse.set_members("beta", ["u2"])
    warehouse.set_trait("revenue", {"u1": 5.5})
    config = write_config(tmp_path, warehouse, f"sqlite:///{tmp_path / 'state.db'}")
    with Receiver() as receiver:
        assert cli(config, "run", "contacts", webhook=receiver.url).returncode == 0
    return config


def lines(config: Path, *args: str) -> list[dict[str, object]]:
    result = cli(config, *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def documented(section: str) -> list[str]:
    """The fields the README lists for one output, in its "JSON output" table."""
    row = re.search(rf"^\| `{re.escape(section)}` \| (.+?) \|$", README, re.M)
    assert row is not None, f"the README documents no fields for {section}"
    return re.findall(r"`([a-z_]+)`", row.group(1))


def test_runs_json(synced: Path) -> None:
    (record,) = lines(synced, "runs", "--json")
    assert tuple(record) == RUN_FIELDS == tuple(documented("runs --json"))


def test_runs_show_json(synced: Path) -> None:
    (detail,) = lines(synced, "runs", "show", "1", "--json")
    assert tuple(detail) == RUN_DETAIL_FIELDS == tuple(documented("runs show --json"))
    assert isinstance(detail["run"], dict) and tuple(detail["run"]) == RUN_FIELDS


def test_status_json(synced: Path) -> None:
    (status,) = lines(synced, "status", "--json")
    assert tuple(status) == STATUS_JSON_FIELDS == tuple(documented("status --json"))


def test_diff_json(synced: Path) -> None:
    rows = lines(synced, "diff", "1", "--json")
    assert rows and all(tuple(row) == CHANGE_FIELDS for row in rows)
    assert tuple(documented("diff --json")) == CHANGE_FIELDS


def test_history_json(synced: Path) -> None:
    (timeline,) = lines(synced, "history", "contacts", "u1", "--json")
    assert tuple(timeline) == HISTORY_JSON_FIELDS == tuple(documented("history --json"))
    entries = timeline["timeline"]
    assert isinstance(entries, list) and entries
    assert all(tuple(entry) == (*HISTORY_FIELDS, "change") for entry in entries)
    assert tuple(documented("history --json timeline")) == (*HISTORY_FIELDS, "change")


def test_messages_json(synced: Path) -> None:
    bodies = lines(synced, "messages", "1", "--json")
    assert bodies and all(body["type"] == "Send Contact" for body in bodies)  # the webhook's bodies
    assert set(documented("messages --json (chartmogul)")) <= set().union(*(set(b) for b in bodies))
    calls = lines(synced, "messages", "1", "--calls")
    assert all(call["type"] == "identify" for call in calls)
