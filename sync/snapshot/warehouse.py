"""The warehouse engine (``source.engine: warehouse``): the diff runs inside the warehouse, and only the
subjects that changed leave it.

A run, in the warehouse, in the job's schema (``source.schema``):

1. brings the **copy** of the acknowledged fingerprints up to date from the state store, which stays the
   truth: the copy names the installation, the hash scheme and the last run it holds, and its row count and
   checksum must match the state store's; a copy that is missing, foreign, of another scheme or that does
   not match is rebuilt from the state store, and one that lags (a run acknowledged updates and stopped
   before writing the copy) takes the rows written since;
2. computes every subject's fingerprint over the job's own queries (``_cur``) and the subjects worth a close
   look against the copy (``_chg``): new, changed, forced or gone;
3. reads out, through the driver's cursor, the rows of every query for those subjects alone, each with its
   hash, and folds them here with the local engine. The fingerprint recorded for a subject is the sum of
   the hashes of the rows read out, so what is recorded always describes what was sent, even when the
   warehouse changed between the statements.

After a run the copy is written again from what was acknowledged (``settle``). Statements:
``sync.snapshot.pushdown``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Table, func, select
from sqlalchemy.exc import SQLAlchemyError

from sync.config import JobConfig
from sync.errors import SourceError
from sync.model import PROFILE_KIND, SUBJECTS, Computation, profile_key
from sync.snapshot import copy, pushdown
from sync.snapshot.abilities import abilities
from sync.snapshot.columns import Raw, RowIssue
from sync.snapshot.copy import Fingerprints, Names
from sync.snapshot.engine import Selection, Snapshot
from sync.snapshot.normalise import normalise
from sync.sources import driver_reason, label, profile_fields, profile_results, query_columns, warehouse_engine

log = logging.getLogger(__name__)

MASK = pushdown.MODULUS - 1


def names_of(job: JobConfig) -> Names:
    """The job's tables: in its schema, named after the job (lower-cased, cut short) and a hash of its name."""
    slug = re.sub(r"[^a-z0-9]+", "_", job.name.lower()).strip("_")[:30] or "job"
    digest = hashlib.sha1(job.name.encode()).hexdigest()[:8]
    return Names(job.source.schema_, f"as_{slug}_{digest}")


def queries(job: JobConfig, force: Set[str], columns: Sequence[str] = ()) -> list[pushdown.Query]:
    """The job's queries as the engine reads them: audiences, traits, then the profiles query (its fields
    hashed as traits with ``send_profile_changes``; ``columns`` are the ones it returns)."""
    id_column = SUBJECTS[job.subject].id_column
    found = [
        pushdown.Query(a.query or "", id_column, (pushdown.Item(a.resolved_key, None, a.resolved_key in force),))
        for a in job.audiences
    ]
    found += [
        pushdown.Query(t.query or "", id_column, (pushdown.Item(t.resolved_key, "value", t.resolved_key in force),))
        for t in job.traits
    ]
    if job.source.profiles:
        items: tuple[pushdown.Item, ...] = ()
        if job.send_profile_changes:
            items = tuple(
                pushdown.Item(profile_key(f), f, profile_key(f) in force) for f in profile_fields(job) if f in columns
            )
        found.append(pushdown.Query(job.source.profiles, id_column, items))
    return found


class WarehouseSnapshot:
    """What a run asks of a snapshot the warehouse diffed: its computations, the rows it skipped, how many
    subjects it has and, asked only when the mass-change guard needs them, the members of each audience."""

    def __init__(
        self, job: JobConfig, computations: tuple[Computation, ...], issues: tuple[RowIssue, ...], users: int
    ) -> None:
        self.computations, self.issues, self.users = computations, issues, users
        self._job = job

    def member_counts(self, keys: Set[str] | None = None) -> dict[str, int]:
        """Members per audience (of ``keys`` only, when given): a scan of each audience query it counts."""
        audiences = [
            q
            for q in queries(self._job, set())
            if q.items and q.items[0].value is None and (keys is None or q.items[0].key in keys)
        ]
        if not audiences:
            return {}
        with _connected(self._job) as connection:
            rows = _run(connection, self._job, "counting audience members", pushdown.member_counts(audiences))
        return {audiences[int(k)].items[0].key: int(n) for k, n in rows}


