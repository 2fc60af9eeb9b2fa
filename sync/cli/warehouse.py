"""``audience-sync warehouse``: what the warehouse engine runs in a job's warehouse, and dropping its tables."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url

from sync.cli.common import fail, job_config, stdout_console
from sync.config import JobConfig
from sync.errors import ConfigError, SourceError
from sync.run.report import EXIT_FAILED, EXIT_USAGE
from sync.snapshot import warehouse as engine


@click.group()
def warehouse() -> None:
    """The warehouse engine's statements and tables (jobs with source.engine: warehouse)."""


def _job(ctx: click.Context, name: str) -> JobConfig:
    try:
        job = job_config(ctx, name).job(name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if job.source.engine != "warehouse":
        fail(f"job {name!r} diffs locally (source.engine: local); it keeps nothing in its warehouse", EXIT_USAGE)
    return job


@warehouse.command()
@click.argument("job")
@click.pass_context
def sql(ctx: click.Context, job: str) -> None:
    """Print every statement a run of JOB sends to its warehouse (for review before granting rights)."""
    found = _job(ctx, job)
    dialect = make_url(found.source.url or "").get_dialect()()
    console = stdout_console()
    for what, statement in engine.compiled(found, dialect).items():
        console.print(f"-- {what}", markup=False, highlight=False)
        console.print(f"{statement.strip()};\n", markup=False, highlight=False, soft_wrap=True)


@warehouse.command()
@click.argument("job")
@click.option("--yes", is_flag=True, help="Drop without asking.")
@click.pass_context
def drop(ctx: click.Context, job: str, yes: bool) -> None:
    """Drop JOB's tables from its warehouse schema (the next run rebuilds them from the state store)."""
    found = _job(ctx, job)
    names = engine.names_of(found)
    if not yes:
        click.confirm(f"Drop the tables {names.schema}.{names.prefix}_* of job {job!r} from its warehouse?", abort=True)
    try:
        dropped = engine.drop(found)
    except SourceError as exc:
        fail(str(exc), EXIT_FAILED)
    click.echo("\n".join(f"dropped {name}" for name in dropped) or "nothing to drop")
