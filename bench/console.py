"""How fast the web console answers on a big store: `python bench/console.py [--changes N] [--jobs J] …`.

Builds a SQLite state store holding J jobs with a run each, one of them a run of N changed users (each with an
audience exit and a trait change, one in a hundred failed) on top of a trail of T rows of earlier runs, then
starts `audience-sync console` on it in a process of its own and measures, over loopback (so each figure is the
server's time plus one local HTTP exchange):

- a page of the big run's changes (100 rows) with no filter and with each filter (key, change, status,
  subject), at random places in the run: median and p95 over R requests each;
- a subject's timeline, and the overview with J jobs (each with H earlier runs of five audiences and a trait):
  median and p95, and the overview's first answer (nothing kept from an earlier request); a job's page with its
  charts over those H runs: median and p95;
- paging through every change of the big run with the API, 1,000 rows a page: rows/s, and that every row came
  exactly once;
- the console process's peak RSS (VmHWM).

Prints a table and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import print_figures  # noqa: E402
from sync.model import KeyChange, Update  # noqa: E402
from sync.store import Store  # noqa: E402
from sync.store.models import Run, RunKey  # noqa: E402


def updates(count: int, start: int = 0) -> Iterator[Update]:
    for number in range(start, start + count):
        changes = (
            KeyChange(f"aud_{number % 10}", "audience", True, False),
            KeyChange("ltv", "trait", float(number), float(number) + 1.5),
        )
        yield Update(f"u{number:08d}", f"as-{number:040x}", changes, {"email": f"u{number}@example.com"}, {})


def history_of(store: Store, names: list[str], runs: int, now: datetime) -> None:
    """``runs`` earlier runs of each job, two hours apart, with per-key counts for five audiences and a trait
    (their updates pruned, as `prune` leaves them): what the overview's sizes and sparklines read."""
    keys = [*((f"audience_{n}", "audience") for n in range(5)), ("ltv", "trait")]
    rng = random.Random(7)
    with store.engine.begin() as connection:
        for name in names:
            first = connection.execute(select(func.coalesce(func.max(Run.id), 0))).scalar_one() + 1
            rows = [
                {"id": first + n, "job": name, "kind": "incremental", "dry_run": False, "status": "succeeded",
                 "started_at": (at := now - timedelta(hours=2 * (runs - n))), "finished_at": at, "trigger": "scheduled"}
                for n in range(runs)
            ]  # fmt: skip
            connection.execute(insert(Run), rows) if rows else None
            counts = [
                {"run_id": first + n, "key": key, "kind": kind, "entered": (e := rng.randrange(50)),
                 "exited": (x := rng.randrange(40)), "changed": (c := rng.randrange(30) if kind == "trait" else 0),
                 "delivered_entered": e * (kind == "audience"), "delivered_exited": x * (kind == "audience"),
                 "delivered_changed": c}
                for n in range(runs) for key, kind in keys
            ]  # fmt: skip
            connection.execute(insert(RunKey), counts) if counts else None


