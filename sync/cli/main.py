"""The ``audience-sync`` command line.

Exit status: 0 success; 1 the run (or the command) failed; 2 usage or configuration error;
3 some updates failed (or the run was interrupted) and wait for the next run; 4 the job was busy;
5 the mass-change guard stopped the run before anything was sent.
"""

from __future__ import annotations

import gc
from pathlib import Path

import click

from sync import __version__, logs
from sync.cli import audit as cli_audit
from sync.cli import daemon as cli_daemon
from sync.cli import run as cli_run
from sync.cli import warehouse as cli_warehouse

COMMANDS = [
    cli_run.validate, cli_run.migrate, cli_run.run, cli_run.plan, cli_run.retry, cli_run.receiver, cli_run.demo,
    cli_daemon.schedule, cli_daemon.status, cli_daemon.pause, cli_daemon.resume, cli_daemon.skip,
    cli_audit.runs, cli_audit.diff, cli_audit.history, cli_audit.audiences, cli_audit.messages, cli_audit.failed,
    cli_audit.report, cli_audit.prune, cli_warehouse.warehouse,
]  # fmt: skip


# The cyclic garbage collector's thresholds for every command (CPython's default: 700, 10, 10). A run builds
# millions of short-lived containers (updates, calls, answers) that live as long as their batch: at the
# default, they survive into the oldest generation and trigger a full collection every few thousand updates,
# which took about a third of an initial sync's CPU (23 full collections and 4.5 s at 100,000 users).
# Refcounting frees them either way; the collector is only needed for cycles, which a run hardly makes.
GC_THRESHOLDS = (50_000, 20, 20)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="jobs.yaml to use (default: $AUDIENCE_SYNC_CONFIG or ./jobs.yaml).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.version_option(__version__, prog_name="audience-sync")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str, log_format: str) -> None:
    """Sync warehouse audiences and computed traits to ChartMogul or Segment, the way Engage does."""
    gc.set_threshold(*GC_THRESHOLDS)
    logs.configure(log_level, log_format)
    ctx.obj = config_path


for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="audience-sync")
