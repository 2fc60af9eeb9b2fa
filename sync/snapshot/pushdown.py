"""The statements of the warehouse engine (``sync.snapshot.warehouse``), built once with SQLAlchemy Core and
compiled by the warehouse's own SQLAlchemy dialect.

Why SQLAlchemy Core: the source is already a SQLAlchemy URL, so the dialect that connects is the one that
quotes names, spells types and writes ``FULL OUTER JOIN``, ``CREATE TABLE … AS`` and ``MOD`` for that warehouse;
what differs beyond that is one expression, the hash, written here per dialect (``@compiles``). A
transpiler (sqlglot) would add a dependency to translate statements the dialect already compiles, and would
still need the hash written per warehouse.

**The fingerprint scheme** (``SCHEME``): a value's hash is the first 13 hex digits (52 bits) of the MD5 of
``key:value`` — the key, a colon and the value as the warehouse writes it as text; an audience membership
hashes ``key:`` alone (one constant per audience, so members cost no hashing). A subject's fingerprint is
the sum of its rows' hashes modulo 2^52: the order of rows does not matter, and the sum of up to 2,048 rows
stays within a 64-bit integer on every warehouse. MD5 gives the same digits everywhere, so the scheme is one
for every dialect; each dialect only turns hex into an integer in its own documented way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    TableClause,
    and_,
    case,
    cast,
    column,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

# A SELECT of any columns.
Rows: TypeAlias = "Select[*tuple[Any, ...]]"

# Where the scheme changes, the fingerprints of every copy and state store are treated as unknown.
SCHEME = "md5-52-sum:1"
HEX_DIGITS = 13
MODULUS = 2**52

# The meta table: one row per job, naming the copy of its acknowledged fingerprints and what it holds.
COPIES = "audience_sync_copies"


class hash52(FunctionElement[int]):
    """The first 52 bits of MD5(text) as a non-negative integer."""

    type = BigInteger()
    inherit_cache = True
    name = "hash52"


def _digits(compiler: SQLCompiler, element: FunctionElement[Any], **kw: Any) -> str:
    return str(compiler.process(list(element.clauses)[0], **kw))


def constant(text_: str) -> int:
    """``hash52`` computed here, for the hashes that do not depend on a row (an audience's membership)."""
    return int(hashlib.md5(text_.encode()).hexdigest()[:HEX_DIGITS], 16)


class as_text(FunctionElement[str]):
    """A value as text, whole: TEXT on PostgreSQL, STRING on BigQuery, VARCHAR(65535) (its longest) on Redshift,
    where a bare VARCHAR is 256 characters and would cut values short."""

    type = String()
    inherit_cache = True
    name = "as_text"


_DIGITS = f"1, {HEX_DIGITS}"
# Per dialect: the MD5 of {0}, its first 13 hex digits read as an integer the way that warehouse documents.
_HASH52 = {
    # Hex text with an x prefix is a bit string, and a bit string casts to bigint (PostgreSQL: Bit String Types).
    "postgresql": f"CAST(CAST('x' || substr(md5({{0}}), {_DIGITS}) AS BIT(52)) AS BIGINT)",
    "redshift": f"STRTOL(SUBSTRING(MD5({{0}}), {_DIGITS}), 16)",
    # DuckDB casts text with a 0x prefix as a hexadecimal integer.
    "duckdb": f"CAST('0x' || substr(md5({{0}}), {_DIGITS}) AS BIGINT)",
    "snowflake": f"TO_NUMBER(SUBSTR(MD5({{0}}), {_DIGITS}), '{'X' * HEX_DIGITS}')",
    "bigquery": f"CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({{0}})), {_DIGITS})) AS INT64)",
    "trino": f"from_base(substr(to_hex(md5(to_utf8({{0}}))), {_DIGITS}), 16)",
    # Spark SQL (a Spark cluster's Thrift server, hive://; Databricks): conv turns hex text into decimal text.
    "hive": f"CAST(conv(substr(md5({{0}}), {_DIGITS}), 16, 10) AS BIGINT)",
    "databricks": f"CAST(conv(substr(md5({{0}}), {_DIGITS}), 16, 10) AS BIGINT)",
}
_TEXT = {
    "": "CAST({0} AS VARCHAR)",
    "postgresql": "CAST({0} AS TEXT)",
    "bigquery": "CAST({0} AS STRING)",
    "redshift": "CAST({0} AS VARCHAR(65535))",
    "hive": "CAST({0} AS STRING)",
    "databricks": "CAST({0} AS STRING)",
}


def _register(element: type[FunctionElement[Any]], templates: dict[str, str]) -> None:
    """``element`` compiled per dialect from ``templates`` (``""``: any other dialect)."""
    for dialect, template in templates.items():

        def render(element: FunctionElement[Any], compiler: SQLCompiler, _template: str = template, **kw: Any) -> str:
            return _template.format(_digits(compiler, element, **kw))

        compiles(element, *([dialect] if dialect else []))(render)


class keyed(FunctionElement[str]):
    """``key:`` and a value as text, joined: what a value's hash is taken of."""

    type = String()
    inherit_cache = True
    name = "keyed"

    def __init__(self, key: str, value: ColumnElement[Any]) -> None:
        super().__init__(literal(key + ":", String()), as_text(value))


@compiles(keyed)
def _keyed(element: keyed, compiler: SQLCompiler, **kw: Any) -> str:
    # Written out rather than as ``+`` on strings: PyHive's compiler of that operator drops the literal
    # values a statement is compiled with.
    prefix, value = list(element.clauses)
    return f"{compiler.process(prefix, **kw)} || {compiler.process(value, **kw)}"


_register(hash52, _HASH52)
_register(as_text, _TEXT)


@compiles(hash52)
def _other(element: hash52, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(f"the warehouse engine does not run on {compiler.dialect.name}")


@dataclass(frozen=True)
class Item:
    """What one row of a query adds to its subject's fingerprint: a membership of ``key`` (``value`` None) or
    the value of column ``value`` under ``key``. ``forced``: every subject with it is looked at (a newly
    tracked key, every key of a full run)."""

    key: str
    value: str | None
    forced: bool = False


@dataclass(frozen=True)
class Query:
    """One query of a job: its SQL, the column naming its subject, and what each row hashes (nothing for a
    profiles query whose fields are not diffed: its subjects are counted, with nothing to send)."""

    sql: str
    id_column: str
    items: tuple[Item, ...]


def _result(query: Query, position: int) -> Any:
    names = [query.id_column, *(i.value for i in query.items if i.value is not None)]
    return text(query.sql).columns(*(column(n) for n in dict.fromkeys(names))).subquery(f"q{position}")


def _sid(result: Any, query: Query) -> ColumnElement[str]:
    return as_text(result.c[query.id_column])


def _usable(result: Any, query: Query) -> ColumnElement[bool]:
    return and_(result.c[query.id_column].is_not(None), func.trim(_sid(result, query)) != "")


def _zero() -> ColumnElement[int]:
    return literal(0, BigInteger())


def _row_hash(result: Any, query: Query) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """A row's hash (the sum of its items' hashes, modulo 2^52) and whether it is forced (1 or 0)."""
    hashes: list[ColumnElement[Any]] = []
    forced: list[ColumnElement[bool]] = []  # a forced value present; a forced membership forces every row
    always = False
    for item in query.items:
        if item.value is None:
            hashes.append(literal(constant(f"{item.key}:"), BigInteger()))
            always = always or item.forced
            continue
        value = result.c[item.value]
        hashes.append(case((value.is_(None), _zero()), else_=hash52(keyed(item.key, value))))
        if item.forced:
            forced.append(value.is_not(None))
    h = sum(hashes[1:], hashes[0]) if hashes else _zero()
    if len(hashes) > 1:
        h = func.mod(h, literal(MODULUS, BigInteger()))
    if always or not forced:
        return h, literal(1 if always else 0, Integer())
    return h, case((or_(*forced), literal(1, Integer())), else_=literal(0, Integer()))


def row_hashes(queries: Sequence[Query]) -> Rows:
    """Every usable row of every query as (sid, h, f): its subject, its hash and whether it is forced (a job
    has at least one query)."""
    selects = []
    for position, query in enumerate(queries):
        result = _result(query, position)
        h, forced = _row_hash(result, query)
        selects.append(
            select(_sid(result, query).label("sid"), h.label("h"), forced.label("f")).where(_usable(result, query))
        )
    return union_all(*selects).subquery("hashed").select() if len(selects) > 1 else selects[0]


def fingerprints(queries: Sequence[Query]) -> Rows:
    """One row per subject of the snapshot: its fingerprint and whether it is forced."""
    rows = row_hashes(queries).subquery("r")
    total = func.mod(func.sum(rows.c.h), literal(MODULUS, BigInteger()))
    return select(rows.c.sid, cast(total, BigInteger()).label("fp"), func.max(rows.c.f).label("forced")).group_by(
        rows.c.sid
    )


def changed(current: TableClause, acked: TableClause) -> Rows:
    """Subjects worth a close look: new with something to send, a fingerprint that differs from the
    acknowledged one (or none is known), forced, or gone with an acknowledged state that was not empty."""
    c, a = current.alias("c"), acked.alias("a")
    present = and_(
        c.c.sid.is_not(None),
        or_(
            and_(a.c.sid.is_(None), c.c.fp != 0),
            and_(a.c.sid.is_not(None), or_(a.c.fp.is_(None), a.c.fp != c.c.fp)),
            c.c.forced == 1,
        ),
    )
    gone = and_(c.c.sid.is_(None), or_(a.c.fp.is_(None), a.c.fp != 0))
    return (
        select(
            func.coalesce(c.c.sid, a.c.sid).label("sid"),
            case((c.c.sid.is_(None), literal(1, Integer())), else_=literal(0, Integer())).label("gone"),
        )
        .select_from(c.join(a, a.c.sid == c.c.sid, full=True))
        .where(or_(present, gone))
    )


def read_out(query: Query, position: int, chosen: TableClause) -> Rows:
    """The rows of ``query`` for the chosen subjects, with each row's subject as text (``sid__``) and its
    hash (``h__``); the query's own columns come first, as the query names them."""
    result = _result(query, position)
    sid = _sid(result, query)
    h, _ = _row_hash(result, query)
    return (
        select(literal_column(f"q{position}.*"), sid.label("sid__"), h.label("h__"))
        .select_from(result.join(chosen, chosen.c.sid == sid))
        .where(chosen.c.gone == 0)
    )


def member_counts(queries: Sequence[Query]) -> Rows:
    """Distinct members of each audience query, one row each: (position, members)."""
    selects = []
    for position, query in enumerate(queries):
        result = _result(query, position)
        selects.append(
            select(
                literal(position, Integer()).label("k"), func.count(func.distinct(_sid(result, query))).label("n")
            ).where(_usable(result, query))
        )
    return union_all(*selects).subquery("m").select() if len(selects) > 1 else selects[0]


def probe(query: Query) -> Rows:
    """No rows, but the query's columns and their types."""
    return select(literal_column("q.*")).select_from(text(query.sql).columns().subquery("q")).where(literal(1) == 0)


def copy_table(schema: str | None, name: str) -> Table:
    """The copy of a job's acknowledged fingerprints: subject id and fingerprint (NULL: not known)."""
    return Table(
        name,
        MetaData(schema=schema),
        Column("sid", String(65535), nullable=False),  # the longest VARCHAR of Redshift
        Column("fp", BigInteger(), nullable=True),
    )


def copies_table(schema: str | None, primary_key: bool = True) -> Table:
    """Which copy each job has, written with it: the installation and hash scheme it belongs to, the last
    run of the state store it holds, and its size and checksum as the state store had them. ``primary_key``:
    the job is its primary key (Spark's tables take none)."""
    return Table(
        COPIES,
        MetaData(schema=schema),
        Column("job", String(200), primary_key=primary_key, nullable=False),
        Column("copy_table", String(200), nullable=False),
        Column("installation", String(64), nullable=False),
        Column("scheme", String(100), nullable=False),
        Column("as_of_run", BigInteger(), nullable=False),
        Column("row_count", BigInteger(), nullable=False),
        Column("checksum", BigInteger(), nullable=False),
        Column("shapes", String(4000), nullable=False),
        Column("written_at", DateTime(), nullable=False),
    )


def checksum(fp: ColumnElement[Any]) -> ColumnElement[Any]:
    """A cheap checksum of a column of fingerprints, the same in the state store and the warehouse."""
    return func.coalesce(func.sum(func.mod(fp, literal(1_048_576, BigInteger()))), 0)


def named(schema: str | None, name: str) -> TableClause:
    """A table of the engine's as a FROM clause: sid with fp and forced (current fingerprints and the copy)
    or gone (the changed set)."""
    return table(name, column("sid"), column("fp"), column("forced"), column("gone"), schema=schema)
