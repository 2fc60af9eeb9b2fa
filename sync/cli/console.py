"""``audience-sync console``: the web console over the state store."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import click

from sync.cli.common import fail, open_store, outline_of, secret_from_env
from sync.errors import ConfigError
from sync.run.report import EXIT_USAGE

if TYPE_CHECKING:  # the console's modules load with the command
    from sync.console.server import ConsoleServer
    from sync.store import Store


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8400, show_default=True, type=click.IntRange(0, 65535), help="The port.")
@click.option(
    "--token-env",
    metavar="VAR",
    help="Require the token in this environment variable on every request (needed off loopback).",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let the console run jobs (now, dry, full), retry, pause, resume and skip them; off: they answer 403.",
)
@click.pass_context
def console(ctx: click.Context, host: str, port: int, token_env: str | None, allow_actions: bool) -> None:
    """Serve the web console: every job, run, change and subject, as pages and as JSON under /api/v1/."""
    config = outline_of(ctx)
    with open_store(config.state_url) as store:
        server = start_console(ctx, store, host, port, secret_from_env(token_env, "--token-env"), allow_actions)
        click.echo(f"console on {server.url}" + (" (token required)" if server.settings.token else ""), err=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        server.stop()


def start_console(
    ctx: click.Context, store: Store, host: str, port: int, token: str | None, allow_actions: bool
) -> ConsoleServer:
    """The console over ``store`` on ``host:port``, started in a thread of its own; a usage error (exit 2)
    when it may not or cannot listen there. With ``allow_actions`` it reads a job's configuration, secrets
    included, when it acts on the job."""
    from sync.config import load_config
    from sync.console.actions import Actions
    from sync.console.app import Settings
    from sync.console.server import ConsoleServer

    actions = Actions(store, lambda job: load_config(ctx.obj, only=[job])) if allow_actions else None
    try:
        return ConsoleServer(Settings(outline_of(ctx), token, actions), store, host, port).start()
    except ConfigError as exc:
        fail("; ".join(exc.problems), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot serve the console on {host}:{port}: {exc}", EXIT_USAGE)
