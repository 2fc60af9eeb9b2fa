"""What a job reads: the warehouse tables each of its queries names, parsed in the warehouse's dialect (with
sqlglot), and where each audience's or trait's values come from. Lineage, the Dagster assets' upstream and dbt
exposures are built from this; nothing here runs a query."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import lineage

from sync.config import JobConfig
from sync.sources import configured

log = logging.getLogger(__name__)

# SQLAlchemy's backend names, as sqlglot calls their dialects.
_DIALECTS = {
    "postgresql": "postgres", "duckdb": "duckdb", "snowflake": "snowflake", "bigquery": "bigquery",
    "redshift": "redshift", "trino": "trino", "sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql",
    "hive": "spark", "databricks": "databricks", "mssql": "tsql", "oracle": "oracle",
}  # fmt: skip


@dataclass(frozen=True, order=True)
class TableName:
    """A table as a query names it: ``catalog`` (database) and ``schema`` are empty where it does not say."""

    catalog: str
    schema: str
    name: str

    def qualified(self) -> str:
        return ".".join(part for part in (self.catalog, self.schema, self.name) if part)


def dialect_of(backend: str) -> str | None:
    return _DIALECTS.get(backend)


def tables_read(sql: str, dialect: str | None) -> list[TableName]:
    """The tables ``sql`` reads (common table expressions left out), sorted; none when it does not parse."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except SqlglotError:
        return []
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    found = {
        TableName(table.catalog, table.db, table.name)
        for table in tree.find_all(exp.Table)
        if table.name and not (not table.db and table.name.lower() in ctes)
    }
    return sorted(found)


@dataclass(frozen=True)
class ColumnSource:
    """A column of a table that an output field (an audience or trait key) is computed from."""

    table: TableName
    column: str


@dataclass(frozen=True)
class Reads:
    """What one job reads: its tables, its files, and each key's source columns."""

    tables: tuple[TableName, ...]
    files: tuple[str, ...]
    columns: dict[str, tuple[ColumnSource, ...]]


def job_reads(job: JobConfig) -> Reads:
    """The tables and files ``job`` reads and where each of its keys comes from."""
    backend = job.source.url.split(":", 1)[0].split("+", 1)[0] if job.source.url else ""
    dialect = dialect_of("postgresql" if backend in ("postgres", "postgresql") else backend)
    tables: set[TableName] = set()
    files: list[str] = []
    columns: dict[str, tuple[ColumnSource, ...]] = {}
    items = [*job.audiences, *job.traits]
    for computation, item in zip(configured(job), items, strict=True):
        if item.file is not None:
            files.append(item.file)
            continue
        sql = item.query or ""
        tables.update(tables_read(sql, dialect))
        output = "value" if computation.kind == "trait" else "user_id"
        columns[computation.key] = _sources(output, sql, dialect)
    if job.source.profiles:
        tables.update(tables_read(job.source.profiles, dialect))
    if job.source.profiles_file:
        files.append(job.source.profiles_file)
    return Reads(tuple(sorted(tables)), tuple(files), columns)


def _star_of(sql: str, dialect: str | None) -> TableName | None:
    """The table of a ``SELECT * FROM table``; None for any other query."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except SqlglotError:
        return None
    tables = tables_read(sql, dialect)
    if isinstance(tree, exp.Select) and tree.is_star and len(tables) == 1 and not tree.args.get("where"):
        return tables[0]
    return None


def _sources(column: str, sql: str, dialect: str | None) -> tuple[ColumnSource, ...]:
    """The table columns ``column`` of ``sql`` is computed from; none when that cannot be told."""
    star = _star_of(sql, dialect)
    if star is not None:  # SELECT * FROM one table (a dbt ref): its column of that name
        return (ColumnSource(star, column),)
    try:
        node = lineage(column, sql, {}, dialect=dialect)
    except (SqlglotError, ValueError, KeyError, AttributeError, TypeError):
        return ()
    found: set[ColumnSource] = set()
    for leaf in node.walk():
        if leaf.downstream or not isinstance(leaf.expression, exp.Table):
            continue
        table = leaf.expression
        found.add(ColumnSource(TableName(table.catalog, table.db, table.name), leaf.name.rsplit(".", 1)[-1]))
    return tuple(sorted(found, key=lambda s: (s.table, s.column)))
