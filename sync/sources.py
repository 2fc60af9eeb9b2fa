"""Reading a job's snapshot from its warehouse (any SQLAlchemy URL) and from CSV or Parquet files."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from sync.config import ComputationConfig, JobConfig, driver_problem
from sync.errors import SourceError
from sync.model import PROFILE_KIND, SUBJECTS, Computation, profile_key
from sync.snapshot.columns import Arrow, Columns, Raw, arrow_or_list, table_of
from sync.snapshot.engine import Snapshot
from sync.snapshot.normalise import Profiles, normalise

log = logging.getLogger(__name__)

# Rows of a query turned into Arrow arrays at a time.
FETCH = 100_000


def computations(job: JobConfig) -> tuple[Computation, ...]:
    """The job's audiences then traits, in configuration order; then, with ``send_profile_changes``, each
    profile field diffed like a trait."""
    fields = [Computation(profile_key(c), PROFILE_KIND, c) for c in profile_fields(job)]
    return (*configured(job), *(fields if job.send_profile_changes else ()))


def configured(job: JobConfig) -> tuple[Computation, ...]:
    return tuple(
        [Computation(a.resolved_key, "audience", a.name) for a in job.audiences]
        + [Computation(t.resolved_key, "trait", t.name) for t in job.traits]
    )


def profile_fields(job: JobConfig) -> tuple[str, ...]:
    """The fields of the job's profiles: its subject's standard columns but its id, and the enriched ones."""
    subject = SUBJECTS[job.subject]
    return (*(c for c in subject.profile_columns if c not in (subject.id_column, "anonymous_id")), *job.enrich)


def profile_results(job: JobConfig, profiles: Raw) -> dict[str, Raw]:
    """Each profile field as a trait's result (id, value), for ``send_profile_changes``."""
    table = table_of(profiles)
    id_column = SUBJECTS[job.subject].id_column
    ids = table.get(id_column, [])
    results: dict[str, Raw] = {}
    for field in profile_fields(job):
        values = table.get(field)
        results[profile_key(field)] = {id_column: ids, "value": values if values is not None else [None] * len(ids)}
    return results


def read_snapshot(job: JobConfig) -> Snapshot:
    """Run every query and read every file of the job; raise SourceError naming the one that failed."""
    raw: dict[str, Raw] = {}
    profiles: Raw | Profiles | None = None
    sql_items = [(c, item) for c, item in _items(job) if item.query is not None]
    if job.source.url and (sql_items or job.source.profiles):
        problem = driver_problem(job.source.url)
        if problem:
            raise SourceError(f"job {job.name!r}: the warehouse {job.source.redacted_url()}: {problem}")
        engine = warehouse_engine(job)
        try:
            with engine.connect() as connection:
                if job.source.profiles:
                    profiles = query_columns(connection, job.source.profiles, job.name, "profiles")
                for computation, item in sql_items:
                    raw[computation.key] = query_columns(connection, item.query or "", job.name, label(computation))
        except SQLAlchemyError as exc:
            raise SourceError(
                f"job {job.name!r}: cannot connect to the warehouse {job.source.redacted_url()}: {driver_reason(exc)}"
            ) from None
        finally:
            engine.dispose()
    files = [(c.key, Path(item.file), label(c)) for c, item in _items(job) if item.file is not None]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Arrow's readers release the GIL
        profile_file = (
            pool.submit(
                read_profiles,
                Path(job.source.profiles_file),
                job.name,
                job.subject == "user" and not job.send_profile_changes,
            )
            if job.source.profiles_file
            else None
        )
        read = list(pool.map(lambda file: read_file(file[1], job.name, file[2]), files))
        profiles = profile_file.result() if profile_file is not None else profiles
    for (key, _path, _label_text), table in zip(files, read, strict=True):
        raw[key] = table
    if job.send_profile_changes and profiles is not None and not isinstance(profiles, Profiles):
        raw.update(profile_results(job, profiles))
    try:
        parts = normalise(computations(job), profiles, raw, job.enrich, SUBJECTS[job.subject])
        del read, raw, profiles  # what normalising did not keep (wider offsets, skipped rows) goes before the engine
        return Snapshot(parts)
    except SourceError as exc:
        raise SourceError(f"job {job.name!r}: {exc}") from None


