"""Reading a job's snapshot from its warehouse (any SQLAlchemy URL) and from CSV or Parquet files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from sync.config import ComputationConfig, JobConfig
from sync.errors import SourceError
from sync.snapshot import Computation, Snapshot, build_snapshot


def computations(job: JobConfig) -> tuple[Computation, ...]:
    """The job's audiences then traits, in configuration order."""
    return tuple(
        [Computation(a.resolved_key, "audience", a.name) for a in job.audiences]
        + [Computation(t.resolved_key, "trait", t.name) for t in job.traits]
    )


def read_snapshot(job: JobConfig) -> Snapshot:
    """Run every query and read every file of the job; raise SourceError naming the one that failed."""
    raw: dict[str, pd.DataFrame] = {}
    profiles: pd.DataFrame | None = None
    sql_items = [(c, item) for c, item in _items(job) if item.query is not None]
    if job.source.url and (sql_items or job.source.profiles):
        engine = create_engine(job.source.url)
        try:
            with engine.connect() as connection:
                if job.source.profiles:
                    profiles = _query(connection, job.source.profiles, job.name, "profiles")
                for computation, item in sql_items:
                    raw[computation.key] = _query(connection, item.query or "", job.name, _label(computation))
        except SQLAlchemyError as exc:
            raise SourceError(
                f"job {job.name!r}: cannot connect to the warehouse {job.source.redacted_url()}: {_reason(exc)}"
            ) from None
        finally:
            engine.dispose()
    if job.source.profiles_file:
        profiles = read_file(Path(job.source.profiles_file), job.name, "profiles")
    for computation, item in _items(job):
        if item.file is not None:
            raw[computation.key] = read_file(Path(item.file), job.name, _label(computation))
    try:
        return build_snapshot(computations(job), profiles, raw)
    except SourceError as exc:
        raise SourceError(f"job {job.name!r}: {exc}") from None


def _items(job: JobConfig) -> list[tuple[Computation, ComputationConfig]]:
    return list(zip(computations(job), [*job.audiences, *job.traits], strict=True))


def _query(connection: Connection, sql: str, job: str, label: str) -> pd.DataFrame:
    try:
        result = connection.execute(text(sql))
        columns = [str(c) for c in result.keys()]
        rows = result.fetchall()
    except SQLAlchemyError as exc:
        connection.rollback()
        raise SourceError(f"job {job!r}: the {label} query failed: {_reason(exc)}") from None
    data = {
        name: pd.Series(values, dtype=object)
        for name, values in zip(columns, zip(*rows, strict=True) if rows else [()] * len(columns), strict=True)
    }
    return pd.DataFrame(data, columns=columns)


def read_file(path: Path, job: str, label: str) -> pd.DataFrame:
    """A CSV or Parquet file; user ids are read as text so that ``007`` stays ``007``."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"user_id": str}, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise SourceError(f"job {job!r}: cannot read the {label} file {path.name}: {exc}") from None


def _label(computation: Computation) -> str:
    return f"{computation.kind} {computation.key!r}"


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement echo and background link."""
    orig = getattr(exc, "orig", None)
    return str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else type(exc).__name__
