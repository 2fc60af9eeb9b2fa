"""Reading a warehouse: rows come through the driver's cursor in pieces, and the pieces make one column."""

import io
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from sync import sources
from sync.config import JobConfig
from sync.errors import SourceError
from sync.snapshot.columns import Arrow
from sync.snapshot.engine import stored_table
from sync.snapshot.normalise import Profiles
from sync.sources import read_snapshot
from tests.conftest import Warehouse, make_config, make_job


@pytest.mark.parametrize("fetch", [2, 3, 100])
def test_pieces_of_a_query_make_the_same_snapshot_whatever_their_size(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, fetch: int
) -> None:
    monkeypatch.setattr(sources, "FETCH", fetch)
    warehouse.set_profiles([{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(5)])
    warehouse.set_members("vip", ["u0", "u1", "u2", "u3", "u4"])
    # Types change from piece to piece: numbers, nulls only, then text and a decimal.
    warehouse.set_trait("plan", {"u0": 1, "u1": 2.5, "u2": None, "u3": "pro", "u4": str(Decimal("7"))})
    job = make_job(
        warehouse,
        "http://127.0.0.1:9/x",
        audiences=[warehouse.audience("VIP", "vip")],
        traits=[warehouse.trait("Plan", "plan")],
    )
    snapshot = read_snapshot(job)
    assert snapshot.state["vip"].tolist() == [True] * 5
    assert snapshot.state["plan"].to_dict() == {"u0": 1, "u1": 2.5, "u2": None, "u3": "pro", "u4": "7"}
    assert snapshot.profiles["u4"] == {"email": "u4@example.com"}


def test_an_empty_result_is_an_empty_audience(warehouse: Warehouse) -> None:
    job = make_job(warehouse, "http://127.0.0.1:9/x", audiences=[warehouse.audience("VIP", "vip")], profiles=False)
    snapshot = read_snapshot(job)
    assert snapshot.users == 0 and snapshot.member_counts() == {"vip": 0}


@pytest.mark.postgres
def test_a_postgresql_warehouse_is_read_in_pieces_through_a_server_side_cursor(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "FETCH", 2)
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE members (user_id TEXT)"))
        connection.execute(text("CREATE TABLE plans (user_id BIGINT, value NUMERIC)"))
        connection.execute(text("INSERT INTO members VALUES ('a'), ('b'), ('c'), ('d'), ('e')"))
        connection.execute(text("INSERT INTO plans VALUES (1, 1.50), (2, 2), (3, NULL)"))
    engine.dispose()
    job = make_config(
        "sqlite://",
        [
            {
                "name": "pg",
                "source": {"url": postgres_url},
                "audiences": [{"name": "VIP", "query": "SELECT user_id FROM members"}],
                "traits": [{"name": "Plan", "query": "SELECT user_id, value FROM plans"}],
                "destination": {"webhook_url": "http://127.0.0.1:9/x"},
            }
        ],
    ).jobs[0]
    snapshot = read_snapshot(job)
    assert snapshot.member_counts() == {"vip": 5} and snapshot.users == 7  # a null value is no value
    assert snapshot.state["plan"].dropna().to_dict() == {"1": 1.5, "2": 2}


def test_large_text_columns_of_a_parquet_file_are_read_as_text_with_the_same_values(tmp_path: Path) -> None:
    written = pa.table(
        {
            "user_id": pa.array(["u1", "u2", None, "ü3"], pa.large_string()),
            "value": pa.array(["pro", None, "free", "∞"], pa.large_string()),
            "n": pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    path = tmp_path / "plan.parquet"
    pq.write_table(written, path, row_group_size=2)
    read = sources.read_file(path, "contacts", "trait plan")
    assert isinstance(read, pa.Table)
    assert read.schema.types == [pa.string(), pa.string(), pa.int64()]
    assert read.column("user_id").num_chunks == 2  # row groups stay chunks: no copy to join them
    assert read.to_pylist() == written.to_pylist()


def file_job(folder: Path) -> JobConfig:
    return make_config(
        "sqlite://",
        [
            {
                "name": "files",
                "source": {"profiles_file": str(folder / "profiles.parquet")},
                "audiences": [{"name": "VIP", "file": str(folder / "vip.parquet")}],
                "destination": {"webhook_url": "http://127.0.0.1:9/x"},
            }
        ],
    ).jobs[0]


def write_profiles(folder: Path, user_ids: list[str | None], **columns: pa.Array) -> None:
    table = pa.table({"user_id": pa.array(user_ids, pa.large_string()), **columns})
    pq.write_table(table, folder / "profiles.parquet", row_group_size=3)


def test_parquet_profiles_are_read_for_the_users_looked_at_from_the_row_groups_that_hold_them(tmp_path: Path) -> None:
    ids: list[str | None] = [f"u{i}" for i in range(10)]
    ids[1] = None  # skipped: the rows after it keep their own fields
    write_profiles(
        tmp_path,
        ids,
        email=pa.array([f"u{i}@example.com" for i in range(10)], pa.large_string()),
        phone=pa.array(range(100, 110), pa.int64()),
    )
    pq.write_table(pa.table({"user_id": ["u8", "u3", "u12"]}), tmp_path / "vip.parquet")
    snapshot = read_snapshot(file_job(tmp_path))
    stored = stored_table(["u0", "u2", "u4", "u5", "u6", "u7", "u9"], [0] * 7)  # known, with nothing in them
    selection = snapshot.examine(stored)
    assert selection.table.column("user_id").to_pylist() == ["u3", "u8", "u12"]  # in order of first appearance
    assert [b.profiles for b in selection.batches(2)] == [
        {"u3": {"email": "u3@example.com", "phone": "103"}, "u8": {"email": "u8@example.com", "phone": "108"}},
        {},
    ]
    assert snapshot.profiles["u9"] == {"email": "u9@example.com", "phone": "109"}
    assert snapshot.issues[0].problem == "null or empty user_id"


def test_a_parquet_profiles_file_replaced_during_a_run_is_still_read_as_it_was(tmp_path: Path) -> None:
    write_profiles(tmp_path, ["u1", "u2"], email=pa.array(["old1@example.com", "old2@example.com"]))
    pq.write_table(pa.table({"user_id": ["u2"]}), tmp_path / "vip.parquet")
    snapshot = read_snapshot(file_job(tmp_path))
    replacement = tmp_path / "new.parquet"
    pq.write_table(pa.table({"user_id": ["u2", "u1"], "email": ["new2@example.com", "x"]}), replacement)
    os.replace(replacement, tmp_path / "profiles.parquet")
    assert snapshot.profiles == {"u1": {"email": "old1@example.com"}, "u2": {"email": "old2@example.com"}}


@pytest.mark.parametrize("rewritten", [["u9", "u8"], ["u9"]])
def test_a_parquet_profiles_file_rewritten_in_place_during_a_run_fails_the_run_by_name(
    tmp_path: Path, rewritten: list[str]
) -> None:
    write_profiles(tmp_path, ["u1", "u2"], email=pa.array(["a@example.com", "b@example.com"]))
    pq.write_table(pa.table({"user_id": ["u2"]}), tmp_path / "vip.parquet")
    snapshot = read_snapshot(file_job(tmp_path))
    path = tmp_path / "profiles.parquet"
    buffer = io.BytesIO()
    pq.write_table(pa.table({"user_id": rewritten, "email": [f"{u}@example.com" for u in rewritten]}), buffer)
    with path.open("r+b") as file:  # the same file, other rows: as a writer that truncates and rewrites would leave it
        file.write(buffer.getvalue())
        file.truncate()
    with pytest.raises(SourceError) as caught:
        snapshot.examine(stored_table([], []))
    message = str(caught.value)
    assert "job 'files': the profiles file profiles.parquet" in message
    assert "example.com" not in message


def test_conflicting_duplicate_profiles_in_a_parquet_file_are_refused_and_equal_ones_are_one(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user_id": ["u2"]}), tmp_path / "vip.parquet")
    write_profiles(tmp_path, ["u1", "u2", "u1", "u3"], email=pa.array(["a@x.io", "b@x.io", "z@x.io", None]))
    with pytest.raises(SourceError, match="job 'files': profiles: conflicting duplicate rows for user_id 'u1'"):
        read_snapshot(file_job(tmp_path))
    write_profiles(tmp_path, ["u1", "u2", "u1", "u3"], email=pa.array(["a@x.io", "b@x.io", " a@x.io ", None]))
    assert read_snapshot(file_job(tmp_path)).profiles == {
        "u1": {"email": "a@x.io"},
        "u2": {"email": "b@x.io"},
        "u3": {},
    }


@pytest.mark.parametrize("rows", [[5, 0, 7, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 4, 5], [9], []])
def test_rows_of_a_parquet_profiles_file_come_back_in_the_order_asked(tmp_path: Path, rows: list[int]) -> None:
    write_profiles(tmp_path, [f"u{i}" for i in range(10)], email=pa.array([f"e{i}" for i in range(10)]))
    profiles = sources.read_profiles(tmp_path / "profiles.parquet", "files")
    assert isinstance(profiles, Profiles)
    taken = profiles.rows.take(np.array(rows, dtype=np.int64))
    assert [values(taken["user_id"]), values(taken["email"])] == [[f"u{i}" for i in rows], [f"e{i}" for i in rows]]


def values(column: Arrow | list[Any]) -> list[Any]:
    return column if isinstance(column, list) else column.to_pylist()
