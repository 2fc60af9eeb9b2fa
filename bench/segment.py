"""The Segment-compatible batch destination: `python bench/segment.py [--users N] [--repeat R]`.

Measures, in the same run and against the same loopback receiver (`audience-sync receiver --mode segment`,
another process):
1. throughput, in calls per second: a real initial sync of N users through `audience-sync run`, over the time
   the run itself reports in its sending phase (rendering, packing, posting and recording the answers), against
   a bare httpx loop posting the very batches that run sent, at the same concurrency, with no bookkeeping;
2. the initial sync end to end (plan, send, record) as one wall-clock figure, with the run process's own
   peak RSS (VmHWM, see bench/memory.py).
Medians of R repetitions; prints a table and one JSON object as its last line.

``--end-to-end-only`` skips the capture and the bare loop (at 10M users the captured batches alone would take
about 13 GB): only our runs, their calls per second and the initial sync end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import generate, job_yaml, write_files  # noqa: E402
from bench.run import print_figures, receiver  # noqa: E402

WRITE_KEY = "bench-write-key"
CONNECTIONS = 4  # the destination's default, for both our path and the bare loop

# Runs `audience-sync` in this process and reports its own peak RSS on stderr's last line.
_RUN = """
import json, sys
from bench.memory import peak_rss_mb
from sync.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="audience-sync")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"peak_rss_mb": peak_rss_mb()}), file=sys.stderr)
"""


def run_sync(config: Path, *args: str) -> tuple[float, dict[str, Any], float, float]:
    """Wall seconds, the run's summary, its peak RSS and the seconds of its sending phase."""
    command = [sys.executable, "-c", _RUN, "--config", str(config), "--log-format", "json", "run", "bench"]
    started = time.perf_counter()
    result = subprocess.run([*command, "--json", *args], capture_output=True, text=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if not result.stdout.strip():
        raise SystemExit(f"the run failed:\n{result.stderr}")
    lines = result.stderr.strip().splitlines()
    peak = json.loads(lines[-1])["peak_rss_mb"]
    finished = next(json.loads(line) for line in lines if '"run_finished"' in line)
    sending = re.search(r"sending ([0-9.]+)s", finished.get("timings", ""))
    return (
        elapsed,
        json.loads(result.stdout.strip().splitlines()[-1]),
        peak,
        float(sending.group(1)) if sending else 0.0,
    )


def config_for(folder: Path, url: str, workdir: Path) -> Path:
    job = job_yaml("files", folder, url)
    job["destination"] = {
        "type": "segment",
        "write_key": WRITE_KEY,
        "endpoint": url,
        "max_connections": CONNECTIONS,
        "requests_per_second": 1e6,  # no limit: the receiver is the bound
    }
    config = workdir / f"segment-{uuid.uuid4().hex[:8]}.yaml"
    state = workdir / f"state-{uuid.uuid4().hex[:8]}.db"
    config.write_text(yaml.safe_dump({"state_url": f"sqlite:///{state}", "jobs": [job]}))
    return config


async def bare_httpx(url: str, bodies: list[bytes]) -> float:
    """The reference: the same batches, the same concurrency, basic auth, nothing else. Seconds taken."""
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                (await client.post(url, content=body, headers=headers)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return time.perf_counter() - started


def calls_in(folder: Path) -> int:
    """The calls an initial sync of ``folder`` sends, one per computation: a row of an audience file is a
    member entering, a row of a trait file a value set (the files hold no null values)."""
    files = [f for f in folder.glob("*.parquet") if f.name != "profiles.parquet"]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--end-to-end-only", action="store_true", help="no capture and no bare httpx loop")
    args = parser.parse_args()
    key = ["--mode", "segment"]
    with tempfile.TemporaryDirectory(prefix="as-segment-") as tmp:
        workdir = Path(tmp)
        folder = workdir / "data"
        print(f"generating {args.users:,} users …", file=sys.stderr)
        snapshot, _ = generate(args.users, seed=7)
        write_files(snapshot, folder)
        del snapshot
        calls = calls_in(folder)
        bodies: list[bytes] = []
        if not args.end_to_end_only:
            captured = workdir / "batches.jsonl"
            with receiver(18790, *key, out=captured) as base:
                url = base.removesuffix("/webhook") + "/v1/batch"
                run_sync(config_for(folder, url, workdir))  # what the bare loop will send
            bodies = [json.dumps(json.loads(line)["body"]).encode() for line in captured.read_text().splitlines()]
            sent = sum(len(json.loads(body)["batch"]) for body in bodies)
            assert sent == calls, f"the run sent {sent} calls, the files hold {calls}"
        ours, bare, totals, peaks = [], [], [], []
        with receiver(18791, *key) as base:
            url = base.removesuffix("/webhook") + "/v1/batch"
            for _ in range(args.repeat):
                if bodies:
                    bare.append(calls / asyncio.run(bare_httpx(url, bodies)))
                config = config_for(folder, url, workdir)  # a fresh state store: an initial sync
                total, summary, peak, sending = run_sync(config)
                assert summary["status"] == "succeeded" and summary["delivered"] == summary["updates"], summary
                ours.append(calls / max(sending, 1e-9))
                totals.append(total)
                peaks.append(peak)
    figures = {
        "users": args.users,
        "calls": calls,
        "ours_calls_per_s": round(statistics.median(ours)),
        "initial_end_to_end_s": round(statistics.median(totals), 2),
        "initial_peak_rss_mb": round(max(peaks)),
    }
    if bare:
        figures["batches"] = len(bodies)
        figures["bare_httpx_calls_per_s"] = round(statistics.median(bare))
        figures["ratio"] = round(statistics.median(ours) / statistics.median(bare), 3)
    print_figures(figures)


if __name__ == "__main__":
    main()
