"""A ChartMogul-API-compatible server for 127.0.0.1: the endpoints the ``chartmogul_api`` destination uses (and
the official ``chartmogul`` client calls for them), over an in-memory set of customers and contacts.

It follows ChartMogul's API reference (dev.chartmogul.com): HTTP basic auth with the API key as the user;
``GET /v1/customers?external_id=`` (200 with empty ``entries`` when nothing matches),
``GET /v1/customers/search?email=`` (404 when nothing matches), ``GET /v1/contacts?email=&customer_external_id=``
(cursor paged), ``POST`` / ``PUT /v1/customers/{uuid}/attributes/custom`` (an attribute must be added, with
its type, before it can be updated), ``PATCH /v1/contacts/{uuid}`` with ``custom: [{key, value}]``; errors as
``{"code", "message", "param"}``. Its limits are ChartMogul's: 40 requests/s per account (429 beyond) and 20
parallel connections (503 beyond). It can inject the faults the webhook receiver can, and records every
request it answers.

Seed it from JSON (``{"customers": [{"external_id", "email", "name", "contacts": [{"email", ...}]}]}``) or CSV
(one customer per row: ``external_id,email,name``; each gets one contact with the same email).
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from sync.dev.chartmogul_account import Account
from sync.dev.receiver import Faults, JsonHandler, LoopbackServer, _Bucket, _QuietServer, hooked

# ChartMogul's documented limits (dev.chartmogul.com, "Rate limits").
REQUESTS_PER_SECOND = 40.0
MAX_CONNECTIONS = 20
# Custom attribute types and rules (dev.chartmogul.com, "Custom attributes").
TYPES = ("String", "Integer", "Decimal", "Timestamp", "Boolean")
MAX_STRING = 255
_KEY = re.compile(r"^[A-Za-z0-9_]+$")
_BOOLEAN_TEXTS = {
    "TRUE": True,
    "true": True,
    "t": True,
    "1": True,
    "FALSE": False,
    "false": False,
    "f": False,
    "0": False,
}
PAGE_SIZE = 200


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class Call:
    """One request answered: what was asked and what was answered (0: the connection was dropped)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    status: int
    at: float

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH")


def check_value(kind: str, value: Any, key: str) -> Any:
    """``value`` as an attribute of type ``kind`` stores it; ApiError(422) when it is not one."""
    if value is None:
        return None
    ok = {
        "String": isinstance(value, str) and len(value) <= MAX_STRING,
        "Integer": isinstance(value, int) and not isinstance(value, bool),
        "Decimal": isinstance(value, int | float) and not isinstance(value, bool),
        "Timestamp": isinstance(value, str) and _is_timestamp(value),
        "Boolean": isinstance(value, bool) or (isinstance(value, str) and value in _BOOLEAN_TEXTS),
    }[kind]
    if not ok:
        raise ApiError(422, f"The value of custom attribute {key!r} is not a valid {kind}", key)
    return _BOOLEAN_TEXTS[value] if kind == "Boolean" and isinstance(value, str) else value


