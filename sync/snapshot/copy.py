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
from sqlalchemy import Connection, Delete, Insert, Table, delete, func, insert, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from sync.errors import SourceError
from sync.snapshot import pushdown
from sync.sources import driver_reason

log = logging.getLogger(__name__)

# Rows sent to the warehouse per statement when the copy is written without a bulk path.
_CHUNK = 10_000


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
    copies, copy = pushdown.copies_table(names.schema), names.table("acked")
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
            and inspect(connection).has_table(copy.name, schema=names.schema)
        )
        if usable and meta is not None and int(meta["as_of_run"]) < last:
            _load(connection, names, store.fingerprint_pieces(job, after_run=int(meta["as_of_run"])), patch=True)
        if not usable or _facts(connection, copy) != (count, total):
            if usable:
                log.warning(
                    "the warehouse copy of the acknowledged fingerprints does not match the state store; rebuilding it",
                    extra={"job": job},
                )
            copy.drop(connection, checkfirst=True)
            copy.create(connection)
            _load(connection, names, store.fingerprint_pieces(job), patch=False)
            if _facts(connection, copy) != (count, total):
                raise SourceError(
                    f"job {job!r}: the copy of the acknowledged fingerprints in {names.schema}.{copy.name} "
                    "does not match the state store after it was rebuilt; is another installation writing it?"
                )
        recorded: dict[str, str] = json.loads(meta["shapes"]) if usable and meta is not None else {}
        connection.execute(delete(copies).where(copies.c.job == job))
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
                written_at=datetime.now(UTC).replace(tzinfo=None),
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


def _ensure(connection: Connection, schema: str, copies: Table) -> None:
    """The schema and the copies table; tried twice, for two jobs' first runs creating them at once."""
    for attempt in (1, 2):
        try:
            connection.execute(CreateSchema(schema, if_not_exists=True))
            copies.create(connection, checkfirst=True)
            connection.commit()
            return
        except SQLAlchemyError:
            connection.rollback()
            if attempt == 2:
                raise


def checked(copy: Table) -> pushdown.Rows:
    """The copy's row count and checksum, to match the state store's."""
    return select(func.count(), pushdown.checksum(copy.c.fp))


def patches(copy: Table, staging: Table) -> tuple[Delete, Insert]:
    """The copy's rows of the subjects in ``staging`` replaced by the staged ones."""
    return (
        delete(copy).where(copy.c.sid.in_(select(staging.c.sid))),
        insert(copy).from_select(["sid", "fp"], select(staging.c.sid, staging.c.fp)),
    )


def _facts(connection: Connection, copy: Table) -> tuple[int, int]:
    count, total = connection.execute(checked(copy)).one()
    return int(count), int(total)


def _load(connection: Connection, names: Names, pieces: Iterator[pa.Table], patch: bool) -> None:
    """Rows of the state store into the copy: all of them (a rebuild) or, ``patch``, replacing the copy's
    rows of the same subjects."""
    copy, staging = names.table("acked"), names.table("new")
    target = copy
    if patch:
        staging.drop(connection, checkfirst=True)
        staging.create(connection)
        target = staging
    for piece in pieces:
        ids = piece.column("user_id")
        fps = pc.if_else(piece.column("known"), piece.column("fp"), pa.nulls(piece.num_rows, pa.int64()))
        _bulk(connection, target, pa.table({"sid": ids, "fp": fps}))
    if patch:
        for statement in patches(copy, staging):
            connection.execute(statement)
        staging.drop(connection)


def _bulk(connection: Connection, target: Table, rows: pa.Table) -> None:
    """``rows`` (sid, fp) into ``target``: PostgreSQL's COPY, DuckDB's Arrow scan, else INSERTs."""
    driver: Any = connection.connection.driver_connection
    name = connection.dialect.identifier_preparer.format_table(target)
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        with driver.cursor().copy(f"COPY {name} (sid, fp) FROM STDIN") as copying:
            for sid, fp in zip(rows.column("sid").to_pylist(), rows.column("fp").to_pylist(), strict=True):
                copying.write_row((sid, fp))
        return
    if connection.dialect.name == "duckdb":
        driver.register("audience_sync_rows", rows)
        try:
            driver.execute(f"INSERT INTO {name} (sid, fp) SELECT sid, fp FROM audience_sync_rows")
        finally:
            driver.unregister("audience_sync_rows")
        return
    values = rows.to_pylist()
    for start in range(0, len(values), _CHUNK):
        connection.execute(insert(target), values[start : start + _CHUNK])