def warehouse_engine(job: JobConfig) -> Engine:
    """The job's warehouse; each connection runs ``source.session`` first. A driver that fails to connect
    with an error of its own (PyHive's Thrift transport) fails as its DB-API's OperationalError does."""
    engine = create_engine(job.source.url or "")
    errors = engine.dialect.loaded_dbapi.Error

    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except errors:
            raise
        except Exception as exc:
            raise dialect.loaded_dbapi.OperationalError(f"{type(exc).__name__}: {exc}") from None

    event.listen(engine, "do_connect", connect)
    if job.source.session:

        def set_up(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            try:
                for position, statement in enumerate(job.source.session):
                    try:
                        cursor.execute(statement)
                    except errors as exc:
                        reason = _first_line(exc, type(exc).__name__)
                        raise SourceError(f"job {job.name!r}: source.session[{position}] failed: {reason}") from None
            finally:
                cursor.close()
            connection.commit()  # a setting made in a transaction rolled back later would be undone

        event.listen(engine, "connect", set_up)
    return engine


def _items(job: JobConfig) -> list[tuple[Computation, ComputationConfig]]:
    return list(zip(configured(job), [*job.audiences, *job.traits], strict=True))


def query_columns(connection: Connection, sql: str, job: str, label: str) -> Columns:
    """The query's rows as Arrow arrays, read ``FETCH`` rows at a time (through a server-side cursor where
    the driver has one), so that no more than that many rows are Python objects at once."""
    pieces: list[list[pa.Array | list[Any]]] = []
    started = time.monotonic()
    try:
        cursor = _cursor(connection)
        try:
            cursor.execute(sql)
            columns = [str(d[0]) for d in cursor.description or ()]
            pieces = [[] for _ in columns]
            while rows := cursor.fetchmany(FETCH):
                for position, piece in enumerate(pieces):
                    piece.append(arrow_or_list([row[position] for row in rows]))
        finally:
            cursor.close()
    except connection.dialect.loaded_dbapi.Error as exc:
        connection.rollback()
        raise SourceError(f"job {job!r}: the {label} query failed: {_first_line(exc, type(exc).__name__)}") from None
    result = {name: _joined(piece) for name, piece in zip(columns, pieces, strict=True)}
    rows = len(next(iter(result.values()))) if result else 0
    log.debug(
        "query read", extra={"job": job, "query": label, "rows": rows, "seconds": round(time.monotonic() - started, 3)}
    )
    return result


def _cursor(connection: Connection) -> Any:
    """The driver's own cursor (rows as plain tuples); a server-side one on PostgreSQL, so that the rows
    stay on the server until they are fetched."""
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        return driver.cursor(name="audience_sync_source")  # type: ignore[union-attr]
    return driver.cursor()  # type: ignore[union-attr]


def _joined(pieces: list[pa.Array | list[Any]]) -> pa.Array | list[Any]:
    """One column from its pieces: one Arrow array when they agree on a type, else the Python values."""
    arrays = [p for p in pieces if not isinstance(p, list)]
    typed = {a.type for a in arrays if not pa.types.is_null(a.type)}
    if len(arrays) == len(pieces) and len(typed) <= 1:
        kind = typed.pop() if typed else pa.null()
        return pa.chunked_array([a.cast(kind) for a in arrays], kind) if arrays else pa.array([])
    values = [v for p in pieces for v in (p if isinstance(p, list) else p.to_pylist())]
    return arrow_or_list(values)


def read_file(path: Path, job: str, label: str) -> Raw:
    """A CSV or Parquet file; user ids are read as text so that ``007`` stays ``007``."""
    try:
        if _is_parquet(path):
            return _parquet(path)
        return pd.read_csv(path, dtype={"user_id": str}, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise SourceError(f"job {job!r}: cannot read the {label} file {path.name}: {exc}") from None


def read_profiles(path: Path, job: str, lazily: bool = True) -> Raw | Profiles:
    """A profiles file. A Parquet file's user ids are read now, and its other columns later, for the users
    a run looks at (the file stays open, so a file replaced meanwhile is still read as it was). Account
    profiles (``lazily`` False) are read whole: a run renames their columns."""
    if not lazily or not _is_parquet(path):
        return read_file(path, job, "profiles")
    where = f"job {job!r}: the profiles file {path.name}"
    try:
        file = pq.ParquetFile(path)
        names = tuple(file.schema_arrow.names)
        ids = _narrow(file.read(columns=["user_id"]).column(0)) if "user_id" in names else None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise SourceError(f"job {job!r}: cannot read the profiles file {path.name}: {exc}") from None
    return Profiles(names, ids, _ParquetRows(file, names, where), where)


class _ParquetRows:
    """The rows of an open Parquet file, read a row group at a time and only where some are asked for."""

    def __init__(self, file: pq.ParquetFile, names: tuple[str, ...], where: str) -> None:
        self._file, self._names, self._where = file, list(names), where
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def take(self, rows: np.ndarray) -> Columns:
        ascending = bool(np.all(rows[1:] > rows[:-1]))  # in file order, each once: as an initial sync asks
        order = None if ascending else np.argsort(rows, kind="stable")
        wanted = rows if order is None else rows[order]
        bounds = np.searchsorted(wanted, self._starts)
        pieces = []
        try:
            for group in range(len(self._starts) - 1):
                low, high = int(bounds[group]), int(bounds[group + 1])
                if low < high:
                    read = self._file.read_row_group(group, columns=self._names)
                    whole_group = ascending and high - low == read.num_rows  # every row: no copy
                    picked = read if whole_group else read.take(pa.array(wanted[low:high] - self._starts[group]))
                    pieces.append(pa.table([_narrow(c) for c in picked.columns], names=picked.column_names))
        except (OSError, ValueError, IndexError, pa.ArrowException) as exc:  # a file rewritten in place
            raise SourceError(f"{self._where}: cannot be read: {exc}") from None
        if not pieces:
            return {name: pa.array([], pa.string()) for name in self._names}
        whole = pa.concat_tables(pieces)
        if order is not None:
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            whole = whole.take(pa.array(back))
        return {name: whole.column(name) for name in self._names}


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _narrow(column: Arrow) -> Arrow:
    """Large text as text with 4-byte offsets, chunk by chunk."""
    if not pa.types.is_large_string(column.type):
        return column
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([chunk.cast(pa.string()) for chunk in column.chunks], pa.string())
    return column.cast(pa.string())


def _parquet(path: Path) -> pa.Table:
    """A Parquet file, its large text columns read as text with 4-byte offsets (half the offsets' memory,
    and the form the snapshot keeps); as written when a row group holds more text than those can address."""
    schema = pq.read_schema(path)
    narrow = pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema])
    if narrow.equals(schema):
        return pq.read_table(path)
    try:
        return pq.read_table(path, schema=narrow)
    except pa.ArrowException:
        return pq.read_table(path)


def label(computation: Computation) -> str:
    """A computation as errors name it: ``trait 'ltv'``."""
    return f"{computation.kind} {computation.key!r}"


def driver_reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement echo and background link."""
    return _first_line(getattr(exc, "orig", None), type(exc).__name__)


def _first_line(exc: BaseException | None, fallback: str) -> str:
    """The first line of a driver's error message, or ``fallback`` when it has none. PyHive's errors carry the
    server's whole answer (a Thrift structure, with a Java stack); its ``errorMessage`` is what the server said."""
    answer = exc.args[0] if exc is not None and exc.args else None
    said = getattr(getattr(answer, "status", None), "errorMessage", None)
    text = str(said if said else exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else fallback
