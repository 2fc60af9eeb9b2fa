"""Dagster, with the real package: an asset per job whose upstream are the assets of the tables its queries
read, materialized (``dagster.materialize``) after them against the loopback receiver, with the run's id,
status, counts and duration as metadata; a failed or blocked run fails the asset with its reason."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from sync.dev.receiver import Receiver
from sync.integrations.dagster import audience_sync_assets
from sync.tables import TableName
from tests.conftest import Warehouse, job_dict


def write_config(tmp_path: Path, warehouse: Warehouse, webhook: str, **job: Any) -> Path:
    raw = job_dict(warehouse, webhook, audiences=[warehouse.audience("VIP", "vip")], profiles=False, **job)
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"state_url": "sqlite:///state.db", "jobs": [raw]}))
    return path


def members_asset(warehouse: Warehouse, user_ids: list[str]) -> dg.AssetsDefinition:
    @dg.asset(key=dg.AssetKey(["members"]))
    def members() -> None:
        warehouse.set_members("vip", user_ids)

    return members


def test_the_job_is_an_asset_downstream_of_the_tables_it_reads(tmp_path: Path, warehouse: Warehouse) -> None:
    with Receiver() as receiver:
        config = write_config(tmp_path, warehouse, receiver.url)
        (asset,) = audience_sync_assets(config)
        assert asset.key == dg.AssetKey(["audience_sync", "contacts"])
        assert set(asset.asset_deps[asset.key]) == {dg.AssetKey(["members"])}
        result = dg.materialize([members_asset(warehouse, ["u1", "u2"]), asset])
        assert result.success
        order = [e.asset_key for e in result.get_asset_materialization_events()]
        assert order == [dg.AssetKey(["members"]), asset.key]  # the table first, then the sync
        metadata = result.asset_materializations_for_node(asset.op.name)[0].metadata
        assert metadata["status"].value == "succeeded" and metadata["delivered"].value == 2
        assert metadata["users"].value == 2 and float(metadata["duration_s"].value) >= 0  # type: ignore[arg-type]
        run_id = int(metadata["run_id"].value)  # type: ignore[arg-type]
        assert {b["user_id"] for b in receiver.accepted()} == {"u1", "u2"}
        again = dg.materialize([asset], run_config={"ops": {asset.op.name: {"config": {"dry_run": True}}}})
        assert again.asset_materializations_for_node(asset.op.name)[0].metadata["run_id"].value == run_id + 1
    with sqlite3.connect(tmp_path / "state.db") as db:
        triggers = [row[0] for row in db.execute("SELECT trigger FROM runs ORDER BY id")]
    assert triggers == ["dagster", "dagster"]


def test_a_failed_run_fails_the_asset_with_its_reason(tmp_path: Path, warehouse: Warehouse) -> None:
    warehouse.set_members("vip", ["u1"])
    with Receiver() as receiver:
        url = receiver.url
    config = write_config(tmp_path, warehouse, url, max_attempts=1)  # nothing listens there any more
    (asset,) = audience_sync_assets(config)
    result = dg.materialize([asset], raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node(asset.op.name)
    assert failure is not None
    assert failure.error is not None and "run 1 of contacts failed" in failure.error.message
    assert failure.user_failure_data is not None
    assert failure.user_failure_data.metadata["status"].value == "failed"


def test_upstream_keys_can_be_mapped(tmp_path: Path, warehouse: Warehouse) -> None:
    config = write_config(tmp_path, warehouse, "https://example.com/hook")

    def key(table: TableName) -> dg.AssetKey:
        return dg.AssetKey(["warehouse", table.name])

    (asset,) = audience_sync_assets(config, upstream=key)
    assert set(asset.asset_deps[asset.key]) == {dg.AssetKey(["warehouse", "members"])}
    assert audience_sync_assets(config, jobs=["other"]) == []


@pytest.mark.parametrize("secret", ["wh-secret-d0a1"])
def test_no_secret_in_the_asset_or_its_metadata(tmp_path: Path, warehouse: Warehouse, secret: str) -> None:
    warehouse.set_members("vip", ["u1"])
    with Receiver() as receiver:
        config = write_config(tmp_path, warehouse, f"{receiver.url}?k={secret}")
        (asset,) = audience_sync_assets(config)
        result = dg.materialize([asset])
    shown = repr(asset.descriptions_by_key) + repr(result.asset_materializations_for_node(asset.op.name)[0].metadata)
    assert secret not in shown
