"""Reading ChartMogul back: `python bench/reconcile.py [--customers N] [--drift P] [--repeat R]`.

Builds a state store holding N acknowledged subjects of a `chartmogul_api` job (an audience and two traits,
each subject's ChartMogul uuid kept) and a ChartMogul-API-compatible receiver (in this process) holding the N
customers with those attributes, then drifts P of them (a value flipped, changed or removed, a record
deleted: a quarter each), and runs `audience-sync reconcile` in a process of its own against the receiver at
ChartMogul's limits (40 requests/s, 20 connections). Reports, as medians of R runs:

- drift: every drifted row found, and no other (false positives);
- requests against the pages the listing needs (N ÷ 200, rounded up), and the reconciliation's time (as its
  run records it) against requests ÷ 40/s (the floor ChartMogul's rate sets); the process's wall time too;
- the reconcile process's peak RSS (its own, not the receiver's).

Prints a table and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import print_figures  # noqa: E402
from sync.dev.chartmogul_account import Account  # noqa: E402
from sync.dev.chartmogul_api import MAX_CONNECTIONS, REQUESTS_PER_SECOND, ChartMogulApiReceiver  # noqa: E402
from sync.store import Store  # noqa: E402
from sync.store.models import AckState, JobKey, RemoteAttribute, RemoteId  # noqa: E402

API_KEY = "bench-api-key"
JOB = "customers"
SCOPE = "customer:external_id"
PER_PAGE = 200
CHUNK = 10_000


def values(number: int) -> dict[str, Any]:
    """Subject ``number``'s acknowledged attributes: in the audience one in three, a Decimal and a String."""
    state: dict[str, Any] = {"ltv": round(number * 0.37, 2), "plan": ("starter", "pro", "team")[number % 3]}
    if number % 3 == 0:
        state["vip"] = True
    return state


def build_store(url: str, customers: int, uuids: list[str]) -> None:
    store = Store.open(url)
    now = datetime.now(UTC)
    try:
        with store.engine.begin() as connection:
            connection.execute(
                insert(JobKey),
                [{"job": JOB, "key": k, "kind": kind, "since_run_id": 0}
                 for k, kind in (("vip", "audience"), ("ltv", "trait"), ("plan", "trait"))],
            )  # fmt: skip
            connection.execute(
                insert(RemoteAttribute),
                [{"job": JOB, "scope": SCOPE, "key": k, "type": t, "created_at": now}
                 for k, t in (("vip", "Boolean"), ("ltv", "Decimal"), ("plan", "String"))],
            )  # fmt: skip
            for start in range(0, customers, CHUNK):
                numbers = range(start, min(customers, start + CHUNK))
                connection.execute(
                    insert(AckState),
                    [{"job": JOB, "user_id": f"u{n:08d}", "state": json.dumps(values(n)), "profile": "{}",
                      "version": 1, "run_id": 0, "updated_at": now, "fingerprint": None} for n in numbers],
                )  # fmt: skip
                connection.execute(
                    insert(RemoteId),
                    [{"job": JOB, "user_id": f"u{n:08d}", "scope": SCOPE, "remote_id": uuids[n], "matched_at": now}
                     for n in numbers],
                )  # fmt: skip
    finally:
        store.close()


def build_account(customers: int) -> tuple[Account, list[str]]:
    account = Account(customer_attributes={"vip": "Boolean", "ltv": "Decimal", "plan": "String"})
    uuids = []
    for number in range(customers):
        uuid = account.add_customer(f"u{number:08d}", uuid=f"cus_{number:08d}")
        state = values(number)
        account.customers[uuid]["attributes"]["custom"].update({**state, "vip": state.get("vip", False)})
        uuids.append(uuid)
    return account, uuids


def drift(account: Account, uuids: list[str], share: float, seed: int = 11) -> set[tuple[str, str | None, str]]:
    """Drift ``share`` of the customers, a quarter in each way; what reconciliation must find."""
    rng = random.Random(seed)
    chosen = rng.sample(range(len(uuids)), int(len(uuids) * share))
    expected: set[tuple[str, str | None, str]] = set()
    for index, number in enumerate(chosen):
        user, uuid = f"u{number:08d}", uuids[number]
        custom = account.customers[uuid]["attributes"]["custom"]
        way = index % 4
        if way == 0:
            custom["vip"] = not custom["vip"]
            expected.add((user, "vip", "differs"))
        elif way == 1:
            custom["ltv"] = custom["ltv"] + 1
            expected.add((user, "ltv", "differs"))
        elif way == 2:
            del custom["plan"]
            expected.add((user, "plan", "missing"))
        else:
            account.delete_customer(uuid)
            expected.add((user, None, "gone"))
    return expected


