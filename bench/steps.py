"""One measured step of the benchmark, run in a process of its own so that its peak RSS is its own.

Prints one JSON object: {"seconds": ..., "peak_rss_mb": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import AUDIENCES, job_yaml  # noqa: E402
from bench.memory import peak_rss_mb  # noqa: E402
from sync.config import parse_config  # noqa: E402
from sync.destinations.base import DeliveryResult  # noqa: E402
from sync.run.runner import Runner, RunOptions  # noqa: E402
from sync.sources import computations  # noqa: E402
from sync.store import Store  # noqa: E402

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def job_for(folder: Path, source: str, state_url: str) -> Any:
    return parse_config(
        {"state_url": state_url, "jobs": [job_yaml(source, folder, "http://127.0.0.1:9/x")]}, {}, folder
    ).jobs[0]


def acknowledge(store: Store, run_id: int, updates: list[Any]) -> None:
    results = [(u, DeliveryResult(u.user_id, u.message_id, True, 1, NOW, NOW, 200)) for u in updates]
    for start in range(0, len(results), 5000):  # as delivery does: answers recorded as they arrive, in groups
        store.record_results("bench", run_id, results[start : start + 5000])


def initial(args: argparse.Namespace) -> dict[str, Any]:
    """Initial sync: plan every member and trait value of N users, record the plan and acknowledge all of it,
    a batch at a time as a streamed run does, then write the fingerprint index as a run does when it ends."""
    store = Store.open(args.state_url)
    job = job_for(Path(args.folder), args.source, args.state_url)
    runner = Runner(store)
    run_id = store.start_run("bench", "initial", False, NOW)
    store.set_tracked_keys("bench", computations(job), run_id)
    recording = 0.0

    def record(updates: list[Any], _refresh: list[Any]) -> bool:
        nonlocal recording
        started = time.perf_counter()
        store.record_plan(run_id, updates, "pending")
        acknowledge(store, run_id, updates)
        recording += time.perf_counter() - started
        return True

    started = time.perf_counter()
    plan = runner.planner.plan(job, {}, sink=record)
    planning = time.perf_counter() - started - recording
    indexed = time.perf_counter()
    store.index_fingerprints("bench", run_id)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "plan_s": round(planning, 3),
        "write_s": round(recording + done - indexed, 3),
        "updates": plan.updates_count,
    }


def incremental(args: argparse.Namespace) -> dict[str, Any]:
    """The `run --dry-run` path: read the source, load the acknowledged state, diff, plan, record the plan."""
    store = Store.open(args.state_url)
    job = job_for(Path(args.folder), args.source, args.state_url)
    started = time.perf_counter()
    report = Runner(store).run(job, RunOptions(dry_run=True))
    seconds = time.perf_counter() - started
    assert report.status == "planned", report.error
    return {"seconds": seconds, "updates": report.updates, "users": report.users}


def acknowledging(args: argparse.Namespace) -> dict[str, Any]:
    """Persisting the acknowledged state of every changed user, as delivery records it."""
    store = Store.open(args.state_url)
    job = job_for(Path(args.folder), args.source, args.state_url)
    plan = Runner(store).planner.plan(job, store.tracked_keys("bench"))
    updates = plan.updates
    run_id = store.start_run("bench", "incremental", False, NOW)
    store.record_plan(run_id, updates, "pending")
    started = time.perf_counter()
    acknowledge(store, run_id, updates)
    store.index_fingerprints("bench", run_id)
    return {"seconds": time.perf_counter() - started, "updates": len(updates)}


def _wide(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{name}.parquet")


def ref_pandas(args: argparse.Namespace) -> dict[str, Any]:
    """Reference (a): outer merge with an indicator, then column comparisons; one row per user to send."""
    old, new = _wide(Path(args.folder), "wide_a"), _wide(Path(args.folder), "wide_b")
    started = time.perf_counter()
    merged = old.merge(new, on="user_id", how="outer", indicator=True, suffixes=("_old", "_new"))
    changed = merged["_merge"] != "both"
    for column in [*AUDIENCES, "ltv", "plan"]:
        a, b = merged[f"{column}_old"], merged[f"{column}_new"]
        changed |= ~((a == b) | (a.isna() & b.isna()))
    send = merged.loc[changed, "user_id"]
    return {"seconds": time.perf_counter() - started, "users_to_send": int(len(send))}


def ref_duckdb(args: argparse.Namespace) -> dict[str, Any]:
    """Reference (b): the same diff as a DuckDB FULL OUTER JOIN over in-memory Arrow tables."""
    old = pa.Table.from_pandas(_wide(Path(args.folder), "wide_a"), preserve_index=False)
    new = pa.Table.from_pandas(_wide(Path(args.folder), "wide_b"), preserve_index=False)
    connection = duckdb.connect()
    connection.register("old", old)
    connection.register("new", new)
    different = " OR ".join(f"o.{c} IS DISTINCT FROM n.{c}" for c in [*AUDIENCES, "ltv", "plan"])
    started = time.perf_counter()
    count = connection.execute(
        f"SELECT count(*) FROM old o FULL OUTER JOIN new n ON o.user_id = n.user_id "
        f"WHERE o.user_id IS NULL OR n.user_id IS NULL OR {different}"
    ).fetchone()
    return {"seconds": time.perf_counter() - started, "users_to_send": int(count[0]) if count else 0}


STEPS = {
    "initial": initial,
    "incremental": incremental,
    "acknowledge": acknowledging,
    "ref_pandas": ref_pandas,
    "ref_duckdb": ref_duckdb,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--folder", required=True)
    parser.add_argument("--source", default="files")
    parser.add_argument("--state-url", default="")
    args = parser.parse_args()
    result = STEPS[args.step](args)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
