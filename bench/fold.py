"""What grouping every result row into users costs in DuckDB, by what the grouping computes.

`python bench/fold.py --users N [--repeat R] [--memory 1GB]` reads the second snapshot of a generated
workload (run `bench/run.py --users N` first), registers it as the engine does (profile ids, ten audience
results, two trait results, each with its rows' order), and times variants of the engine's fold
(`sync/snapshot/engine.py`), medians of R: the engine's query, without its order or row count, the XOR alone,
and grouping by a 64-bit hash of the id instead of the id. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
AUDIENCES = 10


def register(db: duckdb.DuckDBPyConnection, folder: Path) -> None:
    offset = 0

    def add(name: str, table: pa.Table) -> None:
        nonlocal offset
        order = pa.array(np.arange(offset, offset + len(table), dtype=np.int32))
        db.register(name, table.append_column("ord", order))
        offset += len(table)

    def ids(path: Path) -> pa.ChunkedArray:
        return pq.read_table(path, columns=["user_id"]).column(0).cast(pa.string())

    add("p", pa.table({"user_id": ids(folder / "profiles.parquet")}))
    for index in range(AUDIENCES):
        add(f"c{index}", pa.table({"user_id": ids(folder / f"audience_{index}.parquet")}))
    for index, (trait, kind) in enumerate((("ltv", pa.float64()), ("plan", pa.string()))):
        values = pq.read_table(folder / f"{trait}.parquet")
        add(
            f"t{index}",
            pa.table({"user_id": values.column("user_id").cast(pa.string()), "v": values.column("value").cast(kind)}),
        )


def rows(order: bool = True, masks: bool = True) -> str:
    def select(table: str, hashed: str, mask: int) -> str:
        extra = (", ord" if order else "") + (f", {mask}::BIGINT AS m0" if masks else "")
        return f"SELECT user_id, {hashed} AS h{extra} FROM {table}"

    parts = [select("p", "0::UBIGINT", 1 << AUDIENCES)]
    parts += [select(f"c{i}", f"hash('a{i}', 'member')", 1 << i) for i in range(AUDIENCES)]
    parts += [select("t0", "hash('ltv', 'n', v + 0.0)", 0), select("t1", "hash('plan', 's', v)", 0)]
    return " UNION ALL ".join(parts)


VARIANTS = {
    "engine (xor, first order, row count, masks)": "SELECT user_id, bit_xor(h), min(ord), count(*), bit_or(m0) "
    f"FROM ({rows()}) GROUP BY user_id",
    "without the order": f"SELECT user_id, bit_xor(h), count(*), bit_or(m0) FROM ({rows(False)}) GROUP BY user_id",
    "without the row count": f"SELECT user_id, bit_xor(h), min(ord), bit_or(m0) FROM ({rows()}) GROUP BY user_id",
    "xor alone": f"SELECT user_id, bit_xor(h) FROM ({rows(False, False)}) GROUP BY user_id",
    "grouped by a hash of the id": "SELECT hash(user_id) AS k, any_value(user_id), bit_xor(h), min(ord), count(*), "
    f"bit_or(m0) FROM ({rows()}) GROUP BY k",
    "scan only (no grouping)": f"SELECT count(*), bit_xor(h) FROM ({rows()})",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", default="1GB")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    folder = args.out / f"n{args.users}" / "b"
    if not folder.is_dir():
        raise SystemExit(f"no workload in {folder}: run bench/run.py --users {args.users} first")
    db = duckdb.connect(config={"preserve_insertion_order": False, "memory_limit": args.memory})
    register(db, folder)
    found: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):
        for name, query in VARIANTS.items():
            started = time.perf_counter()
            db.execute(f"CREATE OR REPLACE TEMP TABLE folded AS {query}").fetchall()
            found[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(times) for name, times in found.items()}
    engine = medians[next(iter(VARIANTS))]
    print(
        f"| fold variant, {args.users:,} users, memory {args.memory}, medians of {args.repeat} | seconds | × engine |"
    )
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {seconds / engine:.2f} |")
    print(json.dumps({"users": args.users, "memory": args.memory} | {k: round(v, 3) for k, v in medians.items()}))


if __name__ == "__main__":
    main()
