"""Commands for the daemon: ``schedule``, ``status``, ``pause``, ``resume`` and ``skip``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import click

from sync.audit.display import print_rows
from sync.audit.status import STATUS_FIELDS, scheduler_line, scheduler_records, status_rows, table_row
from sync.cli.common import (
    fail,
    job_config,
    open_store,
    outline_of,
    secret_from_env,
    stdout_console,
    stop_on_signals,
)
from sync.clock import utc_now
from sync.errors import ConfigError
from sync.run.report import EXIT_USAGE
from sync.scheduler.daemon import Daemon
from sync.scheduler.metrics import Metrics

if TYPE_CHECKING:
    from sync.store import Store

log = logging.getLogger("sync.cli")


@click.command()
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus metrics on this port (/metrics).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="The address the metrics listen on.")
@click.option("--console-port", type=click.IntRange(1, 65535), help="Serve the web console on this port too.")
@click.option("--console-host", default="127.0.0.1", show_default=True, help="The address the console listens on.")
@click.option("--console-token-env", metavar="VAR", help="The console's token, from this environment variable.")
@click.option("--console-allow-actions", is_flag=True, help="Let the console run, retry, pause, resume and skip jobs.")
@click.pass_context
def schedule(
    ctx: click.Context,
    metrics_port: int | None,
    metrics_host: str,
    console_port: int | None,
    console_host: str,
    console_token_env: str | None,
    console_allow_actions: bool,
) -> None:
    """Run every enabled job on its schedule until SIGTERM or SIGINT (the initial sync first)."""
    config = job_config(ctx)
    if not any(job.schedule.enabled for job in config.jobs):
        fail("no job has its schedule enabled", EXIT_USAGE)
    stop = stop_on_signals()
    console = _console(ctx, console_port, console_host, console_token_env, console_allow_actions)
    with open_store(config.state_url) as store, console(store):
        metrics = Metrics(store, [job.name for job in config.jobs]) if metrics_port else None
        server = None
        if metrics is not None and metrics_port is not None:
            try:
                server = metrics.serve(metrics_port, metrics_host)
            except OSError as exc:
                fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}", EXIT_USAGE)
            log.info("serving metrics", extra={"address": f"http://{metrics_host}:{metrics_port}/metrics"})
        try:
            Daemon(config, store, stop=stop, metrics=metrics).serve()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per job: last run, next scheduled run, acknowledged users, pending and dead updates, failures, lease."""
    config = outline_of(ctx)
    now = utc_now()
    with open_store(config.state_url) as store:
        rows = status_rows(store, config, now)
        schedulers = scheduler_records(store, now)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        console = stdout_console()
        console.print(scheduler_line(schedulers, now), highlight=False, soft_wrap=True)
        print_rows(console, [table_row(row) for row in rows], STATUS_FIELDS, "table", empty="no jobs configured")


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


def _console(
    ctx: click.Context, port: int | None, host: str, token_env: str | None, allow_actions: bool
) -> Callable[[Store], AbstractContextManager[None]]:
    """The web console beside the scheduler, on the same state store, when a port is given."""

    @contextmanager
    def serving(store: Store) -> Iterator[None]:
        if port is None:
            yield
            return
        from sync.cli.console import start_console

        token = secret_from_env(token_env, "--console-token-env")
        server = start_console(ctx, store, host, port, token, allow_actions)
        log.info("serving the console", extra={"address": server.url})
        try:
            yield
        finally:
            server.stop()

    return serving
