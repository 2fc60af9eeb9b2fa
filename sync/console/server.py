"""Serving the console with uvicorn: in the foreground (``audience-sync console``) or in a thread (tests, and
the scheduler beside its metrics)."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

import uvicorn

from sync.config.values import is_loopback
from sync.console.app import Settings, make_app
from sync.errors import ConfigError
from sync.store import Store

log = logging.getLogger(__name__)


def check_exposure(host: str, token: str | None) -> None:
    """Off loopback, a console without a token would show every job's audit trail to the network: refused."""
    if not is_loopback(host) and not token:
        raise ConfigError([f"the console binds to {host}, beyond this machine: give it a token (--token-env VAR)"])


class ConsoleServer:
    """The console on ``host:port`` in a thread of its own; ``with ConsoleServer(...) as server:``."""

    def __init__(self, settings: Settings, store: Store, host: str = "127.0.0.1", port: int = 0) -> None:
        check_exposure(host, settings.token)
        self.settings = settings
        config = uvicorn.Config(make_app(settings, store), host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)

    @property
    def url(self) -> str:
        socket = self._server.servers[0].sockets[0]
        host, port = socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 20.0) -> ConsoleServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:  # bounded: uvicorn binds in well under a second
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the console could not start (is the port taken?)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
