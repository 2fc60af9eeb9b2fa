"""Two SQLite state stores that differ in one way, timed alternately on the same work.

The frame of `audit_index.py` and `ack_layout.py`: a store is seeded once, copied, and the copy changed;
then, per repetition, one piece of work is made and timed on each store in turn. Medians of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sync.store import Store

Work = TypeVar("Work")
NOW = datetime(2026, 11, 22, tzinfo=UTC)
JOB = "bench"
_SEED_CHUNK = 100_000


def user(number: int) -> str:
    """A user id of the generated workload's form."""
    return f"u{number:010d}"


def seed_rows(path: Path, rows: int, insert: str, row: Callable[[int, int], tuple[Any, ...]]) -> None:
    """A migrated state store with one initial run of ``JOB`` and ``rows`` rows written by ``insert``, the
    values of the n-th being ``row(run_id, n)``, in user order as an initial sync writes them."""
    store = Store.open(f"sqlite:///{path}")
    run_id = store.start_run(JOB, "initial", False, NOW)
    store.close()
    connection = sqlite3.connect(path)
    for start in range(0, rows, _SEED_CHUNK):
        connection.executemany(insert, (row(run_id, n) for n in range(start, min(start + _SEED_CHUNK, rows))))
        connection.commit()
    connection.close()


def command_line(doc: str, count: str, count_default: int) -> argparse.Namespace:
    """``--rows`` (the seeded store's size), ``--COUNT`` (the work's size), ``--repeat`` and ``--dir``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(f"--{count}", type=int, default=count_default)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the two stores go (default: a temporary folder)")
    return parser.parse_args()


def compare(
    args: argparse.Namespace,
    names: tuple[str, str],
    seed: Callable[[Path], None],
    change: Callable[[Path], None],
    work: Callable[[random.Random], Work],
    measure: Callable[[Store, Work], float],
    rng_seed: int,
) -> dict[str, float]:
    """Seed the store ``names[0]``, copy it into ``names[1]`` and ``change`` the copy; the median seconds of
    ``measure`` on each, the same ``work`` for both in every repetition."""
    folder = Path(tempfile.mkdtemp(prefix="bench-paired-", dir=args.dir))
    try:
        paths = (folder / "first.db", folder / "second.db")
        started = time.perf_counter()
        seed(paths[0])
        shutil.copyfile(paths[0], paths[1])
        change(paths[1])
        print(f"seeded {args.rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        stores = {name: Store.open(f"sqlite:///{path}") for name, path in zip(names, paths, strict=True)}
        rng = random.Random(rng_seed)
        found: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeat):
            piece = work(rng)
            for name, store in stores.items():
                found[name].append(measure(store, piece))
                print(f"{name}: {found[name][-1]:.2f} s", flush=True)
        for store in stores.values():
            store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: statistics.median(times) for name, times in found.items()}


def report(
    args: argparse.Namespace,
    title: str,
    medians: dict[str, float],
    base: str,
    count: str,
    size: int,
    keys: dict[str, str],
) -> None:
    """A table of the medians, per unit of the work and as ratios against ``base``; then one JSON object (the
    sizes, each median under its name in ``keys``, and the other store's ratio against ``base``) as the last
    line."""
    print(f"| {title}, medians of {args.repeat} | seconds | µs each | × {base} |")
    print("|---|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} | {seconds / size * 1e6:.0f} | {seconds / medians[base]:.2f} |")
    (other,) = (name for name in medians if name != base)
    found = {keys[name]: round(seconds, 3) for name, seconds in medians.items()}
    print(json.dumps({"rows": args.rows, count: size, **found, "ratio": round(medians[other] / medians[base], 2)}))


def main(
    doc: str,
    count: str,
    names: tuple[str, str],
    keys: tuple[str, str],
    title: str,
    base: int,
    steps: tuple[
        Callable[[Path, int], None], Callable[[Path], None], Callable[..., Any], Callable[[Store, Any], float]
    ],
    rng_seed: int,
) -> None:
    """The whole comparison from the command line: ``steps`` are ``seed(path, rows)``, ``change(path)``,
    ``work(rows, count, rng)`` and ``measure(store, work)``; ``title`` is formatted with ``rows`` and ``count``."""
    seed, change, work, measure = steps
    args = command_line(doc, count, 20_000)
    size = int(getattr(args, count))
    medians = compare(
        args,
        names,
        lambda path: seed(path, args.rows),
        change,
        lambda rng: work(args.rows, size, rng),
        measure,
        rng_seed,
    )
    heading = title.format(rows=args.rows, count=size)
    report(args, heading, medians, names[base], count, size, dict(zip(names, keys, strict=True)))
