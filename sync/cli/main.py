"""The ``audience-sync`` command line.

Exit status: 0 success; 1 the run (or the command) failed; 2 usage or configuration error;
3 some updates failed (or the run was interrupted) and wait for the next run; 4 the job was busy;
5 the mass-change guard stopped the run before anything was sent.
"""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import click

from sync import __version__, logs

# Every command, in the order ``--help`` lists them, by the module that defines it. A command's module is
# imported when the command runs (or ``--help`` describes it): ``validate`` answers without loading pandas,
# the HTTP clients and the state store.
COMMANDS = {
    "validate": "sync.cli.validate", "migrate": "sync.cli.run", "run": "sync.cli.run", "plan": "sync.cli.run",
    "retry": "sync.cli.run", "receiver": "sync.cli.run", "demo": "sync.cli.run",
    "schedule": "sync.cli.daemon", "status": "sync.cli.daemon", "pause": "sync.cli.daemon",
    "resume": "sync.cli.daemon", "skip": "sync.cli.daemon",
    "runs": "sync.cli.audit", "diff": "sync.cli.audit", "history": "sync.cli.audit", "audiences": "sync.cli.audit",
    "messages": "sync.cli.audit", "failed": "sync.cli.audit", "report": "sync.cli.audit", "prune": "sync.cli.audit",
    "forget": "sync.cli.audit",
    "warehouse": "sync.cli.warehouse", "console": "sync.cli.console", "reconcile": "sync.cli.reconcile",
    "dbt": "sync.cli.dbt",
}  # fmt: skip


# Options of the program as a whole, taken on either side of the command (as git, dbt and kubectl do).
GLOBAL_OPTIONS = ("--config", "--log-level", "--log-format")


def global_options_first(args: list[str]) -> list[str]:
    """``args`` with the program's own options moved before the command: ``run JOB --config F`` reads as
    ``--config F run JOB``. Nothing after ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS and rest:
            taken = 1 if "=" in arg else 2
            front += args[index : index + taken]
            index += taken
            continue
        rest.append(arg)
        index += 1
    return front + rest


class LazyGroup(click.Group):
    """A group whose commands are imported from ``COMMANDS`` when asked for, and whose own options may also
    follow the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, global_options_first(args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command), f"{module}.{cmd_name} is not a command"
        return command


# The cyclic garbage collector's thresholds for every command (CPython's default: 700, 10, 10). A run builds
# millions of short-lived containers (updates, calls, answers) that live as long as their batch: at the
# default, they survive into the oldest generation and trigger a full collection every few thousand updates,
# which took about a third of an initial sync's CPU (23 full collections and 4.5 s at 100,000 users).
# Refcounting frees them either way; the collector is only needed for cycles, which a run hardly makes.
GC_THRESHOLDS = (50_000, 20, 20)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="audience-sync")
