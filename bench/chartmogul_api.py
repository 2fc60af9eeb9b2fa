"""The ChartMogul REST API destination: `python bench/chartmogul_api.py [--users N] [--rate-users N] [--repeat R]
[--parts rate,client,incremental]`.

Measures, against the ChartMogul-API-compatible receiver (`sync.dev.chartmogul_api`, in this process):
1. rate: an initial sync of `--rate-users` subjects (nine in ten known to ChartMogul) to a receiver enforcing
   ChartMogul's limits (40 requests/s, 20 connections), with the destination's defaults: the achieved rate of
   lookups plus writes against the limit, and the 429s answered after the first second;
2. client: the same writes through the official `chartmogul` client (one thread, then 20 threads) and through
   the shared httpx engine at 20 connections, against an unlimited receiver, in requests per second;
3. incremental: N users acknowledged with every ChartMogul uuid kept (a warm cache), then the next day's
   snapshot (1% changed, 0.5% gone, 0.5% new): the requests that incremental run makes, per changed subject.
Medians of R repetitions for 1 and 2; prints a table and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import chartmogul
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import generate, job_yaml, write_files  # noqa: E402
from bench.steps import initial  # noqa: E402
from sync.config import ChartMogulApiConfig, parse_config  # noqa: E402
from sync.destinations.chartmogul_api import ChartMogulApi, ChartMogulApiTarget  # noqa: E402
from sync.destinations.transport import default_client  # noqa: E402
from sync.dev.chartmogul_account import Account  # noqa: E402
from sync.dev.chartmogul_api import ChartMogulApiReceiver  # noqa: E402
from sync.run.runner import Runner  # noqa: E402
from sync.store import Store  # noqa: E402

API_KEY = "bench-api-key"
LIMIT = 40.0
CLIENT_REQUESTS = 1500


def api_job(folder: Path, state_url: str, url: str, **destination: Any) -> Any:
    raw = job_yaml("files", folder, "http://127.0.0.1:9/x")
    settings = {"type": "chartmogul_api", "api_key": API_KEY, "base_url": url, "target": "customer"}
    raw["destination"] = {**settings, **destination}
    return parse_config({"state_url": state_url, "jobs": [raw]}, {}, folder).jobs[0]


def seeded(user_ids: list[str], share: float = 1.0) -> Account:
    account = Account()
    for index, user in enumerate(user_ids):
        if index % 10 < share * 10:
            account.add_customer(user, f"{user}@example.com", uuid=f"cus_{user}")
    return account


def measure_rate(users: int, workdir: Path) -> dict[str, float]:
    """One initial sync at ChartMogul's limits: requests per second over the run's requests, and late 429s."""
    day0, _ = generate(users, seed=7)
    folder = workdir / f"rate-{time.monotonic_ns()}"
    write_files(day0, folder)
    state_url = f"sqlite:///{folder / 'state.db'}"
    with ChartMogulApiReceiver(seeded(list(day0.wide.index), 0.9), api_key=API_KEY) as api:
        job = api_job(folder, state_url, api.url)  # the defaults: 40 requests/s, 20 connections
        store = Store.open(state_url)
        try:
            report = Runner(store).run(job)
        finally:
            store.close()
        calls = list(api.calls)
    assert report.status == "succeeded", report.error
    first, last = calls[0].at, calls[-1].at
    answered = [c for c in calls if c.status != 429]
    return {
        "requests_per_s": len(answered) / (last - first),
        "late_429": sum(1 for c in calls if c.status == 429 and c.at - first > 1.0),
        "requests": len(calls),
        "updates": report.updates,
        "unmatched": report.unmatched,
    }


def measure_client(workdir: Path) -> dict[str, float]:
    """The same PUTs through the official client (1 and 20 threads) and the shared engine (20 connections)."""
    users = [f"u{i:05d}" for i in range(CLIENT_REQUESTS)]
    account = seeded(users)
    account.customer_attributes["vip"] = "Boolean"
    body = {"custom": {"vip": True}}
    with ChartMogulApiReceiver(account, api_key=API_KEY, requests_per_second=None) as api:
        config = chartmogul.Config(API_KEY)
        config.uri = api.url

        def put(user: str) -> None:
            chartmogul.CustomAttributes.update(config, uuid=f"cus_{user}", data=body).get()

        started = time.perf_counter()
        for user in users:
            put(user)
        sequential = len(users) / (time.perf_counter() - started)
        with ThreadPoolExecutor(20) as pool:
            started = time.perf_counter()
            list(pool.map(put, users))
            threaded = len(users) / (time.perf_counter() - started)
        engine = asyncio.run(_engine_puts(api.url, users, body))
    return {"client_1": sequential, "client_20": threaded, "engine_20": engine}


async def _engine_puts(url: str, users: list[str], body: dict[str, Any]) -> float:
    settings = ChartMogulApiConfig.model_validate(
        {"type": "chartmogul_api", "api_key": API_KEY, "base_url": url, "requests_per_second": 1e6}
    )
    client = default_client(20)
    destination = ChartMogulApi(ChartMogulApiTarget(settings), client)
    payload = json.dumps(body).encode()
    queue = list(reversed(users))

    async def worker() -> None:
        while queue:
            user = queue.pop()
            await destination.exchange("PUT", f"{url}/customers/cus_{user}/attributes/custom", payload)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(20)))
    seconds = time.perf_counter() - started
    await client.aclose()
    return len(users) / seconds


def measure_incremental(users: int, workdir: Path) -> dict[str, Any]:
    """Requests of the next day's run with every acknowledged subject's uuid kept."""
    day0, day1 = generate(users)
    folder = workdir / "incremental"
    write_files(day0, folder)
    state_url = f"sqlite:///{folder / 'state.db'}"
    started = time.perf_counter()
    initial(argparse.Namespace(folder=str(folder), source="files", state_url=state_url))
    store = Store.open(state_url)
    with store.engine.begin() as connection:  # the warm cache: each acknowledged subject's uuid, as runs keep it
        connection.execute(
            text(
                "INSERT INTO remote_ids (job, user_id, scope, remote_id, matched_at) "
                "SELECT job, user_id, 'customer:external_id', 'cus_' || user_id, :now FROM ack_state"
            ),
            {"now": datetime.now(UTC).replace(tzinfo=None)},
        )
    prepared = time.perf_counter() - started
    write_files(day1, folder)
    everyone = sorted(set(day0.wide.index) | set(day1.wide.index))
    with ChartMogulApiReceiver(seeded(everyone), api_key=API_KEY, requests_per_second=None) as api:
        job = api_job(folder, state_url, api.url, requests_per_second=1e6)
        started = time.perf_counter()
        report = Runner(store).run(job)
        seconds = time.perf_counter() - started
        lookups, writes = len(api.lookups()), len(api.writes())
    store.close()
    assert report.status == "succeeded", report.error
    return {
        "users": users,
        "changed": report.updates,
        "lookups": lookups,
        "writes": writes,
        "requests_per_changed": (lookups + writes) / report.updates,
        "new_subjects": len(set(day1.wide.index) - set(day0.wide.index)),
        "run_s": round(seconds, 2),
        "prepare_s": round(prepared, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=1_000_000, help="users of the incremental measurement")
    parser.add_argument("--rate-users", type=int, default=600, help="subjects of the rate measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="rate,client,incremental")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "rate" in parts:
            runs = [measure_rate(args.rate_users, workdir) for _ in range(args.repeat)]
            rate = statistics.median(r["requests_per_s"] for r in runs)
            results["rate"] = {**runs[0], "requests_per_s": round(rate, 2), "of_limit": round(rate / LIMIT, 3)}
            results["rate"]["late_429"] = max(r["late_429"] for r in runs)
            print(
                f"at the 40/s limit: {rate:.2f} requests/s ({rate / LIMIT:.1%} of it), median of {args.repeat}; "
                f"{results['rate']['late_429']} 429s after the first second; "
                f"{runs[0]['requests']} requests for {runs[0]['updates']} updates ({runs[0]['unmatched']} unmatched)"
            )
        if "client" in parts:
            runs = [measure_client(workdir) for _ in range(args.repeat)]
            figures = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
            results["client"] = {
                **figures,
                "engine_vs_client_20": round(figures["engine_20"] / figures["client_20"], 2),
            }
            print(
                f"{CLIENT_REQUESTS} PUTs, requests/s (median of {args.repeat}): official client {figures['client_1']} "
                f"(1 thread), {figures['client_20']} (20 threads); shared engine {figures['engine_20']} "
                f"(20 connections) = {results['client']['engine_vs_client_20']} × the threaded client"
            )
        if "incremental" in parts:
            inc = measure_incremental(args.users, workdir)
            results["incremental"] = inc
            print(
                f"incremental, {inc['users']:,} users, warm uuid cache: {inc['changed']:,} changed subjects → "
                f"{inc['lookups']:,} lookups + {inc['writes']:,} writes = {inc['requests_per_changed']:.3f} "
                f"requests per changed subject ({inc['new_subjects']:,} new subjects, each looked up once); "
                f"run {inc['run_s']} s"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
