"""Commands that sync: ``run``, ``plan``, ``retry``, ``validate``, ``migrate``, ``receiver`` and ``demo``."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from sync import api, logs
from sync.audit.display import print_rows
from sync.audit.queries import CHANGE_FIELDS, change_records
from sync.cli.common import (
    fail,
    job_config,
    open_store,
    secret_from_env,
    state_url_of,
    stdout_console,
    stop_on_signals,
)
from sync.dev.chartmogul_account import Account, load_account
from sync.dev.chartmogul_api import REQUESTS_PER_SECOND, ChartMogulApiReceiver
from sync.dev.receiver import Faults, Receiver
from sync.errors import ConfigError, SyncError
from sync.run.report import EXIT_USAGE, SUMMARY_FIELDS, RunOptions
from sync.store import AuditFilter, Store
from sync.text import plural

log = logging.getLogger("sync.cli")
# `plan` shows this many changes after its summary; `diff RUN_ID` has them all.
PLAN_ROWS = 50


@click.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the state store's schema."""
    with open_store(state_url_of(ctx)) as store:
        click.echo(f"state store {store.label} is up to date")


@click.command()
@click.argument("job")
@click.option("--full", is_flag=True, help="Resend every current member and trait value (exits still send false).")
@click.option("--dry-run", is_flag=True, help="Compute and record the plan; send nothing, advance nothing.")
@click.option("--force", is_flag=True, help="Send even if the mass-change guard would stop the run.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON describing the run.")
@click.pass_context
def run(ctx: click.Context, job: str, full: bool, dry_run: bool, force: bool, as_json: bool) -> None:
    """Run JOB once now."""
    trigger = "plan" if dry_run else "full" if full else "manual"
    options = RunOptions(full=full, dry_run=dry_run, force=force, trigger=trigger)
    sys.exit(_run(ctx, job, options, as_json, show_changes=False))


@click.command()
@click.argument("job")
@click.option("--full", is_flag=True, help="Plan a full resync.")
@click.pass_context
def plan(ctx: click.Context, job: str, full: bool) -> None:
    """Show what a run of JOB would send (a dry run, recorded for the audit trail)."""
    sys.exit(_run(ctx, job, RunOptions(full=full, dry_run=True, trigger="plan"), False, show_changes=True))


@click.command()
@click.argument("job")
@click.option("--dead", is_flag=True, help="Also send the updates parked as dead.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON describing the run.")
@click.pass_context
def retry(ctx: click.Context, job: str, dead: bool, as_json: bool) -> None:
    """Run JOB now to send its failed updates again; --dead un-parks the dead ones first."""
    if dead:
        config = job_config(ctx, job)
        with open_store(config.state_url) as store:
            revived = store.revive(config.job(job).name)
        click.echo(f"{plural(revived, 'dead update')} will be sent again", err=True)
    sys.exit(_run(ctx, job, RunOptions(trigger="retry"), as_json, show_changes=False))


