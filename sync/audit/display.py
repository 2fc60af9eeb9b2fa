"""Rows for people (tables of readable width) and for scripts (JSON lines, CSV, Parquet), streamed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from sync.errors import SyncError
from sync.model import RUN_COUNTS
from sync.text import plural

if TYPE_CHECKING:  # pyarrow (50 MiB) loads only to write Parquet
    import pyarrow as pa

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
        "unmatched",
        "skipped_rows",
        "parked",
        "throttled",
    }
)
# Columns whose values Parquet holds as JSON text (``true``, ``12.5``, ``"gold"``; null is Parquet's null), and
# says so in each such column's metadata (``encoding: json``).
JSON_FIELDS = frozenset({"old", "new", "issues", "expected", "found"})
# Rows per Parquet row group: bounded memory however many rows there are.
_PARQUET_BATCH = 50_000


def print_rows(
    console: Console,
    rows: Iterable[Mapping[str, Any]],
    fields: Sequence[str],
    fmt: str,
    output: Path | None = None,
    empty: str = "nothing to show",
) -> int:
    """Write ``rows`` in ``fmt`` to ``output`` (or standard output); returns how many were written. A table
    with no rows says ``empty`` instead."""
    if fmt == "parquet":
        if output is None:
            raise SyncError("--format parquet needs --output FILE")
        return _parquet(rows, fields, output)
    if fmt == "table":
        if output is not None:
            raise SyncError("a table is for the terminal; use --format csv, jsonl or parquet with --output")
        return print_table(console, rows, fields, empty)
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
    """RFC 4180 CSV in which null and the empty string differ, as PostgreSQL's COPY writes them: null is an
    empty field, the empty string a quoted one (``""``)."""
    stream.write(",".join(_csv_field(f) for f in fields) + "\n")
    count = 0
    for row in rows:
        stream.write(",".join(_csv_value(row.get(f)) for f in fields) + "\n")
        count += 1
    return count


def _csv_value(value: object) -> str:
    return "" if value is None else _csv_field(cell(value))


def _csv_field(text: str) -> str:
    if text == "" or any(c in text for c in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def _parquet(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], output: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([_parquet_field(f) for f in fields])
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


def _parquet_field(name: str) -> pa.Field:
    import pyarrow as pa

    if name in _INTEGER_FIELDS:
        return pa.field(name, pa.int64())
    if name in JSON_FIELDS:
        return pa.field(name, pa.string(), metadata={"encoding": "json"})
    return pa.field(name, pa.string())


def _arrow(batch: list[Mapping[str, Any]], fields: Sequence[str], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    columns = {f: [_parquet_value(f, row.get(f)) for row in batch] for f in fields}
    return pa.table(columns, schema=schema)


def _parquet_value(field: str, value: object) -> object:
    if value is None or field in _INTEGER_FIELDS:
        return value
    if field in JSON_FIELDS or not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def print_table(
    console: Console, rows: Iterable[Mapping[str, Any]], fields: Sequence[str], empty: str = "nothing to show"
) -> int:
    """A table when it fits the terminal; otherwise one block of ``field: value`` lines per row, so that no
    cell is cut to ``…`` (psql's expanded display). No rows: ``empty``."""
    table = Table(*fields, header_style="bold")
    cells: list[list[str]] = []
    for row in rows:
        cells.append([cell(row.get(f)) for f in fields])
        table.add_row(*cells[-1])
    if not cells:
        console.print(empty, highlight=False)
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


def print_run_detail(console: Console, detail: Mapping[str, Any]) -> None:
    """``runs show RUN_ID`` for people: the run's facts, phases, error, guard, alerts, failures, definition."""
    run = detail["run"]
    say = console.print
    say(f"[bold]run {run['run_id']}[/bold] of job {run['job']}: {run['status']}", highlight=False)
    for name in ("kind", "trigger", "started_at", "finished_at"):
        say(f"  {name:<14} {cell(run[name])}", markup=False, highlight=False)
    say(f"  {'duration':<14} {_seconds(run['duration_s'])}", markup=False, highlight=False)
    say("counts", style="bold")
    for name in RUN_COUNTS:
        say(f"  {name:<14} {cell(run[name])}", markup=False, highlight=False)
    if run["match_rate"] is not None:
        say(f"  {'match_rate':<14} {run['match_rate']:.0%}", markup=False, highlight=False)
    summary = detail.get("reconcile")
    if summary is not None:
        _print_reconciliation(console, run["run_id"], summary)
    if detail["phases"]:
        say("phases", style="bold")
        for phase in detail["phases"]:
            say(f"  {phase['phase']:<14} {phase['seconds']:.2f}s", markup=False, highlight=False)
    if run["error"]:
        say("error", style="bold")
        say(f"  {run['error']}", markup=False, highlight=False, soft_wrap=True)
    guard = detail["guard"]
    say("mass-change guard", style="bold")
    if guard is None:
        say("  did not look (the run ended before planning, or the job had nothing to compare)", highlight=False)
    elif guard["findings"]:
        verdict = "stopped the run" if guard["stopped"] else "would have stopped the run (overridden or dry run)"
        say(f"  {verdict}: {'; '.join(guard['findings'])}", markup=False, highlight=False, soft_wrap=True)
    else:
        say("  passed", highlight=False)
    say("alerts sent", style="bold")
    for text in detail["alerts"] or ["none"]:
        say(f"  {text}", markup=False, highlight=False, soft_wrap=True)
    writeback = detail.get("writeback")
    if writeback is not None:
        say("sync log in the warehouse", style="bold")
        if writeback["written_at"]:
            say(f"  written at {writeback['written_at']}", markup=False, highlight=False)
        else:
            say(f"  not written yet (the next run tries again): {writeback['error']}", markup=False, highlight=False)
    if detail["failure_reasons"]:
        say("why updates were not delivered", style="bold")
        for reason in detail["failure_reasons"]:
            say(f"  {reason['updates']:>7} × {reason['reason'] or '?'}", markup=False, highlight=False, soft_wrap=True)
    if detail["failures"]:
        say(f"first {len(detail['failures'])} updates not delivered", style="bold")
        for row in detail["failures"]:
            status = f"HTTP {row['http_status']}" if row["http_status"] else row["status"]
            say(f"  {row['user_id']}: {status} {row['error'] or ''}", markup=False, highlight=False, soft_wrap=True)
    if detail["definition"] is not None:
        say("job definition in effect (secrets left out)", style="bold")
        say(json.dumps(detail["definition"], indent=2, ensure_ascii=False), markup=False, highlight=False)


def _seconds(value: float | None) -> str:
    return "still running" if value is None else f"{value:.1f}s"


def _print_reconciliation(console: Console, run_id: int, summary: Mapping[str, Any]) -> None:
    """What a reconciliation read and found (``runs show`` of a run of the kind ``reconcile``)."""
    lines = [
        ("read", "every record, page by page" if summary["read"] == "list" else "the job's records, one by one"),
        ("requests", f"{summary['requests']} ({plural(summary['pages'], 'page')})"),
        ("complete", "yes" if summary["complete"] else f"no ({summary['cut_short'] or 'failed'}): only what was read"),
        ("drift", ", ".join(f"{n} {name}" for name, n in summary["drift"].items() if n) or "none"),
        (
            "subjects",
            f"{summary['checked']} checked, {summary['drifted_subjects']} drifted (`diff {run_id}` lists them)",
        ),
    ]
    if summary["repaired"] or summary["looked_up_again"]:
        lines.append(
            ("repair", f"{summary['repaired']} resent by the next run, {summary['looked_up_again']} looked up")
        )
    console.print("reconciliation", style="bold")
    for name, text in lines:
        console.print(f"  {name:<14} {text}", markup=False, highlight=False, soft_wrap=True)
