"""Where the time of one incremental run goes: an `audience-sync run --dry-run` of the generated workload,
with the engine's, the store's and the diff's steps timed.

`python bench/phases.py --folder DIR --state-url URL [--source files|sqlite]` runs the dry run on a state
store that holds an initial sync of the workload (`bench/steps.py initial --folder DIR/../a ...` makes one;
a dry run leaves the acknowledged state as it is, so the store takes repeated runs). It prints each step's
seconds and the peak RSS seen while it ran on the main thread (sampled every 20 ms), then one JSON object as
its last line. Steps marked [bg] run in the prefetch and audit-writer threads, overlapping the main
thread's work; their seconds overlap it, and nested steps' seconds are part of their callers'.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sync.run.runner  # noqa: E402
import sync.snapshot.engine  # noqa: E402
import sync.sources  # noqa: E402
import sync.store.repository  # noqa: E402
from bench.memory import peak_rss_mb  # noqa: E402
from bench.steps import job_for  # noqa: E402
from sync.store import Store  # noqa: E402

# (owner, attribute): what is timed. Functions that the runner imported by name are timed where it calls them.
STEPS: list[tuple[Any, str]] = [
    (sync.run.runner.Runner, "plan"),
    (sync.run.runner, "read_snapshot"),
    (sync.sources, "normalise"),
    (sync.snapshot.engine.Snapshot, "_fold"),
    (sync.snapshot.engine.Snapshot, "_check_duplicates"),
    (sync.store.repository.Store, "stored_fingerprints"),
    (sync.snapshot.engine.Snapshot, "_examine"),
    (sync.snapshot.engine.Snapshot, "_selected"),
    (sync.store.repository.Store, "load_baseline"),
    (sync.run.runner, "diff_states"),
    (sync.store.repository.Store, "record_plan"),
    (sync.snapshot.engine.Snapshot, "member_counts"),
]


class Timings:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self._current = ["outside plan"]
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        page = resource.getpagesize()
        while True:
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
            label = self._current[-1]
            self.peaks[label] = max(self.peaks.get(label, 0.0), resident)
            time.sleep(0.02)

    def wrap(self, owner: Any, name: str) -> None:
        function: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            main = threading.current_thread() is threading.main_thread()
            label = name if main else f"{name} [bg]"
            if main:
                self._current.append(label)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                if main:
                    self._current.pop()

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="the second snapshot: bench/out/nN/b")
    parser.add_argument("--state-url", required=True)
    parser.add_argument("--source", choices=["files", "sqlite"], default="files")
    args = parser.parse_args()
    timings = Timings()
    for owner, name in STEPS:
        timings.wrap(owner, name)
    store = Store.open(args.state_url)
    job = job_for(args.folder.resolve(), args.source, args.state_url)
    started = time.perf_counter()
    report = sync.run.runner.Runner(store).run(job, sync.run.runner.RunOptions(dry_run=True))
    wall = time.perf_counter() - started
    if report.status != "planned":
        raise SystemExit(f"the dry run ended {report.status}: {report.error}")
    peak = peak_rss_mb()
    print(f"| step ({report.users:,} users, {report.updates:,} updates) | seconds | peak RSS MiB while it ran |")
    print("|---|---|---|")
    print(f"| whole run | {wall:.3f} | {peak:.0f} |")
    for label, seconds in sorted(timings.seconds.items(), key=lambda item: -item[1]):
        peak_while = f"{timings.peaks[label]:.0f}" if label in timings.peaks else "—"  # [bg]: not sampled alone
        print(f"| {label} | {seconds:.3f} | {peak_while} |")
    steps = {label: round(seconds, 3) for label, seconds in timings.seconds.items()}
    print(json.dumps({"wall_s": round(wall, 3), "peak_rss_mb": round(peak)} | steps))


if __name__ == "__main__":
    main()