# The reconcile command, telling its own peak RSS (VmHWM) when it exits. The rusage of a child would not do:
# Linux keeps a forked child's peak across exec, so a child of this process (which holds the receiver's
# account) would report this process's size.
_MEASURED = (
    "import atexit, sys\n"
    "def peak():\n"
    "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "    print('peak_kib', hwm.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from sync.cli.main import main\n"
    "sys.argv[0] = 'audience-sync'\n"
    "main()\n"
)


def reconcile_once(config: Path, output: Path) -> tuple[float, float]:
    """One `audience-sync reconcile` in a process of its own: its wall time and peak RSS (MiB)."""
    started = time.perf_counter()
    command = [sys.executable, "-c", _MEASURED, "--config", str(config), "--log-level", "warning", "reconcile", JOB,
               "--format", "jsonl", "--output", str(output)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "AUDIENCE_SYNC_STATE_URL": ""})
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 6):
        raise SystemExit(f"reconcile failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kib"))
    return seconds, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    started = time.perf_counter()
    account, uuids = build_account(args.customers)
    state_url = f"sqlite:///{workdir / 'state.db'}"
    build_store(state_url, args.customers, uuids)
    expected = drift(account, uuids, args.drift)
    built = time.perf_counter() - started
    figures: dict[str, Any] = {"customers": args.customers, "drifted": len(expected), "built_s": round(built, 1)}
    with ChartMogulApiReceiver(account, api_key=API_KEY, keep=False) as api:
        job = {
            "name": JOB,
            "source": {"url": f"sqlite:///{workdir / 'warehouse.db'}"},
            "audiences": [{"name": "VIP", "query": "SELECT user_id FROM vip"}],
            "traits": [{"name": "LTV", "query": "SELECT user_id, ltv AS value FROM t"},
                       {"name": "Plan", "query": "SELECT user_id, plan AS value FROM t"}],
            "destination": {"type": "chartmogul_api", "api_key": API_KEY, "base_url": api.url, "target": "customer"},
        }  # fmt: skip
        config = workdir / "jobs.yaml"
        config.write_text(yaml.safe_dump({"state_url": state_url, "jobs": [job]}))
        times, peaks, requests, reading = [], [], [], []
        for attempt in range(args.repeat):
            output = workdir / f"drift-{attempt}.jsonl"
            seconds, peak = reconcile_once(config, output)
            rows = [json.loads(line) for line in output.read_text().splitlines()]
            found = {(r["user_id"], r["key"], r["drift"]) for r in rows}
            store = Store.open(state_url)
            try:
                run = store.runs(JOB, limit=1)[0]
                summary = json.loads(run.reconcile or "{}")
                reading.append(dict(json.loads(run.phases or "[]"))["reconciling"])
            finally:
                store.close()
            figures["missed"] = len(expected - found)
            figures["false_positives"] = len(found - expected)
            times.append(seconds)
            peaks.append(peak)
            requests.append(summary["requests"])
            figures["read"] = summary["read"]
        figures["rate_limited"] = api.rate_limited
        figures["max_open_connections"] = api.max_open
    pages = math.ceil((args.customers - sum(1 for e in expected if e[2] == "gone")) / PER_PAGE)
    figures["pages_needed"] = pages
    figures["requests"] = statistics.median(requests)
    figures["requests_per_page_needed"] = round(figures["requests"] / pages, 3)
    figures["process_seconds_median"] = round(statistics.median(times), 2)  # with Python starting and importing
    figures["reconcile_seconds_median"] = round(statistics.median(reading), 2)  # the run's own time
    floor = figures["requests"] / REQUESTS_PER_SECOND
    figures["rate_floor_s"] = round(floor, 2)
    figures["time_per_rate_floor"] = round(figures["reconcile_seconds_median"] / floor, 3)
    figures["peak_rss_mib"] = round(max(peaks), 1)
    figures["limits"] = f"{REQUESTS_PER_SECOND:g} requests/s, {MAX_CONNECTIONS} connections"
    print_figures(figures)


if __name__ == "__main__":
    main()
