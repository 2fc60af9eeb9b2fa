"""A ChartMogul-compatible capture server for 127.0.0.1: records every body it receives and can be told to fail.

Faults it can inject (all optional, combinable): a share of 5xx answers, 429 with ``Retry-After`` beyond a
request rate, slow answers, dropped connections, and (for tests) a ``respond`` hook that decides per body.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

# What the hook may answer: an HTTP status (with optional headers), "drop" to close without answering,
# or None for the receiver's ordinary behaviour.
Action = int | tuple[int, Mapping[str, str]] | str | None


@dataclass
class Faults:
    error_rate: float = 0.0  # share of requests answered with one of error_statuses
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit: float | None = None  # requests per second beyond which 429 is answered
    retry_after: float = 1.0  # seconds sent in Retry-After with a 429
    delay: float = 0.0  # seconds to wait before answering
    drop_rate: float = 0.0  # share of requests whose connection is closed without an answer
    respond: Callable[[Mapping[str, Any]], Action] | None = None
    seed: int = 0
    # The body of error answers; ``{path}`` becomes the request's path, as some servers' error pages echo it.
    error_body: str | None = None


@dataclass(frozen=True)
class Received:
    body: Mapping[str, Any]
    status: int  # 0 when the connection was dropped
    at: float
    path: str
    authorization: str | None = None


@dataclass
class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``rate`` saved up."""

    rate: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _QuietServer(ThreadingHTTPServer):
    """Clients that vanish mid-request (killed, timed out) are part of the tests, not errors to print."""

    request_queue_size = 128  # the default backlog of 5 resets connections when 20 clients connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class Receiver:
    """Start with ``with Receiver() as receiver:``; ``receiver.url`` is the webhook URL to configure."""

    def __init__(
        self, port: int = 0, faults: Faults | None = None, out: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.faults = faults or Faults()
        self.records: list[Received] = []
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._bucket = _Bucket(self.faults.rate_limit, self.faults.rate_limit) if self.faults.rate_limit else None
        self._out: BinaryIO | None = out.open("ab") if out else None
        self._server = _QuietServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/webhook"

    def start(self) -> Receiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        if self._out:
            self._out.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def accepted(self) -> list[Mapping[str, Any]]:
        """Bodies answered with 2xx, in the order they arrived."""
        with self._lock:
            return [r.body for r in self.records if 200 <= r.status < 300]

    def decide(self, body: Mapping[str, Any]) -> tuple[int, dict[str, str], float]:
        """The status (0 = drop), headers and delay for one request."""
        faults = self.faults
        if faults.respond is not None:
            action = faults.respond(body)
            if action == "drop":
                return 0, {}, faults.delay
            if isinstance(action, int):
                return action, {}, faults.delay
            if isinstance(action, tuple):
                return action[0], dict(action[1]), faults.delay
        with self._lock:
            roll_drop, roll_error = self._rng.random(), self._rng.random()
            status_choice = self._rng.choice(faults.error_statuses) if faults.error_statuses else 500
            limited = self._bucket is not None and not self._bucket.take()
        if limited:
            return 429, self._retry_after(429), faults.delay
        if roll_drop < faults.drop_rate:
            return 0, {}, faults.delay
        if roll_error < faults.error_rate:
            return status_choice, self._retry_after(status_choice), faults.delay
        return 200, {}, faults.delay

    def _retry_after(self, status: int) -> dict[str, str]:
        """Busy answers say when to come back, as ChartMogul's do."""
        return {"Retry-After": f"{self.faults.retry_after:g}"} if status in (429, 503) else {}

    def _record(self, body: Mapping[str, Any], status: int, path: str, authorization: str | None = None) -> None:
        received = Received(body, status, time.time(), path, authorization)
        with self._lock:
            self.records.append(received)
            if self._out:
                line = {"status": status, "at": received.at, "body": body}
                self._out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                self._out.flush()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer with TCP_NODELAY: separate small writes for headers and body would stall
            # each keep-alive request on Nagle's algorithm and delayed ACKs (~40 ms).
            wbufsize = 64 * 1024
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, {}, b'{"error":"body is not JSON"}')
                    return
                status, headers, delay = receiver.decide(body)
                if delay:
                    time.sleep(delay)
                receiver._record(body, status, self.path, self.headers.get("Authorization"))
                if status == 0:
                    self.close_connection = True
                    return
                payload = b'{"ok":true}' if status < 300 else self._error_payload(status)
                self._answer(status, headers, payload)

            def _error_payload(self, status: int) -> bytes:
                template = receiver.faults.error_body
                if template is not None:
                    return template.replace("{path}", self.path).encode()
                return json.dumps({"error": f"injected {status}"}).encode()

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with receiver._lock:
                    summary = {
                        "received": len(receiver.records),
                        "accepted": sum(200 <= r.status < 300 for r in receiver.records),
                    }
                self._answer(200, {}, json.dumps(summary).encode())

            def _answer(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
                pass

        return Handler