def examine(
    job: JobConfig, computations: tuple[Computation, ...], store: Fingerprints, force: Set[str]
) -> tuple[WarehouseSnapshot, Selection]:
    """Diff the job's snapshot against its acknowledged fingerprints inside the warehouse; the subjects worth
    a close look, read out with their rows and folded here."""
    names = names_of(job)
    started = time.monotonic()
    with _connected(job) as connection:
        shapes, profile_columns = _shapes(connection, job)
        recorded = copy.refresh(connection, job.name, names, store, shapes=None)
        # A result whose columns changed type may carry equal text for a different value: look at it all.
        force = set(force) | {key for key, shape in shapes.items() if recorded.get(key, shape) != shape}
        found = queries(job, force, profile_columns)
        current, chosen = names.table("cur"), names.table("chg")
        for stale in (current, chosen):
            if copy.exists(connection, stale):
                stale.drop(connection)
        _create_as(connection, job, current, pushdown.fingerprints(found), "fingerprinting the snapshot")
        acked = pushdown.named(names.schema, f"{names.prefix}_acked")
        _create_as(
            connection,
            job,
            chosen,
            pushdown.changed(pushdown.named(names.schema, current.name), acked),
            "comparing with the acknowledged fingerprints",
        )
        users = int(_run(connection, job, "counting subjects", select(func.count()).select_from(current))[0][0])
        gone = [str(r[0]) for r in _run(connection, job, "reading gone subjects", _gone(names))]
        read = [_read_out(connection, job, q, i, names, computations) for i, q in enumerate(found)]
        for table in (current, chosen):
            table.drop(connection)
        connection.commit()
    log.debug(
        "warehouse diff",
        extra={
            "job": job.name,
            "users": users,
            "rows_read": sum(len(r.sids) for r in read),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return _folded(job, computations, found, read, gone, users)


def settle(job: JobConfig, store: Fingerprints, complete: bool) -> None:
    """After a run: the copy takes what was acknowledged, and (``complete``: nothing failed) the column
    types of the results, so that a later change of type is looked at."""
    names = names_of(job)
    with _connected(job) as connection:
        copy.refresh(connection, job.name, names, store, shapes=_shapes(connection, job)[0] if complete else None)


def drop(job: JobConfig) -> list[str]:
    """Drop the job's tables and its row in the copies table; the names dropped."""
    names = names_of(job)
    dropped = []
    with _connected(job) as connection:
        for suffix in ("acked", "cur", "chg", "new"):
            table = names.table(suffix)
            if copy.exists(connection, table):
                table.drop(connection)
                dropped.append(f"{names.schema}.{table.name}")
        copies = pushdown.copies_table(names.schema, abilities(connection.dialect.name).constraints)
        if copy.exists(connection, copies):
            for statement in copy.forget(copies, job.name, connection.dialect):
                connection.exec_driver_sql(statement)
        connection.commit()
    return dropped


# The snapshot --------------------------------------------------------------------------------------------


def _shapes(connection: Connection, job: JobConfig) -> tuple[dict[str, str], list[str]]:
    """Each trait's (and each diffed profile field's) value column as the driver describes its type, and the
    columns of the profiles query when its fields are diffed."""
    shapes: dict[str, str] = {}
    for trait in job.traits:
        described = _describe(connection, job, trait.query or "", f"trait {trait.resolved_key!r}")
        shapes[trait.resolved_key] = described.get("value", "")
    if not (job.send_profile_changes and job.source.profiles):
        return shapes, []
    described = _describe(connection, job, job.source.profiles, "profiles")
    return shapes | {profile_key(name): kind for name, kind in described.items()}, list(described)


def _describe(connection: Connection, job: JobConfig, sql: str, label: str) -> dict[str, str]:
    query = pushdown.Query(sql, SUBJECTS[job.subject].id_column, ())
    try:
        result = connection.execute(pushdown.probe(query))
        described = {str(d[0]): str(d[1]) for d in result.cursor.description or ()}
        result.close()
    except SQLAlchemyError as exc:
        connection.rollback()
        raise SourceError(f"job {job.name!r}: the {label} query failed: {driver_reason(exc)}") from None
    return described


def _gone(names: Names) -> pushdown.Rows:
    chosen = pushdown.named(names.schema, f"{names.prefix}_chg")
    return select(chosen.c.sid).where(chosen.c.gone == 1).order_by(chosen.c.sid)


@dataclass
class _ReadOut:
    columns: dict[str, Any]
    sids: pa.Array
    hashes: pa.Array


def _read_out(
    connection: Connection,
    job: JobConfig,
    query: pushdown.Query,
    position: int,
    names: Names,
    computations: tuple[Computation, ...],
) -> _ReadOut:
    chosen = pushdown.named(names.schema, f"{names.prefix}_chg")
    statement = pushdown.read_out(query, position, chosen)
    sql = str(statement.compile(connection, compile_kwargs={"literal_binds": True}))
    configured = [c for c in computations if c.kind != PROFILE_KIND]
    what = label(configured[position]) if position < len(configured) else "profiles"
    columns = query_columns(connection, sql, job.name, what)
    sids = _array(columns.pop("sid__"), pa.string())
    hashes = _array(columns.pop("h__"), pa.int64())
    return _ReadOut(columns, sids, hashes)


def _array(values: Any, kind: pa.DataType) -> pa.Array:
    if isinstance(values, list):
        return pa.array(values, kind)
    combined = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return combined.cast(kind)


def _folded(
    job: JobConfig,
    computations: tuple[Computation, ...],
    found: list[pushdown.Query],
    read: list[_ReadOut],
    gone: list[str],
    users: int,
) -> tuple[WarehouseSnapshot, Selection]:
    """The rows read out folded by the local engine; each subject's fingerprint is the sum of its rows'
    hashes, and a subject the warehouse chose but whose rows are gone by now is gone."""
    configured = [c for c in computations if c.kind != PROFILE_KIND]
    raw: dict[str, Raw] = {c.key: r.columns for c, r in zip(configured, read, strict=False)}
    profiles = read[len(configured)].columns if job.source.profiles else None
    if job.send_profile_changes and profiles is not None:
        raw.update(profile_results(job, profiles))
    sids = pa.chunked_array([r.sids for r in read], pa.string())
    hashes = pa.chunked_array([r.hashes for r in read], pa.int64())
    read.clear()  # the rows as read go once normalised, before the engine starts (as sources.read_snapshot)
    fingerprints = _summed(sids, hashes)
    del sids, hashes
    try:
        parts = normalise(computations, profiles, raw, job.enrich, SUBJECTS[job.subject])
        del raw, profiles
        local = Snapshot(parts)
    except SourceError as exc:
        raise SourceError(f"job {job.name!r}: {exc}") from None
    selection = local.everyone()
    present = selection.table.column("user_id")
    # Each subject's own sum, looked up by position: the selection keeps its order of first appearance.
    summed = fingerprints.column("fp").take(pc.index_in(present, value_set=fingerprints.column("user_id")))
    table = selection.table.set_column(selection.table.column_names.index("fp"), "fp", pc.fill_null(summed, 0))
    # Chosen, but every row skipped, or none any more: gone.
    vanished = fingerprints.column("user_id").filter(pc.invert(pc.is_in(fingerprints.column("user_id"), present)))
    snapshot = WarehouseSnapshot(job, computations, local.issues, users)
    return snapshot, Selection(local, table, sorted(set(gone) | set(vanished.to_pylist())))


def _summed(sids: pa.ChunkedArray, hashes: pa.ChunkedArray) -> pa.Table:
    """Each subject's fingerprint: the sum of its rows' hashes modulo 2^52. Hashes are below 2^52 and a
    subject has at most 2,048 rows, so the sum fits 63 bits. (Summed over the positions of a dictionary of the
    ids: Arrow's grouping kept about 100 bytes a row of the process's memory after it was done.)"""
    encoded = pc.dictionary_encode(sids).combine_chunks()
    sums = np.zeros(len(encoded.dictionary), dtype=np.int64)
    np.add.at(sums, encoded.indices.to_numpy(), hashes.to_numpy())
    return pa.table({"user_id": encoded.dictionary, "fp": pa.array(sums & MASK, pa.int64())})


# Connections ---------------------------------------------------------------------------------------------


@contextmanager
def _connected(job: JobConfig) -> Iterator[Connection]:
    engine = warehouse_engine(job)
    try:
        with engine.connect() as connection:
            yield connection
    except SQLAlchemyError as exc:
        raise SourceError(
            f"job {job.name!r}: cannot use the warehouse {job.source.redacted_url()}: {driver_reason(exc)}"
        ) from None
    finally:
        engine.dispose()


def _create_as_sql(dialect: Any, target: Table, query: pushdown.Rows) -> str:
    sql = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return f"CREATE TABLE {dialect.identifier_preparer.format_table(target)} AS {sql}"


def _create_as(connection: Connection, job: JobConfig, target: Table, query: pushdown.Rows, what: str) -> None:
    try:
        connection.exec_driver_sql(_create_as_sql(connection.dialect, target, query))
    except SQLAlchemyError as exc:
        connection.rollback()
        raise SourceError(f"job {job.name!r}: the warehouse failed {what}: {driver_reason(exc)}") from None


def _run(connection: Connection, job: JobConfig, what: str, query: pushdown.Rows) -> list[Any]:
    try:
        return list(connection.execute(query).all())
    except SQLAlchemyError as exc:
        connection.rollback()
        raise SourceError(f"job {job.name!r}: the warehouse failed {what}: {driver_reason(exc)}") from None


def compiled(job: JobConfig, dialect: Any) -> dict[str, str]:
    """Every statement a run of ``job`` sends to its warehouse, compiled by ``dialect`` (a SQLAlchemy dialect
    instance), by what it does: for reading them before granting rights, and for the tests of dialects
    this machine has no server of."""
    from sqlalchemy.schema import CreateSchema, CreateTable, DropTable

    names = names_of(job)
    found = queries(job, set(), profile_fields(job))  # as if the profiles query returned every field

    def sql(statement: Any) -> str:
        return copy.literal_sql(statement, dialect)

    copies = pushdown.copies_table(names.schema, abilities(dialect.name).constraints)
    copied, staging = names.table("acked"), names.table("new")
    current, chosen = names.table("cur"), names.table("chg")
    acked = pushdown.named(names.schema, copied.name)
    statements = {f"session {position}": statement for position, statement in enumerate(job.source.session)}
    statements |= {
        "create schema": sql(CreateSchema(names.schema, if_not_exists=True)),
        "create copies table": sql(CreateTable(copies)),
        "create copy": sql(CreateTable(copied)),
        "check copy": sql(copy.checked(copied)),
        **{f"patch copy {n}": statement for n, statement in enumerate(copy.patches(copied, staging, dialect))},
        "fingerprint": _create_as_sql(dialect, current, pushdown.fingerprints(found)),
        "compare": _create_as_sql(dialect, chosen, pushdown.changed(pushdown.named(names.schema, current.name), acked)),
        "gone": sql(_gone(names)),
        "drop": sql(DropTable(chosen)),
    }
    chosen_clause = pushdown.named(names.schema, chosen.name)
    for position, query in enumerate(found):
        statements[f"read out {position}"] = sql(pushdown.read_out(query, position, chosen_clause))
        statements[f"describe {position}"] = sql(pushdown.probe(query))
    audiences = [q for q in found if q.items and q.items[0].value is None]
    if audiences:
        statements["count members"] = sql(pushdown.member_counts(audiences))
    return statements
