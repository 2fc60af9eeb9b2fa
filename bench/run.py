"""The benchmark: `python bench/run.py --users N [--store sqlite|postgresql] [--repeat R] [--initial-repeat I]`.

Measures, each step in a fresh process (for its own peak RSS), medians of R repetitions:
1. the incremental run without delivery (the `run --dry-run` path) from a file source and from a SQLite warehouse;
2. acknowledging: persisting the acknowledged state of every changed user;
3. the initial sync's planning and state write for N users;
4. delivery to a loopback receiver in another process: our path against a bare httpx loop sending the same
   bodies at the same concurrency, and the achieved rate against a receiver that allows 40 requests/s;
and the references, in the same run: (a) a plain pandas outer-merge diff, (b) a DuckDB FULL OUTER JOIN diff.

Prints a table, writes it to bench/results.md with the machine it ran on, and prints one JSON object as its
last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import generate, job_yaml, write_files, write_warehouse  # noqa: E402

POSTGRES_URL = os.environ.get("AUDIENCE_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DELIVERY_USERS = 4000  # updates sent to the unthrottled receiver per measurement
LIMITED_USERS = 400  # updates sent to the 40 requests/s receiver (about ten seconds)
CONCURRENCY = 8  # in flight, for both our path and the bare loop


def step(name: str, folder: Path, source: str = "files", state_url: str = "") -> dict[str, Any]:
    command = [
        sys.executable,
        str(ROOT / "bench" / "steps.py"),
        name,
        "--folder",
        str(folder),
        "--source",
        source,
        "--state-url",
        state_url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"bench step {name} failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def prepare(users: int, out: Path) -> Path:
    folder = out / f"n{users}"
    marker = folder / "ready"
    if marker.exists():
        return folder
    print(f"generating {users:,} users in {folder} …", file=sys.stderr)
    first, second = generate(users)
    for name, snapshot in (("a", first), ("b", second)):
        write_files(snapshot, folder / name)
        write_warehouse(snapshot, folder / name / "warehouse.db")
        snapshot.wide.reset_index().to_parquet(folder / f"wide_{name}.parquet")
    marker.write_text("ok")
    return folder


@contextmanager
def fresh_store(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        path = workdir / f"state-{uuid.uuid4().hex[:8]}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield (
            make_url(POSTGRES_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def measure_sync(folder: Path, store: str, repeat: int, initial_repeat: int, workdir: Path) -> dict[str, Any]:
    """On ``initial_repeat`` fresh state stores: the initial sync (file source), then the incremental dry run
    from the file source and from the SQLite warehouse (dry runs leave the acknowledged state as it is;
    the first store takes the repetitions the others do not), then acknowledging the changed users, which
    changes the state and so comes last. And the references, ``repeat`` times."""
    found: dict[str, list[dict[str, Any]]] = {}
    uses = [1] * initial_repeat
    uses[0] += repeat - initial_repeat
    for count in uses:
        with fresh_store(store, workdir) as state_url:
            found.setdefault("initial_files", []).append(step("initial", folder / "a", "files", state_url))
            for _ in range(count):
                for source in ("files", "sqlite"):
                    found.setdefault(f"incremental_{source}", []).append(
                        step("incremental", folder / "b", source, state_url)
                    )
            found.setdefault("acknowledge_files", []).append(step("acknowledge", folder / "b", "files", state_url))
    for _ in range(repeat):
        found.setdefault("ref_pandas", []).append(step("ref_pandas", folder))
        found.setdefault("ref_duckdb", []).append(step("ref_duckdb", folder))
    return {
        name: {
            "seconds": median([r["seconds"] for r in runs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "extra": {k: v for k, v in runs[0].items() if k not in ("seconds", "peak_rss_mb")},
        }
        for name, runs in found.items()
    }


def print_figures(figures: dict[str, Any]) -> None:
    """A script's figures as a Markdown table, then as one JSON object on the last line."""
    print("| figure | value |\n| --- | --- |")
    for name, value in figures.items():
        print(f"| {name} | {value} |")
    print(json.dumps(figures))


