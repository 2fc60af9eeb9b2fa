"""The snapshot engine within its memory setting: it spills past it, and says so when it cannot work."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sync.dev.receiver import Receiver
from sync.errors import EngineError
from sync.model import Computation
from sync.run.runner import Runner
from sync.snapshot.columns import Columns
from sync.snapshot.engine import _connect, stored_table
from sync.snapshot.normalise import Profiles, build_snapshot
from sync.store import Store
from tests.conftest import Warehouse, make_job

KEYS = [Computation(f"a{i}", "audience", f"A{i}") for i in range(3)] + [Computation("t", "trait", "T")]
USERS = np.array([f"user-{i:09d}" for i in range(300_000)], dtype=object)
RESULTS = {f"a{i}": pd.DataFrame({"user_id": USERS[i::2]}) for i in range(3)} | {
    "t": pd.DataFrame({"user_id": USERS, "value": np.arange(len(USERS)) % 7})
}


def summary(memory: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, int], list[int]]:
    monkeypatch.setenv("AUDIENCE_SYNC_ENGINE_MEMORY", memory)
    snapshot = build_snapshot(KEYS, None, RESULTS)
    table = snapshot.everyone().table
    return snapshot.users, snapshot.member_counts(), table.column("fp").to_pylist()


def test_a_snapshot_bigger_than_the_engine_memory_spills_and_comes_out_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's spill folders, not other processes'
    roomy = summary("1GB", monkeypatch)
    tight = summary("64MB", monkeypatch)
    assert tight == roomy
    assert roomy[0] == len(USERS) and roomy[1] == {"a0": 150_000, "a1": 150_000, "a2": 149_999}
    assert not list(tmp_path.iterdir())  # spill files and their folder go with the snapshot


def test_too_little_engine_memory_fails_the_run_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, store: Store, warehouse: Warehouse, receiver: Receiver
) -> None:
    with pytest.raises(EngineError, match="AUDIENCE_SYNC_ENGINE_MEMORY=4MB"):
        summary("4MB", monkeypatch)
    monkeypatch.setenv("AUDIENCE_SYNC_ENGINE_MEMORY", "lots")
    warehouse.set_members("vip", ["a"])
    job = make_job(warehouse, receiver.url, audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    report = Runner(store).run(job)
    assert report.status == "failed" and report.error is not None
    assert "AUDIENCE_SYNC_ENGINE_MEMORY='lots' is not a memory size" in report.error
    assert receiver.accepted() == [] and store.state_size("contacts") == 0


def test_arrow_memory_comes_from_jemalloc_unless_the_environment_says_otherwise() -> None:
    code = "import sync.snapshot.engine, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "jemalloc"
    env["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "system"


def test_the_engine_hands_back_what_a_grouping_freed(tmp_path: Path) -> None:
    # DuckDB keeps up to 512 MiB freed by a grouping for reuse unless told otherwise: at 11M rows that was
    # 446 MiB of the process after the fold was done (bench/README.md).
    setting = "SELECT current_setting('allocator_bulk_deallocation_flush_threshold')"
    assert _connect(str(tmp_path)).execute(setting).fetchall() == [("0 bytes",)]


class CountedRows:
    """Profile rows held in memory that remember which rows were asked for."""

    def __init__(self, columns: dict[str, pa.Array]) -> None:
        self.columns = columns
        self.asked: list[list[int]] = []

    def take(self, rows: np.ndarray) -> Columns:
        self.asked.append(rows.tolist())
        return {name: column.take(pa.array(rows)) for name, column in self.columns.items()}


def test_profile_fields_are_read_only_for_the_users_a_run_looks_at_and_duplicated_ones() -> None:
    ids = pa.array([f"u{i}" for i in range(1000)] + ["u500"])
    emails = pa.array([f"u{i}@example.com" for i in range(1000)] + ["u500@example.com"])
    rows = CountedRows({"user_id": ids, "email": emails})
    audience = Computation("a", "audience", "A")
    snapshot = build_snapshot(
        [audience], Profiles(("user_id", "email"), ids, rows), {"a": pa.table({"user_id": ["u42", "u7"]})}
    )
    assert rows.asked == [[500, 1000]]  # only the duplicated user, to compare its rows
    stored = stored_table([f"u{i}" for i in range(1000) if i not in (7, 42)], [0] * 998)
    selection = snapshot.examine(stored)
    assert rows.asked[1:] == [[7, 42]]  # in order of first appearance: the profiles come first
    assert next(selection.batches(10)).profiles == {
        "u7": {"email": "u7@example.com"},
        "u42": {"email": "u42@example.com"},
    }
