"""What every command shares: the configuration, the state store, output, and stop signals."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import click
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from sync.config import Config, Outline, load_config, load_outline, load_state_url
from sync.errors import ConfigError, StoreError, SyncError
from sync.run.report import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:  # the state store's modules load with the first command that opens it
    from sync.store import Store

log = logging.getLogger("sync.cli")


def stdout_console() -> Console:
    # Piped output keeps full cells; a terminal gets its own width.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def secret_from_env(variable: str | None, option: str) -> str | None:
    """The secret in environment variable ``variable`` (None when no variable is named); a usage error
    naming ``option`` when it is not set."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        fail(f"{option}: environment variable {variable} is not set", EXIT_USAGE)
    return value


def job_config(ctx: click.Context, *jobs: str) -> Config:
    """The configuration; with ``jobs``, only those jobs are read, so that only their secrets must be set."""
    try:
        return load_config(ctx.obj, only=jobs or None)
    except ConfigError as exc:
        _config_problems(exc)


def state_url_of(ctx: click.Context) -> str:
    """The state store alone: audit commands work without the jobs' secrets in the environment."""
    try:
        return load_state_url(ctx.obj)
    except ConfigError as exc:
        _config_problems(exc)


def outline_of(ctx: click.Context) -> Outline:
    """Each job's name, schedule and retention with the state store: the control commands need no secrets."""
    try:
        return load_outline(ctx.obj)
    except ConfigError as exc:
        _config_problems(exc)


def _config_problems(error: ConfigError) -> NoReturn:
    for problem in error.problems:
        click.echo(f"config error: {problem}", err=True)
    sys.exit(EXIT_USAGE)


@contextmanager
def open_store(state_url: str) -> Iterator[Store]:
    from sync.store import Store, store_reason

    try:
        store = Store.open(state_url)
    except StoreError as exc:
        fail(str(exc))
    try:
        yield store
    except SyncError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"the state store failed: {store_reason(exc)}")
    finally:
        store.close()


def stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask the run (or the daemon) to stop gracefully; a second one stops at once."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        # Not in the handler itself: it runs in the main thread, which may be inside stop.wait() holding the
        # event's (non-reentrant) lock at this very moment. A short-lived thread sets it and logs.
        threading.Thread(target=_stop, args=(stop, signal.Signals(signum).name), daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _stop(stop: threading.Event, name: str) -> None:
    log.info("stop requested", extra={"signal": name})
    stop.set()
