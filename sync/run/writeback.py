"""The sync log in the warehouse: after each run, its row and its changes (the fields of ``diff --json``) are
appended to ``<schema>.runs`` and ``<schema>.changes`` in the job's warehouse (``writeback.url``, or
``source.url``), so that analysts can join audience history with everything else in their BI tool.

A run is written in one transaction that first removes whatever an earlier attempt left of it (rows are keyed
by the state store's installation id and the run id), so a write-back that is retried never duplicates. The
changes are bulk-loaded: ``COPY`` on PostgreSQL, batched inserts elsewhere. A write-back that fails is
recorded on the run (``runs show``) and tried again by the next run of the job; it never changes the run's
outcome, and the run's acknowledged state is already stored when it begins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from sync.config import JobConfig
from sync.errors import SyncError
from sync.model import RUN_COUNTS, change_of
from sync.sources import driver_reason, warehouse_engine
from sync.store import Store
from sync.store.models import Run
from sync.text import plural

log = logging.getLogger(__name__)

# Runs written per run of the job: the one that just ended and, newest first, any an earlier attempt missed.
RUNS_PER_PASS = 20

RUN_COLUMNS = (
    "installation", "run_id", "job", "kind", "dry_run", "trigger", "status", "started_at", "finished_at",
    "duration_s", *RUN_COUNTS, "error", "written_at",
)  # fmt: skip
CHANGE_COLUMNS = (
    "installation", "run_id", "job", "user_id", "key", "change", "old", "new", "message_id", "status",
    "http_status", "error", "finished_at",
)  # fmt: skip


class Tables:
    """The two tables in the warehouse: in ``schema``, or (SQLite, which has none) prefixed with its name."""

    def __init__(self, schema: str, dialect: str) -> None:
        schemaless = dialect == "sqlite"
        self.schema = None if schemaless else schema
        metadata = MetaData(schema=self.schema)
        prefix = f"{schema}_" if schemaless else ""
        self.runs = Table(
            f"{prefix}runs",
            metadata,
            Column("installation", String(64), nullable=False),
            Column("run_id", BigInteger, nullable=False),
            Column("job", String(100), nullable=False),
            Column("kind", String(20), nullable=False),
            Column("dry_run", Boolean, nullable=False),
            Column("trigger", String(20)),
            Column("status", String(20), nullable=False),
            Column("started_at", DateTime(timezone=True), nullable=False),
            Column("finished_at", DateTime(timezone=True)),
            Column("duration_s", Float),
            *(Column(count, Integer) for count in RUN_COUNTS),
            Column("error", Text),
            Column("written_at", DateTime(timezone=True), nullable=False),
            PrimaryKeyConstraint("installation", "run_id"),
        )
        self.changes = Table(
            f"{prefix}changes",
            metadata,
            Column("installation", String(64), nullable=False),
            Column("run_id", BigInteger, nullable=False),
            Column("job", String(100), nullable=False),
            Column("user_id", Text, nullable=False),
            Column("key", String(200), nullable=False),
            Column("change", String(20), nullable=False),
            Column("old", Text),  # JSON
            Column("new", Text),  # JSON
            Column("message_id", String(100)),
            Column("status", String(20)),
            Column("http_status", Integer),
            Column("error", Text),
            Column("finished_at", DateTime(timezone=True)),
            Index(f"ix_{prefix}changes_run", "installation", "run_id"),
        )
        self.metadata = metadata

    def create(self, connection: Connection) -> None:
        """The schema and tables, where missing."""
        if self.schema is not None:
            connection.execute(CreateSchema(self.schema, if_not_exists=True))
        self.metadata.create_all(connection, checkfirst=True)


def write_back(store: Store, job: JobConfig, now: datetime) -> list[int]:
    """Write the job's runs not yet in the warehouse (newest first, ``RUNS_PER_PASS`` at most); the runs
    written. A failure is logged as a warning and recorded on the run; the next run of the job tries again."""
    if job.writeback is None:
        return []
    runs = store.unwritten_runs(job.name, RUNS_PER_PASS)
    if not runs:
        return []
    engine = _engine(job)
    written: list[int] = []
    try:
        tables = Tables(job.writeback.schema_, engine.dialect.name)
        installation = store.installation_id()
        with engine.begin() as connection:
            tables.create(connection)
        for run in runs:
            write_run(engine, tables, store, installation, run, now)
            store.set_written_back(run.id, now)
            written.append(run.id)
    except (SQLAlchemyError, SyncError, OSError) as exc:
        reason = driver_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
        failed = runs[len(written)].id
        log.warning(
            "could not write run %s to the warehouse's sync log (%s.runs); the next run tries again: %s",
            failed,
            job.writeback.schema_,
            reason,
            extra={"event": "writeback_failed", "job": job.name, "run_id": failed},
        )
        store.set_written_back(failed, None, reason)
    finally:
        engine.dispose()
    if written:
        log.info(
            "wrote %s to the warehouse's sync log",
            plural(len(written), "run"),
            extra={"event": "writeback", "job": job.name, "runs": written},
        )
    return written


def _engine(job: JobConfig) -> Engine:
    url = job.writeback.url if job.writeback is not None else None
    if not url or url == job.source.url:
        return warehouse_engine(job)  # with the job's session statements
    return create_engine(url)


def write_run(engine: Engine, tables: Tables, store: Store, installation: str, run: Run, now: datetime) -> int:
    """One run's row and changes, replacing any earlier attempt's, in one transaction; the changes written."""
    runs, changes = tables.runs, tables.changes
    with engine.begin() as connection:
        for table in (changes, runs):
            connection.execute(delete(table).where(table.c.installation == installation, table.c.run_id == run.id))
        batches = change_rows(store, installation, run)
        if connection.dialect.name == "postgresql":
            count = _copy(connection, changes, batches)
        else:
            count = _insert(connection, changes, batches)
        connection.execute(insert(runs).values(run_row(installation, run, now)))
    return count


def run_row(installation: str, run: Run, now: datetime) -> dict[str, Any]:
    finished = run.finished_at
    return {
        "installation": installation,
        "run_id": run.id,
        "job": run.job,
        "kind": run.kind,
        "dry_run": run.dry_run,
        "trigger": run.trigger,
        "status": run.status,
        "started_at": run.started_at,
        "finished_at": finished,
        "duration_s": round((finished - run.started_at).total_seconds(), 3) if finished else None,
        **{count: getattr(run, count) or 0 for count in RUN_COUNTS},
        "error": run.error,
        "written_at": now,
    }


def change_rows(store: Store, installation: str, run: Run) -> Iterator[list[tuple[Any, ...]]]:
    """The run's changes as ``CHANGE_COLUMNS`` tuples, one per (subject, key), in batches from the store."""
    loads, dumps = orjson.loads, orjson.dumps
    for batch in store.run_update_rows(run.id, run.job):
        rows = []
        for user_id, message_id, changes, status, http_status, error, finished_at in batch:
            for key, kind, old, new in loads(changes):
                rows.append(
                    (
                        installation,
                        run.id,
                        run.job,
                        user_id,
                        key,
                        change_of(kind, new),
                        None if old is None else dumps(old).decode(),
                        None if new is None else dumps(new).decode(),
                        message_id,
                        status,
                        http_status,
                        error,
                        finished_at,
                    )
                )
        yield rows


def _copy(connection: Connection, table: Table, batches: Iterable[list[tuple[Any, ...]]]) -> int:
    """The rows into ``table`` through PostgreSQL's COPY, in the connection's transaction."""
    driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
    name = f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'
    columns = ", ".join(f'"{c}"' for c in CHANGE_COLUMNS)
    count = 0
    with driver.cursor() as cursor, cursor.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
        for batch in batches:
            for row in batch:
                copy.write_row(row)
            count += len(batch)
    return count


def _insert(connection: Connection, table: Table, batches: Iterable[list[tuple[Any, ...]]]) -> int:
    count = 0
    for batch in batches:
        rows = [dict(zip(CHANGE_COLUMNS, row, strict=True)) for row in batch]
        if connection.dialect.name != "postgresql":  # the time as the column's type takes it
            for row in rows:
                row["finished_at"] = _moment(row["finished_at"])
        connection.execute(insert(table), rows)
        count += len(rows)
    return count


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
