"""What the warehouse engine's work costs PostgreSQL at the least, piece by piece, on the warehouse that
``bench/warehouse.py`` generated (run that first, at the same ``--users``):

    .venv/bin/python bench/warehouse_floor.py --users 10000000

Each piece is one statement in one process (no parallel workers unless said), timed once:
scanning every row the job's queries return with nothing computed; hashing each trait's values as the
engine does (``hash52``: MD5, PostgreSQL's one documented stable hash); grouping every row by subject with
nothing hashed, at the default ``work_mem`` and at 1GB, and with PostgreSQL's own parallel plan; and the
engine's fingerprint statement itself, as a ``SELECT``. The engine needs at least the grouping and the
hashing, then a comparison with the copy, a read-out (another scan) and the client's fold.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import column, literal
from sqlalchemy.dialects import postgresql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.warehouse as generated  # noqa: E402
from sync.snapshot import pushdown  # noqa: E402
from sync.snapshot.warehouse import queries  # noqa: E402

SERIAL = ("SET max_parallel_workers_per_gather = 0",)


def sql(statement: Any) -> str:
    return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def timed(connection: psycopg.Connection, name: str, statement: str, settings: Sequence[str] = ()) -> None:
    connection.execute("RESET ALL")
    connection.execute(f"SET search_path = {generated.SOURCE}")
    for setting in settings:
        connection.execute(setting)
    started = time.perf_counter()
    connection.execute(statement).fetchall()
    print(f"{name:62s} {time.perf_counter() - started:7.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    generated.sized(args.users)
    found = queries(generated.job("warehouse"), set(), ["user_id", "email"])  # the job the engine runs
    rows = " UNION ALL ".join(f"SELECT {q.id_column} AS sid, 1::bigint AS h FROM ({q.sql}) q" for q in found)
    grouped = f"SELECT count(*) FROM (SELECT sid, sum(h) FROM ({rows}) x GROUP BY sid) y"
    traits = [(q, i) for q in found for i in q.items if i.value is not None]
    fingerprint = sql(pushdown.fingerprints(found))
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as connection:
        timed(connection, "scan every row, nothing computed", f"SELECT count(*), sum(h) FROM ({rows}) x", SERIAL)
        for query, item in traits:
            hashed = sql(pushdown.hash52(literal(f"{item.key}:") + pushdown.as_text(column(str(item.value)))))
            timed(
                connection,
                f"hash52 of trait {item.key!r}",
                f"SELECT count(*), sum({hashed}) FROM ({query.sql}) q",
                SERIAL,
            )
        timed(connection, "group every row by subject, nothing hashed (work_mem 4MB)", grouped, SERIAL)
        timed(connection, "the same, work_mem 1GB", grouped, (*SERIAL, "SET work_mem = '1GB'"))
        timed(connection, "the same, PostgreSQL's own (parallel) plan", grouped)
        timed(connection, "the engine's fingerprint statement, as a SELECT", f"SELECT count(*) FROM ({fingerprint}) z")


if __name__ == "__main__":
    main()
