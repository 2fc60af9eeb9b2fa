"""The warehouse engine's copy of the acknowledged fingerprints (``sync.snapshot.warehouse``): brought in line
with the state store, which stays the truth, before each run and written again after it.

The copy names the installation, the hash scheme and the last run it holds, and its row count and checksum
must match the state store's. One that lags (a run acknowledged updates and stopped before writing it)
takes the rows written since; one that is missing, foreign, of another scheme or that does not match is
rebuilt from the state store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    Connection,
    DateTime,
    MetaData,
    Table,
    cast,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
    union_all,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from sync.errors import SourceError
from sync.snapshot import pushdown
from sync.snapshot.abilities import abilities
from sync.sources import driver_reason

log = logging.getLogger(__name__)

# Rows sent to the warehouse per statement when the copy is written without a bulk path.
_CHUNK = 10_000
# Rows per INSERT ... VALUES statement where that is the bulk path (Spark: each statement is a job).
_VALUES_CHUNK = 20_000


class Fingerprints(Protocol):
    """What the engine reads of the state store: the acknowledged fingerprints and what they add up to."""

    def installation_id(self) -> str: ...

    def fingerprint_facts(self, job: str, checksum: Any) -> tuple[int, int, int]: ...

    def fingerprint_pieces(self, job: str, after_run: int | None = None) -> Iterator[pa.Table]: ...


@dataclass(frozen=True)
class Names:
    """A job's tables in the warehouse: ``<prefix>_acked`` (the copy), ``_cur`` and ``_chg`` (a run's
    fingerprints and changed set, dropped after it) and ``_new`` (rows on their way into the copy)."""

    schema: str
    prefix: str

    def table(self, suffix: str) -> Table:
        return pushdown.copy_table(self.schema, f"{self.prefix}_{suffix}")


# The copy ------------------------------------------------------------------------------------------------


def refresh(
    connection: Connection, job: str, names: Names, store: Fingerprints, shapes: dict[str, str] | None
) -> dict[str, str]:
    """Bring the copy in line with the state store (see the module's docstring); the column types it
    recorded. ``shapes`` replaces those when given."""
    copies = pushdown.copies_table(names.schema, abilities(connection.dialect.name).constraints)
    copy = names.table("acked")
    try:
        _ensure(connection, names.schema, copies)
        meta = connection.execute(select(copies).where(copies.c.job == job)).mappings().first()
        last, count, total = store.fingerprint_facts(job, pushdown.checksum)
        installation = store.installation_id()
        usable = (
            meta is not None
            and meta["installation"] == installation
            and meta["scheme"] == pushdown.SCHEME
            and meta["copy_table"] == copy.name
            and exists(connection, copy)
        )
        if usable and meta is not None and int(meta["as_of_run"]) < last:
            _load(connection, names, store.fingerprint_pieces(job, after_run=int(meta["as_of_run"])), patch=True)
        if not usable or _facts(connection, copy) != (count, total):
            if usable:
                log.warning(
                    "the warehouse copy of the acknowledged fingerprints does not match the state store; rebuilding it",
                    extra={"job": job},
                )
            if exists(connection, copy):
                copy.drop(connection)
            copy.create(connection)
            _load(connection, names, store.fingerprint_pieces(job), patch=False)
            if _facts(connection, copy) != (count, total):
                raise SourceError(
                    f"job {job!r}: the copy of the acknowledged fingerprints in {names.schema}.{copy.name} "
                    "does not match the state store after it was rebuilt; is another installation writing it?"
                )
        recorded: dict[str, str] = json.loads(meta["shapes"]) if usable and meta is not None else {}
        for statement in forget(copies, job, connection.dialect):
            connection.exec_driver_sql(statement)
        connection.execute(
            insert(copies).values(
                job=job,
                copy_table=copy.name,
                installation=installation,
                scheme=pushdown.SCHEME,
                as_of_run=last,
                row_count=count,
                checksum=total,
                shapes=json.dumps(shapes if shapes is not None else recorded, sort_keys=True),
                # cast: Spark takes no text for a timestamp, which is how PyHive sends a time
                written_at=cast(literal(datetime.now(UTC).replace(tzinfo=None)), DateTime()),
            )
        )
        connection.commit()
    except SQLAlchemyError as exc:
        connection.rollback()
        raise SourceError(
            f"job {job!r}: cannot keep the acknowledged fingerprints in the warehouse schema "
            f"{names.schema} (the warehouse engine needs to create tables there): {driver_reason(exc)}"
        ) from None
    return recorded


def exists(connection: Connection, target: Table) -> bool:
    """Whether ``target`` is in the warehouse, asked as the warehouse can answer (``sync.snapshot.abilities``)."""
    if abilities(connection.dialect.name).table_check == "inspect":
        return inspect(connection).has_table(target.name, schema=target.schema)
    shown = connection.exec_driver_sql(f"SHOW TABLES IN `{target.schema}` LIKE '{target.name}'").fetchall()
    return any(str(row[1]).lower() == target.name.lower() for row in shown)


def _ensure(connection: Connection, schema: str, copies: Table) -> None:
    """The schema and the copies table; tried twice, for two jobs' first runs creating them at once."""
    for attempt in (1, 2):
        try:
            connection.execute(CreateSchema(schema, if_not_exists=True))
            if not exists(connection, copies):
                copies.create(connection)
            connection.commit()
            return
        except SQLAlchemyError:
            connection.rollback()
            if attempt == 2:
                raise


def checked(copy: Table) -> pushdown.Rows:
    """The copy's row count and checksum, to match the state store's."""
    return select(func.count(), pushdown.checksum(copy.c.fp))


def patches(copy: Table, staging: Table, dialect: Any) -> list[str]:
    """The statements that replace the copy's rows of the subjects in ``staging`` by the staged ones, as the
    warehouse can (``sync.snapshot.abilities``): one MERGE; a DELETE and an INSERT; or, where tables take no
    DELETE, the copy rewritten as a new table that is swapped in."""
    can = abilities(dialect.name)
    name = dialect.identifier_preparer.format_table
    if can.merge:
        return [
            f"MERGE INTO {name(copy)} AS c USING {name(staging)} AS s ON c.sid = s.sid "
            "WHEN MATCHED THEN UPDATE SET fp = s.fp WHEN NOT MATCHED THEN INSERT (sid, fp) VALUES (s.sid, s.fp)"
        ]
    if can.deletes:
        return [
            literal_sql(delete(copy).where(copy.c.sid.in_(select(staging.c.sid))), dialect),
            literal_sql(insert(copy).from_select(["sid", "fp"], select(staging.c.sid, staging.c.fp)), dialect),
        ]
    c, s = copy.alias("c"), staging.alias("s")
    kept = select(c.c.sid, c.c.fp).select_from(c.outerjoin(s, s.c.sid == c.c.sid)).where(s.c.sid.is_(None))
    return rewrite(copy, union_all(kept, select(staging.c.sid, staging.c.fp)), dialect)


def rewrite(target: Table, rows: Any, dialect: Any) -> list[str]:
    """``target`` replaced by a new table of ``rows``: created beside it, then swapped in. Between the drop
    and the rename a reader finds no table; the copy's facts then do not match and the next run rebuilds it."""
    name = dialect.identifier_preparer.format_table
    following = Table(f"{target.name}_next", MetaData(schema=target.schema))
    return [
        f"DROP TABLE IF EXISTS {name(following)}",
        f"CREATE TABLE {name(following)} AS {literal_sql(rows, dialect)}",
        f"DROP TABLE {name(target)}",
        f"ALTER TABLE {name(following)} RENAME TO {name(target)}",
    ]


def literal_sql(statement: Any, dialect: Any) -> str:
    """``statement`` compiled by ``dialect`` with its values written in."""
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def forget(copies: Table, job: str, dialect: Any) -> list[str]:
    """The statements that remove the job's row from the copies table."""
    if abilities(dialect.name).deletes:
        return [literal_sql(delete(copies).where(copies.c.job == job), dialect)]
    return rewrite(copies, select(copies).where(copies.c.job != job), dialect)


def _facts(connection: Connection, copy: Table) -> tuple[int, int]:
    count, total = connection.execute(checked(copy)).one()
    return int(count), int(total)


def _load(connection: Connection, names: Names, pieces: Iterator[pa.Table], patch: bool) -> None:
    """Rows of the state store into the copy: all of them (a rebuild) or, ``patch``, replacing the copy's
    rows of the same subjects."""
    copy, staging = names.table("acked"), names.table("new")
    target = copy
    if patch:
        if exists(connection, staging):
            staging.drop(connection)
        staging.create(connection)
        target = staging
    for piece in pieces:
        ids = piece.column("user_id")
        fps = pc.if_else(piece.column("known"), piece.column("fp"), pa.nulls(piece.num_rows, pa.int64()))
        _bulk(connection, target, pa.table({"sid": ids, "fp": fps}))
    if patch:
        for statement in patches(copy, staging, connection.dialect):
            connection.exec_driver_sql(statement)
        staging.drop(connection)


def _bulk(connection: Connection, target: Table, rows: pa.Table) -> None:
    """``rows`` (sid, fp) into ``target``: PostgreSQL's COPY, DuckDB's Arrow scan, multi-row INSERTs of
    literal values, else batched INSERTs (``sync.snapshot.abilities``)."""
    driver: Any = connection.connection.driver_connection
    name = connection.dialect.identifier_preparer.format_table(target)
    bulk = abilities(connection.dialect.name).bulk
    if bulk == "values":
        values = rows.to_pylist()
        for start in range(0, len(values), _VALUES_CHUNK):
            statement = insert(target).values(values[start : start + _VALUES_CHUNK])
            connection.exec_driver_sql(literal_sql(statement, connection.dialect))
        return
    if bulk == "copy" and connection.dialect.driver == "psycopg":
        with driver.cursor().copy(f"COPY {name} (sid, fp) FROM STDIN") as copying:
            for sid, fp in zip(rows.column("sid").to_pylist(), rows.column("fp").to_pylist(), strict=True):
                copying.write_row((sid, fp))
        return
    if bulk == "arrow":
        driver.register("audience_sync_rows", rows)
        try:
            driver.execute(f"INSERT INTO {name} (sid, fp) SELECT sid, fp FROM audience_sync_rows")
        finally:
            driver.unregister("audience_sync_rows")
        return
    values = rows.to_pylist()
    for start in range(0, len(values), _CHUNK):
        connection.execute(insert(target), values[start : start + _CHUNK])
