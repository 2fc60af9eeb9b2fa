"""Reading a warehouse: rows come through the driver's cursor in pieces, and the pieces make one column."""

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from sync import sources
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
