"""Queries kept in .sql files beside jobs.yaml (`query_file`, `profiles_query_file`): read when the file loads,
run as the inline query would be, and every mistake named with its job and field."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from sync.config import load_config
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from sync.run.runner import Runner
from sync.store import Store
from tests.conftest import RecordingSleep, Warehouse


def write(folder: Path, job: dict[str, Any]) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump({"state_url": "sqlite://", "jobs": [job]}))
    return path


def job(warehouse: Warehouse, **items: Any) -> dict[str, Any]:
    return {
        "name": "contacts",
        "source": {"url": warehouse.url, **items.pop("source", {})},
        "destination": {"webhook_url": "${HOOK:-http://127.0.0.1:9/hook}"},
        **items,
    }


def test_queries_in_files_run_as_inline_ones(
    tmp_path: Path, warehouse: Warehouse, store: Store, sleep: RecordingSleep
) -> None:
    warehouse.set_profiles([{"user_id": u, "email": f"{u}@example.com"} for u in ("u1", "u2", "u3")])
    warehouse.set_members("vip", ["u1", "u2"])
    warehouse.set_trait("ltv", {"u1": 3.5})
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "vip.sql").write_text("-- the VIPs\nSELECT user_id FROM members WHERE audience = 'vip';\n")
    (tmp_path / "sql" / "ltv.sql").write_text("SELECT user_id, value FROM trait_values WHERE trait = 'ltv'")
    (tmp_path / "sql" / "profiles.sql").write_text("SELECT user_id, email FROM profiles")
    path = write(
        tmp_path,
        job(
            warehouse,
            source={"profiles_query_file": "sql/profiles.sql"},
            audiences=[{"name": "VIP", "query_file": "sql/vip.sql"}],
            traits=[{"name": "LTV", "query_file": "sql/ltv.sql"}],
        ),
    )
    with Receiver() as receiver:
        loaded = load_config(path, env={"HOOK": receiver.url}).jobs[0]
        assert loaded.audiences[0].query == "-- the VIPs\nSELECT user_id FROM members WHERE audience = 'vip'"
        assert loaded.source.profiles == "SELECT user_id, email FROM profiles"
        assert loaded.definition()["audiences"][0]["query_file"] == "sql/vip.sql"
        report = Runner(store, sleep=sleep).run(loaded)
        assert report.status == "succeeded" and report.delivered == 2, report.error  # u3 has nothing to send
        bodies = {b["user_id"]: b for b in receiver.accepted()}
    assert bodies["u1"]["email"] == "u1@example.com"


@pytest.mark.parametrize(
    ("items", "files", "expected"),
    [
        ({"audiences": [{"name": "VIP", "query_file": "sql/nope.sql"}]}, {},
         "job 'contacts': audiences[0].query_file: no such file: sql/nope.sql (paths are relative to the folder"),
        ({"audiences": [{"name": "VIP", "query_file": "empty.sql"}]}, {"empty.sql": b"  \n"},
         "job 'contacts': audiences[0].query_file: empty.sql holds no query"),
        ({"traits": [{"name": "LTV", "query_file": "bin.sql"}]}, {"bin.sql": b"\xff\xfe\x00"},
         "job 'contacts': traits[0].query_file: bin.sql is not UTF-8 text"),
        ({"audiences": [{"name": "VIP", "query": "SELECT 1", "query_file": "a.sql"}]}, {"a.sql": b"SELECT 1"},
         "job 'contacts': audiences[0]: give exactly one of query, query_file, ref or file"),
        ({"source": {"profiles": "SELECT 1", "profiles_query_file": "p.sql"},
          "audiences": [{"name": "VIP", "query": "SELECT user_id FROM members"}]}, {"p.sql": b"SELECT 1"},
         "job 'contacts': source: give one of profiles (a query), profiles_query_file (a .sql file), "
         "profiles_ref (a dbt model) or profiles_file (a data file), not profiles and profiles_query_file"),
    ],
)  # fmt: skip
def test_a_query_file_that_cannot_be_used_is_named(
    tmp_path: Path, warehouse: Warehouse, items: dict[str, Any], files: dict[str, bytes], expected: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, job(warehouse, **items)), env={})
    assert any(problem.startswith(expected) for problem in raised.value.problems), raised.value.problems


def test_a_query_file_needs_a_warehouse(tmp_path: Path) -> None:
    (tmp_path / "vip.sql").write_text("SELECT user_id FROM members")
    raw = {"name": "contacts", "source": {}, "audiences": [{"name": "VIP", "query_file": "vip.sql"}],
           "destination": {"webhook_url": "http://127.0.0.1:9/hook"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"audiences\[0\]\.query_file: needs source\.url"):
        load_config(write(tmp_path, raw), env={})