def _run(ctx: click.Context, job_name: str, options: RunOptions, as_json: bool, show_changes: bool) -> int:
    """A run through ``sync.api.run``, with a progress bar on a terminal and signals that stop it."""
    config = job_config(ctx, job_name)
    try:
        config.job(job_name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    stop = stop_on_signals()
    with _progress() as progress:
        try:
            result = api.run(
                config,
                job_name,
                full=options.full,
                dry_run=options.dry_run,
                force=options.force,
                trigger=options.trigger,
                progress=progress,
                stop=stop,
            )
        except SyncError as exc:
            fail(str(exc))
    report = result.report
    extra = {
        "error": report.error,
        "skipped_rows": report.skipped_rows,
        "parked": report.parked,
        "full_left": report.full_left,
    }
    _print_report(report.summary() | extra, as_json)
    if show_changes:
        with open_store(config.state_url) as store:
            _print_changes(store, report.run_id)
    return result.exit_code


def _print_changes(store: Store, run_id: int) -> None:
    """The plan's first changes; all of them are one `diff RUN_ID` away."""
    rows = change_records(store, AuditFilter(run_id=run_id))
    shown = print_rows(stdout_console(), islice(rows, PLAN_ROWS), CHANGE_FIELDS, "table")
    more = sum(1 for _ in rows)
    if more:
        click.echo(f"… and {more} more changes: audience-sync diff {run_id} lists them all (--format csv to export)")
    elif shown:
        click.echo(f"audience-sync diff {run_id} lists these again (--format csv to export)")


class _Bar:
    """A progress bar on an interactive terminal: the run's phase, then the updates answered."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self.bar, self.task = bar, task

    def phase(self, name: str) -> None:
        self.bar.update(self.task, description=name)

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)


@contextmanager
def _progress() -> Iterator[_Bar | None]:
    """A bar on a terminal, on the console the log lines use too; without one, the run logs its phases and
    progress itself."""
    console = logs.terminal()
    if console is None:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("starting", total=None)
    with bar:
        yield _Bar(bar, task)


def _print_report(summary: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({k: summary[k] for k in SUMMARY_FIELDS}))
        return
    line = (
        f"run {summary['run_id']} ({summary['job']}, {summary['kind']}): {summary['status']} — "
        f"{summary['users']} users, {summary['entered']} entered, {summary['exited']} exited, "
        f"{summary['traits_changed']} trait changes, {summary['updates']} updates, "
        f"{summary['delivered']} delivered, {summary['failed']} failed"
    )
    if summary.get("unmatched"):
        matched = summary["delivered"] / max(1, summary["delivered"] + summary["unmatched"])
        line += f", {summary['unmatched']} unmatched (no record at the destination; {matched:.0%} matched)"
    if summary.get("skipped_rows"):
        line += f", {summary['skipped_rows']} rows skipped"
    if summary.get("parked"):
        line += f", {summary['parked']} dead updates left out (see `audience-sync failed`)"
    click.echo(line)
    if summary.get("error"):
        click.echo(f"error: {summary['error']}", err=True)
    if summary.get("full_left"):
        click.echo(
            f"the full resync is not finished: {summary['full_left']} subjects left. The job's next run (scheduled "
            "or manual) goes on with it; `run --full` starts it over",
            err=True,
        )


@click.command()
@click.option("--port", default=8787, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Append every received body to this JSON-lines file.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500/502/503.")
@click.option("--rate-limit", type=float, help="Requests per second beyond which 429 is answered.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in Retry-After with a 429.")
@click.option("--delay", default=0.0, help="Seconds to wait before each answer.")
@click.option("--drop-rate", default=0.0, help="Share of requests whose connection is dropped.")
@click.option("--seed", default=0, help="Seed of the fault dice.")
@click.option(
    "--mode",
    type=click.Choice(["chartmogul", "segment", "chartmogul_api"]),
    default="chartmogul",
    show_default=True,
    help="chartmogul: a Send Contact webhook at any path; segment: Segment's /v1/batch; chartmogul_api: "
    "ChartMogul's REST API (customers, contacts, custom attributes) at /v1.",
)
@click.option(
    "--write-key-env",
    metavar="VAR",
    help="Segment mode: answer 401 unless the basic auth carries the write key in this environment variable.",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="chartmogul_api mode: answer 401 unless the basic auth carries the API key in this environment variable.",
)
@click.option(
    "--customers",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="chartmogul_api mode: the customers (and contacts) it starts with, from a JSON or CSV file.",
)
def receiver(
    port: int,
    out: Path | None,
    error_rate: float,
    rate_limit: float | None,
    retry_after: float,
    delay: float,
    drop_rate: float,
    seed: int,
    mode: Literal["chartmogul", "segment", "chartmogul_api"],
    write_key_env: str | None,
    api_key_env: str | None,
    customers: Path | None,
) -> None:
    """A ChartMogul- or Segment-compatible capture server on 127.0.0.1, to try a configuration safely."""
    write_key = secret_from_env(write_key_env, "--write-key-env")
    api_key = secret_from_env(api_key_env, "--api-key-env")
    if (api_key_env or customers) and mode != "chartmogul_api":
        fail("--api-key-env and --customers are for --mode chartmogul_api", EXIT_USAGE)
    faults = Faults(
        error_rate=error_rate,
        rate_limit=rate_limit,
        retry_after=retry_after,
        delay=delay,
        drop_rate=drop_rate,
        seed=seed,
    )
    server: Receiver | ChartMogulApiReceiver
    if mode == "chartmogul_api":
        try:
            account = load_account(customers) if customers else Account()
        except (OSError, ValueError) as exc:
            fail(f"--customers: {exc}", EXIT_USAGE)
        server = ChartMogulApiReceiver(
            account,
            api_key=api_key,
            port=port,
            faults=faults,
            requests_per_second=rate_limit or REQUESTS_PER_SECOND,
            keep=False,
            out=out,
        )
        click.echo(f"{len(account.customers)} customers, {len(account.contacts)} contacts", err=True)
    else:
        server = Receiver(port, faults, out, mode=mode, write_key=write_key, keep=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    click.echo(f"receiving on {server.url}" + (f", recording to {out}" if out else ""), err=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()


@click.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path("demo/out"),
    show_default=True,
    help="Where the demo keeps its warehouse, state store and received bodies.",
)
@click.option(
    "--destination",
    type=click.Choice(["chartmogul", "chartmogul_api"]),
    default="chartmogul",
    show_default=True,
    help="chartmogul: the Send Contact webhook (the job's own destination); chartmogul_api: typed custom "
    "attributes on ChartMogul customers, through a ChartMogul-API-compatible receiver.",
)
@click.pass_context
def demo(ctx: click.Context, workdir: Path, destination: str) -> None:
    """Build a demo warehouse, sync it to a loopback receiver twice, and show what happened."""
    from sync.dev.demo import run_demo

    sys.exit(run_demo(workdir, stdout_console(), ctx.obj, destination))
