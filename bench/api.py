"""What the Python API adds to a run: `python bench/api.py [--users N] [--repeat R]`.

A SQLite warehouse of N users in one audience and a trait, the loopback receiver in a process of its own, and
three ways of running the same job, interleaved R times (each way in each place of the order in turn), each
run a full resync (every user sent):

- **runner**: ``Runner.run`` on an open store: the engine alone, the floor;
- **api**: ``sync.api.run("jobs.yaml", job, full=True)``: loading jobs.yaml, opening the store, the run, and
  reading back ``runs show --json`` of it;
- **cli**: ``audience-sync run JOB --full --json`` in a new process (interpreter start and imports included).

Prints medians and ratios against the runner, and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import print_figures, receiver  # noqa: E402
from sync import api  # noqa: E402
from sync.run.report import RunOptions  # noqa: E402
from sync.run.runner import Runner  # noqa: E402
from sync.store import Store  # noqa: E402


def warehouse(path: Path, users: int) -> None:
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE members (user_id TEXT); CREATE TABLE plans (user_id TEXT, value REAL);")
        db.executemany("INSERT INTO members VALUES (?)", [(f"u{n:07d}",) for n in range(users)])
        db.executemany("INSERT INTO plans VALUES (?, ?)", [(f"u{n:07d}", n % 50) for n in range(0, users, 2)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=8797)
    args = parser.parse_args()
    timings: dict[str, list[float]] = {"runner": [], "api": [], "cli": []}
    with tempfile.TemporaryDirectory() as folder, receiver(args.port) as url:
        base = Path(folder)
        warehouse(base / "warehouse.db", args.users)
        config = base / "jobs.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "state_url": "sqlite:///state.db",
                    "jobs": [
                        {
                            "name": "bench",
                            "source": {"url": "sqlite:///warehouse.db"},
                            "audiences": [{"name": "Members", "query": "SELECT user_id FROM members"}],
                            "traits": [{"name": "Plan", "query": "SELECT user_id, value FROM plans"}],
                            "destination": {
                                "type": "chartmogul",
                                "webhook_url": url,
                                "requests_per_second": 100_000,
                                "max_connections": 32,
                            },
                        }
                    ],
                }
            )
        )
        loaded = api.load(config)
        job = loaded.job("bench")
        assert api.run(config, "bench").ok  # the initial sync, untimed

        def by_runner() -> None:
            store = Store.open(loaded.state_url)
            try:
                begun = time.perf_counter()
                report = Runner(store).run(job, RunOptions(full=True, trigger="full"))
                timings["runner"].append(time.perf_counter() - begun)
                assert report.exit_code == 0 and report.delivered == args.users, report.error
            finally:
                store.close()

        def by_api() -> None:
            begun = time.perf_counter()
            result = api.run(config, "bench", full=True)
            timings["api"].append(time.perf_counter() - begun)
            assert result.ok and result.counts["delivered"] == args.users, result.error

        def by_cli() -> None:
            begun = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "sync", "--config", str(config), "run", "bench", "--full", "--json"],
                capture_output=True,
                text=True,
                check=False,
            )
            timings["cli"].append(time.perf_counter() - begun)
            assert done.returncode == 0, done.stderr[-2000:]

        ways = [by_runner, by_api, by_cli]
        for number in range(args.repeat):  # each way first, second and third in turn
            for way in ways[number % 3 :] + ways[: number % 3]:
                way()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    figures: dict[str, object] = {"users": args.users, "repeat": args.repeat}
    figures |= {f"{name} median s": round(value, 3) for name, value in medians.items()}
    figures["api / runner"] = round(medians["api"] / medians["runner"], 3)
    figures["api - runner ms"] = round((medians["api"] - medians["runner"]) * 1000)
    figures["cli / runner"] = round(medians["cli"] / medians["runner"], 3)
    print_figures(figures)


if __name__ == "__main__":
    main()
