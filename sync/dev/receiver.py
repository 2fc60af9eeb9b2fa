"""A capture server for 127.0.0.1 that stands in for a destination: records every body it receives and can
be told to fail.

Two modes. ``chartmogul`` (the default) takes a Send Contact body per POST at any path, as a ChartMogul
webhook does. ``segment`` speaks Segment's HTTP Tracking API ``/v1/batch``: basic auth with the write key as
the user, a batch of at most 500 KB and 2,500 calls, each call at most 32 KB and carrying a ``type`` and a
``userId`` or ``anonymousId`` (a track call also its ``event``); anything else is answered 400, as Segment
documents. (Segment itself answers 200 to a wrong write key and drops the events; this receiver answers 401,
so that a mistake shows.) ``sync.dev.chartmogul_api`` stands in for ChartMogul's REST API.

Faults it can inject (all optional, combinable): a share of 5xx answers, 429 with ``Retry-After`` beyond a
request rate, slow answers, dropped connections, and (for tests) a ``respond`` hook that decides per body.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal, Self

Mode = Literal["chartmogul", "segment"]

# Segment's documented limits (docs, "HTTP Tracking API"): a batch request and one call.
SEGMENT_MAX_BATCH_BYTES = 500 * 1024
SEGMENT_MAX_CALL_BYTES = 32 * 1024
SEGMENT_MAX_CALLS = 2_500
SEGMENT_PATH = "/v1/batch"

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


class JsonHandler(BaseHTTPRequestHandler):
    """What both capture servers' handlers share: keep-alive HTTP/1.1, JSON answers in one write, no logging."""

    protocol_version = "HTTP/1.1"
    # One write per answer with TCP_NODELAY: separate small writes for headers and body would stall each
    # keep-alive request on Nagle's algorithm and delayed ACKs (~40 ms).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def answer(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        pass


class LoopbackServer:
    """What the capture servers share: a threaded HTTP server, started in a thread (``with``) for tests and the
    demo, or served in the foreground by ``audience-sync receiver``."""

    _server: _QuietServer
    _out: BinaryIO | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def hooked(faults: Faults, request: Mapping[str, Any]) -> tuple[int, dict[str, str], float] | None:
    """What the ``respond`` hook decided for ``request`` as (status, headers, delay); None to go on."""
    if faults.respond is None:
        return None
    action = faults.respond(request)
    if action == "drop":
        return 0, {}, faults.delay
    if isinstance(action, int):
        return action, {}, faults.delay
    if isinstance(action, tuple):
        return action[0], dict(action[1]), faults.delay
    return None


class Receiver(LoopbackServer):
    """Start with ``with Receiver() as receiver:``; ``receiver.url`` is the webhook URL to configure."""

    def __init__(
        self,
        port: int = 0,
        faults: Faults | None = None,
        out: Path | None = None,
        host: str = "127.0.0.1",
        *,
        mode: Mode = "chartmogul",
        write_key: str | None = None,
        keep: bool = True,
    ) -> None:
        self.mode = mode
        # Tests read what was received from ``records``; a long-running receiver keeps counts (and ``out``) only.
        self._keep = keep
        self.received = self.accepted_count = 0
        self._authorization = _basic(write_key) if write_key is not None else None
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
        return f"http://{host!s}:{port}" + (SEGMENT_PATH if self.mode == "segment" else "/webhook")

    def accepted(self) -> list[Mapping[str, Any]]:
        """Bodies answered with 2xx, in the order they arrived."""
        with self._lock:
            return [r.body for r in self.records if 200 <= r.status < 300]

    def accepted_calls(self) -> list[Mapping[str, Any]]:
        """In segment mode: every call of the batches answered with 2xx, in the order they arrived."""
        return [call for body in self.accepted() for call in body.get("batch", [])]

    def refusal(self, path: str, authorization: str | None, raw: bytes, body: Any) -> tuple[int, str] | None:
        """In segment mode, what Segment would refuse, as (status, message); None when it takes the batch."""
        if self.mode != "segment":
            return None
        if path.split("?")[0] != SEGMENT_PATH:
            return 404, f"no such endpoint; batches go to {SEGMENT_PATH}"
        if self._authorization is not None and authorization != self._authorization:
            return 401, "missing or wrong write key (basic auth, the write key as the user)"
        return _segment_problem(raw, body)

    def decide(self, body: Mapping[str, Any]) -> tuple[int, dict[str, str], float]:
        """The status (0 = drop), headers and delay for one request."""
        faults = self.faults
        decided = hooked(faults, body)
        if decided is not None:
            return decided
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
            self.received += 1
            self.accepted_count += 200 <= status < 300
            if self._keep:
                self.records.append(received)
            if self._out:
                line = {"status": status, "at": received.at, "body": body}
                self._out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                self._out.flush()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.answer(400, {}, b'{"error":"body is not JSON"}')
                    return
                authorization = self.headers.get("Authorization")
                refused = receiver.refusal(self.path, authorization, raw, body)
                if refused is not None:
                    receiver._record(body if isinstance(body, dict) else {}, refused[0], self.path, authorization)
                    self.answer(refused[0], {}, json.dumps({"error": refused[1]}).encode())
                    return
                status, headers, delay = receiver.decide(body)
                if delay:
                    time.sleep(delay)
                receiver._record(body, status, self.path, authorization)
                if status == 0:
                    self.close_connection = True
                    return
                payload = b'{"ok":true}' if status < 300 else self._error_payload(status)
                self.answer(status, headers, payload)

            def _error_payload(self, status: int) -> bytes:
                template = receiver.faults.error_body
                if template is not None:
                    return template.replace("{path}", self.path).encode()
                return json.dumps({"error": f"injected {status}"}).encode()

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with receiver._lock:
                    summary = {"received": receiver.received, "accepted": receiver.accepted_count}
                self.answer(200, {}, json.dumps(summary).encode())

        return Handler


def _basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def _segment_problem(raw: bytes, body: Any) -> tuple[int, str] | None:
    """Why Segment answers 400 to this batch, if it does."""
    if len(raw) > SEGMENT_MAX_BATCH_BYTES:
        return 400, f"batch is {len(raw)} bytes, over {SEGMENT_MAX_BATCH_BYTES}"
    calls = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(calls, list) or not calls:
        return 400, "the body needs a non-empty batch list"
    if len(calls) > SEGMENT_MAX_CALLS:
        return 400, f"batch has {len(calls)} calls, over {SEGMENT_MAX_CALLS}"
    for index, call in enumerate(calls):
        if not isinstance(call, dict) or not call.get("type"):
            return 400, f"batch[{index}] has no type"
        if not call.get("userId") and not call.get("anonymousId"):
            return 400, f"batch[{index}] has neither userId nor anonymousId"
        if call["type"] == "track" and not call.get("event"):
            return 400, f"batch[{index}] is a track call with no event"
        if call["type"] == "group" and not call.get("groupId"):
            return 400, f"batch[{index}] is a group call with no groupId"
        size = len(json.dumps(call, separators=(",", ":"), ensure_ascii=False).encode())
        if size > SEGMENT_MAX_CALL_BYTES:
            return 400, f"batch[{index}] is {size} bytes, over {SEGMENT_MAX_CALL_BYTES}"
    return None