def _is_timestamp(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class ChartMogulApiReceiver(LoopbackServer):
    """Start with ``with ChartMogulApiReceiver(api_key=...) as api:``; ``api.url`` is the ``base_url``."""

    def __init__(
        self,
        account: Account | None = None,
        *,
        api_key: str | None = "test-api-key",
        port: int = 0,
        host: str = "127.0.0.1",
        faults: Faults | None = None,
        requests_per_second: float | None = REQUESTS_PER_SECOND,
        max_connections: int = MAX_CONNECTIONS,
        keep: bool = True,
        out: Path | None = None,
    ) -> None:
        self.account = account or Account()
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.calls: list[Call] = []
        self.received = self.rate_limited = self.too_many_connections = 0
        self.max_open = 0
        self._keep = keep
        # None takes any key (a receiver tried by hand); otherwise a wrong one is answered 401
        self._authorization = "Basic " + base64.b64encode(f"{api_key}:".encode()).decode() if api_key else None
        self._out: BinaryIO | None = out.open("ab") if out else None
        self._lock = threading.Lock()
        self._bucket = _Bucket(requests_per_second, requests_per_second) if requests_per_second else None
        self._max_connections = max_connections
        self._open = 0
        self._server = _QuietServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def writes(self) -> list[Call]:
        """Writes answered with 2xx, in the order they arrived."""
        with self._lock:
            return [c for c in self.calls if c.is_write and 200 <= c.status < 300]

    def lookups(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == "GET"]

    # -- drift: what someone else does to the account, for reconciliation to find ----------------------------

    def edit(self, uuid: str, key: str, value: Any) -> None:
        """Set a custom attribute on a customer or contact by hand, as someone in ChartMogul's app would."""
        with self._lock:
            self._custom(uuid)[key] = value

    def remove(self, uuid: str, key: str) -> None:
        """Take a custom attribute off a customer or contact."""
        with self._lock:
            self._custom(uuid).pop(key, None)

    def delete(self, uuid: str) -> None:
        """Delete a customer (with its contacts) or a contact."""
        with self._lock:
            if uuid in self.account.customers:
                self.account.delete_customer(uuid)
            else:
                self.account.delete_contact(uuid)

    def merge(self, from_uuid: str, into_uuid: str) -> None:
        """Merge one customer into another (``POST /v1/customers/merges``): the first is gone, its external
        ids find the second."""
        with self._lock:
            self.account.merge_customers(from_uuid, into_uuid)

    def retype(self, key: str, kind: str) -> None:
        """Make a customer attribute another type (as if deleted and created again by another integration),
        each value turned into that type's form of it."""
        with self._lock:
            self.account.customer_attributes[key] = kind
            for customer in self.account.customers.values():
                custom = customer["attributes"]["custom"]
                if key in custom and kind == "String":
                    custom[key] = json.dumps(custom[key]) if not isinstance(custom[key], str) else custom[key]

    def _custom(self, uuid: str) -> dict[str, Any]:
        record = self.account.customers[uuid]["attributes"] if uuid in self.account.customers else None
        custom = record["custom"] if record is not None else self.account.contacts[uuid]["custom"]
        return cast(dict[str, Any], custom)

    # -- the API --------------------------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: Mapping[str, str], body: Any) -> tuple[int, Any]:
        """The status and JSON answer of one authorised request within the limits."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise ApiError(404, "Not found")
        route = parts[1:]
        with self._lock:  # the account is shared by every connection's thread
            return self._route(method, route, query, body)

    def _route(self, method: str, route: list[str], query: Mapping[str, str], body: Any) -> tuple[int, Any]:
        account = self.account
        match method, route:
            case "GET", ["ping"]:
                return 200, {"data": "pong!"}
            case "GET", ["customers"]:
                filters = _filters(query, ("external_id", "email"))
                every = account.customers.values()  # a view: a page of a big account is not a copy of it
                return 200, _page(account.find("customer", **filters) if filters else every, query, legacy=True)
            case "GET", ["customers", "search"]:
                email = query.get("email")
                if not email:
                    raise ApiError(400, "email is required", "email")
                entries = account.find("customer", email=email)
                if not entries:
                    raise ApiError(404, "Customer not found")
                return 200, _page(entries, query, legacy=True)
            case "POST", ["customers", "merges"]:
                return 200, self._merge(body)
            case "GET", ["customers", customer]:
                return 200, self._customer(customer)
            case "DELETE", ["customers", customer]:
                self._customer(customer)
                account.delete_customer(customer)
                return 204, None
            case "GET", ["customers", customer, "contacts"]:
                self._customer(customer)
                return 200, _page(account.find("contact", customer_uuid=customer), query)
            case "GET", ["customers", customer, "attributes", "custom"]:
                return 200, {"custom": self._customer(customer)["attributes"]["custom"]}
            case "POST", ["customers", customer, "attributes", "custom"]:
                return 200, {"custom": self._add_attributes(self._customer(customer), body)}
            case "PUT", ["customers", customer, "attributes", "custom"]:
                return 200, {"custom": self._update_attributes(self._customer(customer), body)}
            case "GET", ["contacts"]:
                filters = _filters(query, ("email", "customer_external_id", "data_source_uuid"))
                return 200, _page(account.find("contact", **filters) if filters else account.contacts.values(), query)
            case "GET", ["contacts", contact]:
                return 200, self._contact(contact)
            case "PATCH", ["contacts", contact]:
                return 200, self._update_contact(self._contact(contact), body)
            case "DELETE", ["contacts", contact]:
                self._contact(contact)
                account.delete_contact(contact)
                return 204, None
        raise ApiError(404, "Not found")

    def _merge(self, body: Any) -> dict[str, Any]:
        def uuid_of(side: str) -> str:
            part = body.get(side) if isinstance(body, dict) else None
            found = part.get("customer_uuid") if isinstance(part, dict) else None
            if not isinstance(found, str):
                raise ApiError(400, f"{side}.customer_uuid is required", side)
            self._customer(found)
            return found

        self.account.merge_customers(uuid_of("from"), uuid_of("into"))
        return {}

    def _customer(self, customer: str) -> dict[str, Any]:
        if customer not in self.account.customers:
            raise ApiError(404, f"Customer {customer} not found", "uuid")
        return self.account.customers[customer]

    def _contact(self, contact: str) -> dict[str, Any]:
        if contact not in self.account.contacts:
            raise ApiError(404, f"Contact {contact} not found", "uuid")
        return self.account.contacts[contact]

    def _add_attributes(self, customer: dict[str, Any], body: Any) -> dict[str, Any]:
        items = body.get("custom") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(400, "custom must be a non-empty list of attributes", "custom")
        checked: dict[str, Any] = {}
        defined = dict(self.account.customer_attributes)
        for item in items:
            if not isinstance(item, dict) or not {"type", "key", "value"} <= set(item):
                raise ApiError(400, "each custom attribute needs a type, a key and a value", "custom")
            key, kind = item["key"], item["type"]
            if kind not in TYPES:
                raise ApiError(422, f"Custom attribute type {kind!r} is not one of {', '.join(TYPES)}", key)
            if not isinstance(key, str) or not _KEY.match(key):
                raise ApiError(422, f"Custom attribute key {key!r} may hold letters, digits and underscores only", key)
            if defined.get(key, kind) != kind:
                raise ApiError(422, f"Custom attribute {key!r} already exists with type {defined[key]}", key)
            checked[key] = check_value(kind, item["value"], key)
            defined[key] = kind
        self.account.customer_attributes = defined
        customer["attributes"]["custom"].update(checked)
        return dict(customer["attributes"]["custom"])

    def _update_attributes(self, customer: dict[str, Any], body: Any) -> dict[str, Any]:
        values = body.get("custom") if isinstance(body, dict) else None
        if not isinstance(values, dict) or not values:
            raise ApiError(400, "custom must be a non-empty object of key: value", "custom")
        checked: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in self.account.customer_attributes:
                raise ApiError(422, f"Custom attribute {key!r} does not exist; add it first", key)
            value = raw.get("value") if isinstance(raw, dict) else raw
            checked[key] = check_value(self.account.customer_attributes[key], value, key)
        customer["attributes"]["custom"].update(checked)
        return dict(customer["attributes"]["custom"])

    def _update_contact(self, contact: dict[str, Any], body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        custom = body.get("custom", [])
        if not isinstance(custom, list) or not all(isinstance(i, dict) and "key" in i for i in custom):
            raise ApiError(422, "custom must be a list of {key, value}", "custom")
        for item in custom:
            if not isinstance(item["key"], str) or not _KEY.match(item["key"]):
                raise ApiError(422, f"Custom attribute key {item['key']!r} is not valid", "custom")
            contact["custom"][item["key"]] = item.get("value")
        for name in ("first_name", "last_name", "title", "email", "phone", "linked_in", "twitter", "notes"):
            if name in body:
                self.account.set_contact_field(contact, name, body[name])
        return dict(contact)

    # -- HTTP -------------------------------------------------------------------------------------------------

    def _record(self, method: str, path: str, query: Mapping[str, str], body: Any, status: int) -> None:
        call = Call(method, path, dict(query), body, status, time.time())
        with self._lock:
            self.received += 1
            if self._keep:
                self.calls.append(call)
            if self._out and call.is_write:
                line = {"method": method, "path": path, "status": status, "at": call.at, "body": body}
                self._out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                self._out.flush()

    def authorised(self, header: str | None) -> bool:
        if self._authorization is not None:
            return header == self._authorization
        return bool(header and header.startswith("Basic ") and len(header) > len("Basic "))

    def _limited(self) -> tuple[int, str] | None:
        """429 beyond the rate, 503 beyond the parallel connections, as ChartMogul answers them."""
        with self._lock:
            if self._open > self._max_connections:
                self.too_many_connections += 1
                return 503, f"Too many parallel connections: at most {self._max_connections}"
            if self._bucket is not None and not self._bucket.take():
                self.rate_limited += 1
                return 429, "Rate limit exceeded"
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def setup(self) -> None:
                super().setup()
                with api._lock:
                    api._open += 1
                    api.max_open = max(api.max_open, api._open)

            def finish(self) -> None:
                with api._lock:
                    api._open -= 1
                super().finish()

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

            def _handle(self, method: str) -> None:
                split = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(split.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._error(method, split.path, query, None, ApiError(400, "The body is not JSON"))
                    return
                if not api.authorised(self.headers.get("Authorization")):
                    self._error(method, split.path, query, body, ApiError(401, "No valid API key provided"))
                    return
                limited = api._limited()
                if limited is not None:
                    self._error(method, split.path, query, body, ApiError(*limited))
                    self.close_connection = limited[0] == 503  # the connection over the limit is not kept
                    return
                status, headers, delay = api.faults_for(method, split.path, body)
                if delay:
                    time.sleep(delay)
                if status == 0:
                    api._record(method, split.path, query, body, 0)
                    self.close_connection = True
                    return
                if status != 200:
                    self._error(method, split.path, query, body, ApiError(status, f"injected {status}"), headers)
                    return
                try:
                    status, answer = api.answer(method, split.path, query, body)
                except ApiError as error:
                    self._error(method, split.path, query, body, error)
                    return
                api._record(method, split.path, query, body, status)
                self.answer(status, {}, b"" if answer is None else json.dumps(answer).encode())

            def _error(
                self,
                method: str,
                path: str,
                query: Mapping[str, str],
                body: Any,
                error: ApiError,
                headers: Mapping[str, str] | None = None,
            ) -> None:
                api._record(method, path, query, body, error.status)
                payload = {"code": error.status, "message": error.message, "param": error.param}
                self.answer(error.status, headers or {}, json.dumps(payload).encode())

        return Handler

    def faults_for(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], float]:
        """The injected answer for one request: (status, headers, delay); 200 means the API's own answer."""
        faults = self.faults
        decided = hooked(faults, {"method": method, "path": path, "body": body})
        if decided is not None:
            return decided
        with self._lock:
            roll_drop, roll_error = self._rng.random(), self._rng.random()
        if roll_drop < faults.drop_rate:
            return 0, {}, faults.delay
        if roll_error < faults.error_rate:
            return faults.error_statuses[0] if faults.error_statuses else 500, {}, faults.delay
        return 200, {}, faults.delay


def _filters(query: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    return {name: query[name] for name in names if name in query}


def _page(entries: Collection[dict[str, Any]], query: Mapping[str, str], *, legacy: bool = False) -> dict[str, Any]:
    """One cursor page: ``cursor`` is the offset of the next page, opaque to clients. ``per_page`` at most 200,
    as ChartMogul's; a list of customers also carries the older paging fields (``total_pages``…)."""
    try:
        size = min(int(query.get("per_page") or PAGE_SIZE), PAGE_SIZE)
        start = int(base64.b64decode(query["cursor"]).decode()) if query.get("cursor") else 0
    except ValueError:
        raise ApiError(400, "per_page or cursor is not valid", "cursor") from None
    if size < 1:
        raise ApiError(400, "per_page must be at least 1", "per_page")
    page = list(islice(entries, start, start + size))
    more = start + size < len(entries)
    answer: dict[str, Any] = {
        "entries": page,
        "has_more": more,
        "cursor": base64.b64encode(str(start + size).encode()).decode() if more else None,
    }
    if legacy:
        pages = max(1, -(-len(entries) // size))
        answer.update({"per_page": size, "page": start // size + 1, "current_page": start // size + 1,
                       "total_pages": pages})  # fmt: skip
    return answer
