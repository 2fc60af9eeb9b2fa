"""Commands that sync: ``run``, ``plan``, ``retry``, ``validate``, ``migrate``, ``receiver`` and ``demo``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sync.audit import CHANGE_FIELDS, change_records
from sync.cli_common import fail, job_config, open_store, state_url_of, stdout_console, stop_on_signals
from sync.display import print_rows
from sync.errors import ConfigError
from sync.receiver import Faults, Receiver
from sync.runner import EXIT_USAGE, SUMMARY_FIELDS, Runner, RunOptions
from sync.store.repository import AuditFilter

log = logging.getLogger("sync.cli")
# Without a terminal, progress is logged at most this often.
PROGRESS_LOG_INTERVAL_S = 10.0


@click.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check jobs.yaml and report every problem at once (exit 2 when there is one)."""
    config = job_config(ctx)
    for job in config.jobs:
        keys = ", ".join(job.audience_keys() + job.trait_keys())
        click.echo(f"job {job.name}: {len(job.audiences)} audience(s), {len(job.traits)} trait(s): {keys}")
    click.echo("configuration is valid")


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
    sys.exit(_run(ctx, job, RunOptions(full=full, dry_run=dry_run, force=force), as_json, show_changes=False))


@click.command()
@click.argument("job")
@click.option("--full", is_flag=True, help="Plan a full resync.")
@click.pass_context
def plan(ctx: click.Context, job: str, full: bool) -> None:
    """Show what a run of JOB would send (a dry run, recorded for the audit trail)."""
    sys.exit(_run(ctx, job, RunOptions(full=full, dry_run=True), False, show_changes=True))


@click.command()
@click.argument("job")
@click.option("--dead", is_flag=True, help="Also send the updates parked as dead.")
@click.option("--json", "as_json", is_flag=True, help="End with one line of JSON describing the run.")
@click.pass_context
def retry(ctx: click.Context, job: str, dead: bool, as_json: bool) -> None:
    """Run JOB now to send its failed updates again; --dead un-parks the dead ones first."""
    if dead:
        config = job_config(ctx)
        with open_store(config.state_url) as store:
            revived = store.revive(config.job(job).name)
        click.echo(f"{revived} dead update(s) will be sent again", err=True)
    sys.exit(_run(ctx, job, RunOptions(), as_json, show_changes=False))


def _run(ctx: click.Context, job_name: str, options: RunOptions, as_json: bool, show_changes: bool) -> int:
    config = job_config(ctx)
    try:
        job = config.job(job_name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    stop = stop_on_signals()
    with open_store(config.state_url) as store, _progress() as progress:
        report = Runner(store, progress=progress, stop=stop).run(job, options)
        if show_changes:
            print_rows(
                stdout_console(), change_records(store, AuditFilter(run_id=report.run_id)), CHANGE_FIELDS, "table"
            )
    extra = {"error": report.error, "skipped_rows": report.skipped_rows, "parked": report.parked}
    _print_report(report.summary() | extra, as_json)
    return report.exit_code


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task("deliver", total=None)
        with bar:
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    last = [time.monotonic()]

    def log_progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_LOG_INTERVAL_S or done == total:
            last[0] = time.monotonic()
            log.info("delivery progress", extra={"done": done, "total": total})

    yield log_progress


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
    if summary.get("skipped_rows"):
        line += f", {summary['skipped_rows']} rows skipped"
    if summary.get("parked"):
        line += f", {summary['parked']} dead updates left out (see `audience-sync failed`)"
    click.echo(line)
    if summary.get("error"):
        click.echo(f"error: {summary['error']}", err=True)


@click.command()
@click.option("--port", default=8787, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Append every received body to this JSON-lines file.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500/502/503.")
@click.option("--rate-limit", type=float, help="Requests per second beyond which 429 is answered.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in Retry-After with a 429.")
@click.option("--delay", default=0.0, help="Seconds to wait before each answer.")
@click.option("--drop-rate", default=0.0, help="Share of requests whose connection is dropped.")
@click.option("--seed", default=0, help="Seed of the fault dice.")
def receiver(
    port: int,
    out: Path | None,
    error_rate: float,
    rate_limit: float | None,
    retry_after: float,
    delay: float,
    drop_rate: float,
    seed: int,
) -> None:
    """A ChartMogul-compatible capture server on 127.0.0.1, to try a configuration safely."""
    faults = Faults(
        error_rate=error_rate,
        rate_limit=rate_limit,
        retry_after=retry_after,
        delay=delay,
        drop_rate=drop_rate,
        seed=seed,
    )
    server = Receiver(port, faults, out)
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
@click.pass_context
def demo(ctx: click.Context, workdir: Path) -> None:
    """Build a demo warehouse, sync it to a loopback receiver twice, and show what happened."""
    from sync.demo import run_demo

    sys.exit(run_demo(workdir, stdout_console(), ctx.obj))
