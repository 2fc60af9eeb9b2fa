"""Rows for people (tables of readable width) and for scripts (JSON lines, CSV, Parquet), streamed."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from sync.errors import SyncError

FORMATS = ("table", "csv", "jsonl", "parquet")
# Integer columns keep their type in Parquet; every other column is text (values as JSON where needed).
_INTEGER_FIELDS = frozenset(
    {
        "run_id",
        "http_status",
        "attempts",
        "failed_runs",
        "last_run_id",
        "users",
        "updates",
        "entered",
        "exited",
        "traits_changed",
        "delivered",
        "failed",
    }
)
# Rows per Parquet row group: bounded memory however many rows there are.
_PARQUET_BATCH = 50_000


def print_rows(
    console: Console, rows: Iterable[Mapping[str, Any]], fields: Sequence[str], fmt: str, output: Path | None = None
) -> int:
    """Write ``rows`` in ``fmt`` to ``output`` (or standard output); returns how many were written."""
    if fmt == "parquet":
        if output is None:
            raise SyncError("--format parquet needs --output FILE")
        return _parquet(rows, fields, output)
    if fmt == "table":
        if output is not None:
            raise SyncError("a table is for the terminal; use --format csv, jsonl or parquet with --output")
        return print_table(console, rows, fields)
    with _open(output) as stream:
        return (_jsonl if fmt == "jsonl" else _csv)(rows, fields, stream)


@contextmanager
def _open(output: Path | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    with output.open("w", encoding="utf-8", newline="") as stream:
        yield stream


def _jsonl(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], stream: IO[str]) -> int:
    count = 0
    for row in rows:
        stream.write(json.dumps({f: row.get(f) for f in fields}, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count


def _csv(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], stream: IO[str]) -> int:
    writer = csv.DictWriter(stream, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({f: cell(row.get(f)) for f in fields})
        count += 1
    return count


def _parquet(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], output: Path) -> int:
    schema = pa.schema([(f, pa.int64() if f in _INTEGER_FIELDS else pa.string()) for f in fields])
    count = 0
    with pq.ParquetWriter(output, schema) as writer:
        batch: list[Mapping[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _PARQUET_BATCH:
                writer.write_table(_arrow(batch, fields, schema))
                count, batch = count + len(batch), []
        if batch or not count:
            writer.write_table(_arrow(batch, fields, schema))
            count += len(batch)
    return count


def _arrow(batch: list[Mapping[str, Any]], fields: Sequence[str], schema: pa.Schema) -> pa.Table:
    columns = {f: [row.get(f) if f in _INTEGER_FIELDS else _text(row.get(f)) for row in batch] for f in fields}
    return pa.table(columns, schema=schema)


def _text(value: object) -> str | None:
    return None if value is None else (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def print_table(console: Console, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> int:
    """A table when it fits the terminal; otherwise one block of ``field: value`` lines per row, so that no
    cell is cut to ``…`` (psql's expanded display)."""
    table = Table(*fields, header_style="bold")
    cells: list[list[str]] = []
    for row in rows:
        cells.append([cell(row.get(f)) for f in fields])
        table.add_row(*cells[-1])
    if not cells:
        console.print("(nothing)")
    elif _natural_width(fields, cells) <= console.width:
        console.print(table)
    else:
        _print_blocks(console, fields, cells)
    return len(cells)


def _natural_width(fields: Sequence[str], cells: list[list[str]]) -> int:
    """The table's width with no cell wrapped or cut: the widest line of each column, and the borders."""
    widest = [
        max([len(f), *(max(map(len, row[i].splitlines() or [""])) for row in cells)]) for i, f in enumerate(fields)
    ]
    return sum(widest) + 3 * len(fields) + 1


def _print_blocks(console: Console, fields: Sequence[str], cells: list[list[str]]) -> None:
    width = max(len(f) for f in fields)
    for number, values in enumerate(cells, 1):
        console.print(f"[bold]-[ {number} ]-[/bold]", highlight=False)
        for name, value in zip(fields, values, strict=True):
            console.print(f"{name:<{width}} | {value}", markup=False, highlight=False, soft_wrap=True)


def cell(value: object) -> str:
    """A value as text: JSON for booleans and structures (``true``, not ``True``), empty for null."""
    if value is None:
        return ""
    if isinstance(value, bool | dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
