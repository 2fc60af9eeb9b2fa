"""The sync log's write-back against a bare COPY: `python bench/writeback.py [--changes N] [--repeat R]`.

Builds a SQLite state store holding one run of N changes (N/2 updates of an audience exit and a trait change
each), then, R times interleaved, into the machine's PostgreSQL (AUDIENCE_SYNC_TEST_POSTGRES_URL, database
``test`` by default):

- **write-back**: `write_back` of the run as a run of the job does it: reading its changes out of the state
  store, shaped by the store's database (one row per subject and key, JSON of old and new, the change's
  name), COPYing them into ``changes`` and adding the run's row, in one transaction, committed;
- **bare COPY**: the same rows, already in memory as Python tuples, COPYed into a table of the same shape with
  psycopg's ``write_row`` (what a hand-written loader does), committed.

Both tables are emptied (untimed) before each measurement. Prints medians, the ratios, and one JSON object as
its last line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import print_figures  # noqa: E402
from sync.config import parse_config  # noqa: E402
from sync.model import KeyChange, Update  # noqa: E402
from sync.run.writeback import CHANGE_COLUMNS, Tables, change_rows, write_back  # noqa: E402
from sync.store import Store  # noqa: E402

POSTGRES = os.environ.get("AUDIENCE_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def updates(count: int) -> Iterator[Update]:
    for number in range(count):
        changes = (
            KeyChange(f"aud_{number % 10}", "audience", True, False),
            KeyChange("ltv", "trait", float(number), float(number) + 1.5),
        )
        yield Update(f"u{number:08d}", f"as-{number:040x}", changes, {"email": f"u{number}@example.com"}, {})


def build(path: Path, changes: int) -> int:
    store = Store.open(f"sqlite:///{path}")
    now = datetime.now(UTC)
    try:
        run_id = store.start_run("big", "incremental", False, now)
        store.record_plan(run_id, updates(changes // 2), "delivered")
        store.finish_run(run_id, "succeeded", {"updates": changes // 2, "delivered": changes // 2}, now)
        return run_id
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    schema = f"bench_log_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        state_path = Path(folder) / "state.db"
        started = time.perf_counter()
        run_id = build(state_path, args.changes)
        print(f"store of {args.changes:,} changes built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        config = parse_config(
            {
                "state_url": f"sqlite:///{state_path}",
                "jobs": [
                    {
                        "name": "big",
                        "source": {"url": POSTGRES},
                        "audiences": [{"name": "A", "query": "SELECT 1 AS user_id"}],
                        "destination": {"type": "chartmogul", "webhook_url": "https://example.com/hook"},
                        "writeback": {"schema": schema},
                    }
                ],
            },
            {},
            Path(folder),
        )
        job = config.jobs[0]
        store = Store.open(config.state_url)
        engine = create_engine(POSTGRES)
        tables = Tables(schema, "postgresql")
        with engine.begin() as connection:
            tables.create(connection)
            connection.execute(text(f"CREATE TABLE {schema}.bare (LIKE {schema}.changes INCLUDING ALL)"))
        run = store.run(run_id)
        assert run is not None
        rows = [row for batch in change_rows(store, store.installation_id(), run) for row in batch]
        columns = ", ".join(f'"{c}"' for c in CHANGE_COLUMNS)
        dsn = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
        timings: dict[str, list[float]] = {"write-back": [], "bare COPY": []}

        def empty() -> None:
            with engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {schema}.changes, {schema}.runs, {schema}.bare"))
            store.set_written_back(run_id, None)

        def bare() -> float:
            with psycopg.connect(dsn) as connection:
                begun = time.perf_counter()
                with connection.cursor() as cursor, cursor.copy(f"COPY {schema}.bare ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                connection.commit()
                return time.perf_counter() - begun

        try:
            for _ in range(args.repeat):
                empty()
                begun = time.perf_counter()
                assert write_back(store, job, datetime.now(UTC)) == [run_id]
                timings["write-back"].append(time.perf_counter() - begun)
                empty()
                timings["bare COPY"].append(bare())
            with engine.connect() as connection:
                landed = connection.execute(text(f"SELECT count(*) FROM {schema}.bare")).scalar_one()
                assert landed == len(rows) == args.changes, (landed, len(rows))
        finally:
            with engine.begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            engine.dispose()
            store.close()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    figures: dict[str, object] = {"changes": args.changes, "repeat": args.repeat}
    figures |= {f"{name} median s": round(value, 2) for name, value in medians.items()}
    figures["write-back / bare COPY"] = round(medians["write-back"] / medians["bare COPY"], 2)
    figures["write-back changes/s"] = round(args.changes / medians["write-back"])
    print_figures(figures)


if __name__ == "__main__":
    main()
