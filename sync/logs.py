"""Logging set-up: readable lines for people, JSON lines (``--log-format json``) for machines.

Log records carry counts and ids, never emails, profile fields or the webhook URL.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if v is not None)
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f" {extra}" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.Handler):
    """Log lines on a terminal go through the same rich console as the progress bar, which keeps the bar
    below them instead of the two writing over each other."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True, emoji=False)
        except Exception:
            self.handleError(record)


_console: Console | None = None


def terminal() -> Console | None:
    """The console of standard error when it is a terminal (log lines and the progress bar share it)."""
    return _console


def configure(level: str = "info", fmt: str = "text") -> None:
    global _console
    handler: logging.Handler
    if fmt == "text" and sys.stderr.isatty():
        from rich.console import Console  # only on a terminal: `validate` answers without loading rich

        _console = Console(stderr=True)
        handler = ConsoleHandler(_console)
    else:
        _console = None
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "alembic", "apscheduler"):  # our own lines say what runs and when
        logging.getLogger(noisy).setLevel(logging.WARNING)