def build(path: Path, changes: int, trail: int, jobs: int, history: int) -> int:
    """The store; returns the big run's id."""
    store = Store.open(f"sqlite:///{path}")
    now = datetime.now(UTC)
    names = ["big", *(f"job-{number:02d}" for number in range(jobs - 1))]
    try:
        history_of(store, names, history, now)
        done = 0
        while done < trail:  # earlier runs, a million rows each
            size = min(1_000_000, trail - done)
            run_id = store.start_run("big", "incremental", False, now)
            store.record_plan(run_id, updates(size, done), "delivered")
            store.finish_run(run_id, "succeeded", {"updates": size, "delivered": size}, now)
            done += size
        big = store.start_run("big", "incremental", False, now)
        store.record_plan(big, updates(changes), "delivered")
        with store.engine.begin() as connection:  # one in a hundred failed, with a reason
            connection.exec_driver_sql(
                "UPDATE run_updates SET status = 'failed', http_status = 422, error = 'HTTP 422: invalid email' "
                "WHERE run_id = ? AND id % 100 = 0",
                (big,),
            )
        store.finish_run(big, "partial", {"updates": changes, "delivered": changes - changes // 100}, now)
        for name in names[1:]:
            other = store.start_run(name, "incremental", False, now)
            store.record_plan(other, updates(100), "delivered")
            store.finish_run(other, "succeeded", {"updates": 100, "delivered": 100}, now)
        return big
    finally:
        store.close()


def timed(call: Callable[[], httpx.Response], repeat: int) -> tuple[float, float]:
    """Median and p95 of ``repeat`` calls, in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text[:300]
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sync", "--config", str(config), "console", "--port", str(port)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env={**os.environ, "AUDIENCE_SYNC_STATE_URL": ""})
    for _ in range(200):  # bounded: it starts in about a second
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/search", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the console did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--trail", type=int, default=0, help="rows of earlier runs under the big one")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--history", type=int, default=4380, help="earlier runs of each job (a year, every 2 h)")
    parser.add_argument("--repeat", type=int, default=40, help="requests per figure")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-console-"))
    started = time.perf_counter()
    big = build(workdir / "state.db", args.changes, args.trail, args.jobs, args.history)
    built_s = time.perf_counter() - started
    config = workdir / "jobs.yaml"
    names = ["big", *(f"job-{n:02d}" for n in range(args.jobs - 1))]
    config.write_text(
        yaml.safe_dump({"state_url": f"sqlite:///{workdir / 'state.db'}", "jobs": [{"name": n} for n in names]})
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = serve(config, port)
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(7)
    figures: dict[str, Any] = {
        "changes": args.changes,
        "trail": args.trail,
        "jobs": args.jobs,
        "history": args.history,
        "store_built_s": round(built_s, 1),
    }
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            cursors: list[str | None] = [None]
            page = client.get(f"/api/v1/runs/{big}/changes", params={"limit": 1000}).json()
            seen = 0
            paging_started = time.perf_counter()
            rows: set[tuple[str, str]] = set()
            while True:  # every change of the run, 1,000 a page
                for item in page["items"]:
                    rows.add((item["user_id"], item["key"]))
                seen += len(page["items"])
                if page["next"] is None:
                    break
                if rng.random() < 0.05:
                    cursors.append(page["next"])
                page = client.get(f"/api/v1/runs/{big}/changes", params={"limit": 1000, "cursor": page["next"]}).json()
            paging_s = time.perf_counter() - paging_started
            figures["paged_rows"] = seen
            figures["paged_exactly_once"] = seen == len(rows) == 2 * args.changes
            figures["paging_rows_per_s"] = round(seen / paging_s)
            filters: dict[str, dict[str, str]] = {
                "page": {},
                "page_key": {"key": "aud_3"},
                "page_exited": {"change": "exited"},
                "page_failed": {"status": "failed"},
                "page_subject": {"subject": f"u{args.changes // 2:08d}"},
            }
            for name, params in filters.items():

                def page_of(params: dict[str, str] = params) -> httpx.Response:
                    cursor = rng.choice(cursors) or ""
                    return client.get(f"/api/v1/runs/{big}/changes", params={**params, "cursor": cursor})

                median, p95 = timed(page_of, args.repeat)
                figures[f"{name}_median_ms"], figures[f"{name}_p95_ms"] = round(median, 1), round(p95, 1)
            subject = lambda: client.get(f"/api/v1/jobs/big/subjects/u{rng.randrange(args.changes):08d}")  # noqa: E731
            figures["subject_median_ms"], figures["subject_p95_ms"] = map(
                lambda v: round(v, 1), timed(subject, args.repeat)
            )
            overview = lambda: client.get("/")  # noqa: E731
            figures["overview_first_ms"] = round(timed(overview, 1)[0], 1)  # before anything is kept
            job_page = lambda: client.get("/jobs/job-00")  # noqa: E731
            figures["job_page_median_ms"], figures["job_page_p95_ms"] = map(
                lambda v: round(v, 1), timed(job_page, args.repeat)
            )
            figures["overview_median_ms"], figures["overview_p95_ms"] = map(
                lambda v: round(v, 1), timed(overview, args.repeat)
            )
            figures["console_peak_rss_mib"] = round(peak_rss_mib(process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print_figures(figures)


if __name__ == "__main__":
    main()
