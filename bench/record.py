"""What recording answers costs: `python bench/record.py [--answers N] [--group G] [--repeat R]`.

A run records the destination's answers as they arrive, a group at a time (`Store.record_results`: each
update's outcome row, and the acknowledged state of each delivered one). This measures that, per answer, on
a fresh SQLite file and on the machine's PostgreSQL, against a reference measured in the same run: the same
`record_results` with its statements executed through SQLAlchemy's `Connection.execute` with a list of
parameter sets (its per-row parameter processing), as the store did before `store.dialect.Bulk`.
Medians of R repetitions; prints a table and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import print_figures  # noqa: E402
from sync.destinations.base import DeliveryResult  # noqa: E402
from sync.model import KeyChange, Update  # noqa: E402
from sync.store import Store  # noqa: E402
from sync.store.state import _RECORD_OUTCOME, _outcomes  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_record"


def answers(count: int) -> list[tuple[Update, DeliveryResult]]:
    """``count`` delivered updates shaped like an initial sync's: a few audiences and a trait each."""
    now = datetime.now(UTC)
    pairs = []
    for i in range(count):
        changes = tuple(KeyChange(f"audience_{k}", "audience", None, True) for k in range(i % 4 + 1))
        changes += (KeyChange("ltv", "trait", None, i * 0.5),)
        state = {c.key: c.new for c in changes}
        update = Update(f"u{i:010d}", f"{i:040x}", changes, {"email": f"u{i}@example.com"}, state, i)
        pairs.append((update, DeliveryResult(update.user_id, update.message_id, True, 1, now, now, 200)))
    return pairs


class ThroughSqlalchemy:
    """The reference: a statement executed by SQLAlchemy with a list of parameter sets, each row's
    parameters processed by it (datetimes converted by the models' column type)."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement

    def execute(self, connection: Any, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            connection.execute(self.statement, list(rows))


def reference(store: Store) -> Store:
    """``store`` recording as before ``Bulk``: the same ``record_results``, its statements through SQLAlchemy."""
    store.__dict__["_moment"] = lambda value: value
    store.__dict__["_bulk_outcome"] = ThroughSqlalchemy(_RECORD_OUTCOME)
    store.__dict__["_bulk_state"] = ThroughSqlalchemy(store._state_upsert)
    store.__dict__["_bulk_plan"] = ThroughSqlalchemy(_outcomes.insert())
    return store


def timed(url: str, way: str, pairs: list[tuple[Update, DeliveryResult]], group: int) -> float:
    """Microseconds per answer: ``pairs`` planned, then recorded ``group`` at a time into a fresh store."""
    store = Store.open(url)
    if way == "sqlalchemy":
        reference(store)
    try:
        run_id = store.start_run("bench", "initial", False, datetime.now(UTC))
        store.record_plan(run_id, [u for u, _ in pairs], "pending")
        started = time.perf_counter()
        for start in range(0, len(pairs), group):
            store.record_results("bench", run_id, pairs[start : start + group])
        return (time.perf_counter() - started) / len(pairs) * 1e6
    finally:
        store.engine.dispose()


def postgres_url() -> str:
    engine = create_engine(POSTGRES)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    engine.dispose()
    return f"{POSTGRES}?options=-csearch_path%3D{SCHEMA}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=30_000)
    parser.add_argument("--group", type=int, default=200, help="answers recorded together (one commit)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pairs = answers(args.answers)
    figures: dict[str, Any] = {"answers": args.answers, "group": args.group}
    with tempfile.TemporaryDirectory(prefix="as-record-") as tmp:
        stores = {"sqlite": lambda n: f"sqlite:///{tmp}/state-{n}.db", "postgresql": lambda n: postgres_url()}
        for name, make in stores.items():
            runs: dict[str, list[float]] = {"ours": [], "sqlalchemy": []}
            for repetition in range(args.repeat):
                for way in runs:  # interleaved
                    runs[way].append(timed(make(f"{way}-{repetition}"), way, pairs, args.group))
            ours_us, reference_us = statistics.median(runs["ours"]), statistics.median(runs["sqlalchemy"])
            figures[f"{name}_us_per_answer"] = round(ours_us, 1)
            figures[f"{name}_sqlalchemy_us_per_answer"] = round(reference_us, 1)
            figures[f"{name}_ratio"] = round(ours_us / reference_us, 3)
    print_figures(figures)


if __name__ == "__main__":
    main()
