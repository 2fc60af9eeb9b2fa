"""Commands for the daemon: ``schedule``, ``status``, ``pause``, ``resume`` and ``skip``."""

from __future__ import annotations

import json

import click

from sync.cli_common import fail, job_config, open_store, outline_of, stdout_console, stop_on_signals
from sync.destinations.chartmogul import utc_now
from sync.display import print_rows
from sync.errors import ConfigError
from sync.runner import EXIT_USAGE
from sync.scheduler import Daemon
from sync.status import STATUS_FIELDS, status_rows, table_row


@click.command()
@click.pass_context
def schedule(ctx: click.Context) -> None:
    """Run every enabled job on its schedule until SIGTERM or SIGINT (the initial sync first)."""
    config = job_config(ctx)
    if not any(job.schedule.enabled for job in config.jobs):
        fail("no job has its schedule enabled", EXIT_USAGE)
    stop = stop_on_signals()
    with open_store(config.state_url) as store:
        Daemon(config, store, stop=stop).serve()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per job: last run, next scheduled run, acknowledged users, pending and dead updates, failures, lease."""
    config = outline_of(ctx)
    with open_store(config.state_url) as store:
        rows = status_rows(store, config, utc_now())
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        print_rows(stdout_console(), [table_row(row) for row in rows], STATUS_FIELDS, "table")


@click.command()
@click.argument("job")
@click.pass_context
def pause(ctx: click.Context, job: str) -> None:
    """Keep the daemon from starting JOB until `resume` (a run in progress finishes)."""
    _control(ctx, job, "paused", paused=True)


@click.command()
@click.argument("job")
@click.pass_context
def resume(ctx: click.Context, job: str) -> None:
    """Let the daemon run a paused JOB again."""
    _control(ctx, job, "resumed", paused=False)


@click.command()
@click.argument("job")
@click.pass_context
def skip(ctx: click.Context, job: str) -> None:
    """Skip JOB's next scheduled run; the one after it happens as usual."""
    _control(ctx, job, "will skip its next scheduled run", skip_next=True)


def _control(ctx: click.Context, name: str, said: str, **values: bool) -> None:
    config = outline_of(ctx)
    try:
        job = config.job(name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    with open_store(config.state_url) as store:
        store.update_schedule(job.name, utc_now(), **values)
    click.echo(f"job {job.name} {said}")
