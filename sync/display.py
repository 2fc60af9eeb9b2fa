"""Rows for people (tables of readable width) and for scripts (JSON lines, CSV)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def print_rows(console: Console, rows: Iterable[Mapping[str, Any]], fields: Sequence[str], fmt: str) -> None:
    """``table`` for people; ``jsonl`` and ``csv`` stream row by row for scripts."""
    if fmt == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps({f: row.get(f) for f in fields}, ensure_ascii=False, default=str) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({f: cell(row.get(f)) for f in fields})
    else:
        print_table(console, rows, fields)


def print_table(console: Console, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> None:
    table = Table(*fields, header_style="bold")
    count = 0
    for row in rows:
        table.add_row(*(cell(row.get(f)) for f in fields))
        count += 1
    console.print(table if count else "(nothing)")


def cell(value: object) -> str:
    """A value as text: JSON for booleans and structures (``true``, not ``True``), empty for null."""
    if value is None:
        return ""
    if isinstance(value, bool | dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