@contextmanager
def receiver(port: int, *args: str, out: Path | None = None) -> Iterator[str]:
    command = [sys.executable, "-m", "sync", "receiver", "--port", str(port), *args]
    if out:
        command += ["--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        for _ in range(100):  # bounded: the receiver starts within a second or two
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(120)  # a receiver recording to a file finishes writing first


async def bare_httpx(url: str, bodies: list[bytes]) -> float:
    """The reference loop: the same POSTs, same concurrency, no bookkeeping."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits) as client:
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(bodies) / (time.perf_counter() - started)


def our_delivery(url: str, users: int, workdir: Path, rps: float, out_folder: Path) -> dict[str, Any]:
    """A real initial sync of ``users`` users through `audience-sync run`, timed without its planning."""
    first, _ = generate(users, seed=7)
    write_files(first, out_folder)
    job = job_yaml("files", out_folder, url)
    destination = dict(job["destination"])  # type: ignore[call-overload]
    job["destination"] = destination | {"requests_per_second": rps, "max_connections": CONCURRENCY}
    state = workdir / f"delivery-{uuid.uuid4().hex[:8]}.db"
    config = workdir / "delivery.yaml"
    config.write_text(yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [job]}))

    def run(*args: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sync",
                "--config",
                str(config),
                "--log-level",
                "warning",
                "run",
                "bench",
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        return elapsed, json.loads(result.stdout.strip().splitlines()[-1])

    planning, _ = run("--dry-run")  # the same process start, read, diff and plan, without sending
    total, summary = run()
    return {
        "rps": summary["delivered"] / max(total - planning, 1e-9),
        "delivered": summary["delivered"],
        "seconds": total - planning,
    }


def bodies_like(users: int) -> list[bytes]:
    body = {
        "type": "Send Contact",
        "message_id": "",
        "timestamp": "2026-11-22T06:00:00.000Z",
        "sent_at": "2026-11-22T06:00:01.000Z",
        "user_id": "",
        "email": "",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "custom_attributes": {"audience_3": True, "audience_7": True, "ltv": 312.55, "plan": "growth"},
    }
    return [
        json.dumps(
            body | {"message_id": f"as-{i:040d}", "user_id": f"u{i:010d}", "email": f"u{i:010d}@example.com"}
        ).encode()
        for i in range(users)
    ]


def measure_delivery(repeat: int, workdir: Path) -> dict[str, Any]:
    ours, bare = [], []
    with receiver(18777) as url:
        for index in range(repeat):
            bare.append(asyncio.run(bare_httpx(url, bodies_like(DELIVERY_USERS))))
            ours.append(our_delivery(url, DELIVERY_USERS, workdir, 1e6, workdir / f"deliver-{index}")["rps"])
    out = workdir / "limited.jsonl"
    out.unlink(missing_ok=True)
    with receiver(18778, "--rate-limit", "40", "--retry-after", "1", out=out) as url:
        limited = our_delivery(url, LIMITED_USERS, workdir, 40, workdir / "limited")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    start = min(r["at"] for r in records)
    late_429 = sum(1 for r in records if r["status"] == 429 and r["at"] > start + 1)
    # The achieved rate as the receiver saw it: accepted requests over the time from the first to the last
    # (the run's wall clock also holds its process start, planning and bookkeeping).
    accepted = sorted(r["at"] for r in records if 200 <= r["status"] < 300)
    seen_rate = (len(accepted) - 1) / (accepted[-1] - accepted[0]) if len(accepted) > 1 else 0.0
    return {
        "delivery_rps": median(ours),
        "bare_httpx_rps": median(bare),
        "rate_limited_rps": seen_rate,
        "rate_limited_wall_rps": limited["rps"],
        "answered_429": late_429,
        "answered_429_total": sum(1 for r in records if r["status"] == 429),
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0"
    )
    return (
        f"{os.cpu_count()} × {cpu}, {int(memory) / 1024 / 1024:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def report(
    users: int, store: str, repeats: str, sync: dict[str, Any], delivery: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    ref_a, ref_b = sync["ref_pandas"]["seconds"], sync["ref_duckdb"]["seconds"]
    rows = [
        ("incremental run, file source (dry-run path)", sync["incremental_files"]),
        ("incremental run, SQLite warehouse source", sync["incremental_sqlite"]),
        ("acknowledging the changed users", sync["acknowledge_files"]),
        ("initial sync: plan + record + state write, file source", sync["initial_files"]),
        ("reference (a): pandas outer merge diff", sync["ref_pandas"]),
        ("reference (b): DuckDB FULL OUTER JOIN diff", sync["ref_duckdb"]),
    ]
    lines = [
        f"### {users:,} users, {store} state store, medians of {repeats}",
        "",
        "| step | seconds | × ref (a) | × ref (b) | peak RSS MB | notes |",
        "|---|---|---|---|---|---|",
    ]
    for label, figures in rows:
        seconds = figures["seconds"]
        notes = ", ".join(f"{k}={v}" for k, v in figures["extra"].items())
        lines.append(
            f"| {label} | {seconds:.3f} | {seconds / ref_a:.2f} | {seconds / ref_b:.2f} | "
            f"{figures['peak_rss_mb']:.0f} | {notes} |"
        )
    lines += [
        "",
        "| delivery | value |",
        "|---|---|",
        f"| our path (send + record), {CONCURRENCY} in flight, updates/s | {delivery['delivery_rps']:.0f} |",
        f"| bare httpx loop, same bodies and concurrency, requests/s | {delivery['bare_httpx_rps']:.0f} |",
        f"| ratio | {delivery['delivery_rps'] / delivery['bare_httpx_rps']:.2f} |",
        f"| against a 40 requests/s receiver, updates/s as it received them (first to last) | "
        f"{delivery['rate_limited_rps']:.1f} |",
        f"| the same, over the run's wall clock less its planning | {delivery['rate_limited_wall_rps']:.1f} |",
        f"| 429 answers after the first second (all) | {delivery['answered_429']} ({delivery['answered_429_total']}) |",
    ]
    incremental = sync["incremental_files"]
    summary = {
        "users": users,
        "store": store,
        "incremental_s": round(incremental["seconds"], 3),
        "incremental_sqlite_source_s": round(sync["incremental_sqlite"]["seconds"], 3),
        "acknowledge_s": round(sync["acknowledge_files"]["seconds"], 3),
        "initial_s": round(sync["initial_files"]["seconds"], 3),
        "ref_pandas_s": round(ref_a, 3),
        "ref_duckdb_s": round(ref_b, 3),
        "ratio_vs_pandas": round(incremental["seconds"] / ref_a, 3),
        "ratio_vs_duckdb": round(incremental["seconds"] / ref_b, 3),
        "peak_rss_mb": incremental["peak_rss_mb"],
        "initial_peak_rss_mb": sync["initial_files"]["peak_rss_mb"],
        "delivery_rps": round(delivery["delivery_rps"], 1),
        "bare_httpx_rps": round(delivery["bare_httpx_rps"], 1),
        "delivery_ratio": round(delivery["delivery_rps"] / delivery["bare_httpx_rps"], 3),
        "rate_limited_rps": round(delivery["rate_limited_rps"], 2),
        "answered_429": delivery["answered_429"],
    }
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--initial-repeat",
        type=int,
        help="initial syncs (each on a fresh store, followed by acknowledging); default: --repeat. "
        "At 10M one takes about 20 minutes: the other repetitions can run on the first one's state",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    initial_repeat = min(args.initial_repeat or args.repeat, args.repeat)
    repeats = str(args.repeat)
    if initial_repeat != args.repeat:
        repeats += f" (initial sync and acknowledging: {initial_repeat})"
    folder = prepare(args.users, args.out)
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        workdir = Path(scratch)
        sync = measure_sync(folder, args.store, args.repeat, initial_repeat, workdir)
        delivery = measure_delivery(args.repeat, workdir)
    table, summary = report(args.users, args.store, repeats, sync, delivery)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = f"{table}\n\nMachine: {machine()}. Measured {stamp}.\n"
    print(section)
    previous = args.results.read_text() if args.results.exists() else "# Benchmark results\n"
    marker = f"### {args.users:,} users, {args.store} state store"
    kept = [part for part in previous.split("\n### ") if not ("### " + part).startswith(marker)]
    args.results.write_text("\n### ".join(kept).rstrip() + "\n\n" + section)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
