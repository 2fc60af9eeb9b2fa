"""ChartMogul's REST API: each update becomes typed custom attributes on the subject's ChartMogul customer or
contact, found by its external id or email and remembered.

- **Types.** Audience keys are Boolean attributes (``true`` on entry, ``false`` on exit). A trait's type comes
  from its value: Boolean, Integer, Decimal, Timestamp (an ISO 8601 date or time) or String (at most 255
  characters). An attribute keeps the type it was created with; an update whose value no longer fits it is
  refused, naming the key (ChartMogul cannot change an attribute's type).
- **Matching.** The record is looked up once (``GET /customers?external_id=``, ``/customers/search?email=``,
  ``/contacts?customer_external_id=`` or ``/contacts?email=``) and its uuid kept in the state store; a 404 on
  a kept uuid looks it up again. A subject with no record is *unmatched*: not an error, not acknowledged,
  tried again by later runs.
- **Writes.** One request per subject with all its changed keys: ``PUT /customers/{uuid}/attributes/custom``
  when every key already exists, else ``POST`` (which adds them with their types; ChartMogul requires that
  before a ``PUT``); ``PATCH /contacts/{uuid}`` with ``custom`` for contacts. Lookups and writes share one
  rate limit and one set of connections (ChartMogul's 40 requests/s and 20 connections per account).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from sync.calls.group import GROUP_STANDARD_TRAITS
from sync.calls.identify import STANDARD_TRAITS, enriched_traits
from sync.clock import Clock
from sync.config import ChartMogulApiConfig
from sync.config.values import CHARTMOGUL_MAX_CONNECTIONS, CHARTMOGUL_REQUESTS_PER_SECOND
from sync.destinations.base import Capabilities, DeliveryResult, Outgoing, RemoteIds
from sync.destinations.http import HttpDestination, Request, encode_json
from sync.errors import DeliveryError, PermanentDeliveryError
from sync.redact import public_label

MAX_BODY_BYTES = 32 * 1024
MAX_STRING = 255  # ChartMogul: a String attribute holds at most 255 characters

CAPABILITIES = Capabilities(
    call_types=frozenset({"identify", "group"}),
    calls_per_request=1,
    bytes_per_request=MAX_BODY_BYTES,
    bytes_per_call=MAX_BODY_BYTES,
    requests_per_second=CHARTMOGUL_REQUESTS_PER_SECOND,
    max_connections=CHARTMOGUL_MAX_CONNECTIONS,
)

# An ISO 8601 date, or date and time with an optional offset: what ChartMogul's Timestamp takes.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")


def attribute_type(value: Any) -> str | None:
    """ChartMogul's type for ``value``; None for null; ValueError for what no attribute can hold."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "Decimal"
    if isinstance(value, str):
        if TIMESTAMP.match(value):
            return "Timestamp"
        if len(value) > MAX_STRING:
            raise ValueError(f"is {len(value)} characters; a String attribute holds at most {MAX_STRING}")
        return "String"
    raise ValueError(f"is a {'list' if isinstance(value, list) else 'JSON object'}, which no attribute type holds")


def fits(kind: str, value: Any) -> Any:
    """``value`` as an attribute of type ``kind`` takes it, or ValueError. An integer fits a Decimal, a
    whole decimal an Integer, and any ISO date or time a String attribute too."""
    found = attribute_type(value)
    if found is None or found == kind:
        return value
    if kind == "Decimal" and found == "Integer":
        return value
    if kind == "Integer" and found == "Decimal" and float(value).is_integer():
        return int(value)
    if kind == "String" and found == "Timestamp":
        return value
    raise ValueError(f"its values changed type: ChartMogul holds it as {_a(kind)} attribute, this value is {_a(found)}")


def lookup_path(target: str, match: str, value: str) -> str:
    """The request (path and query, under the API's base) that finds a ``target`` (customer or contact) by
    its external id or email: ``GET /customers?external_id=`` or ``/customers/search?email=`` (404 when none),
    ``/contacts?customer_external_id=`` or ``/contacts?email=``."""
    escaped = quote(value, safe="")
    if target == "customer":
        return f"/customers?external_id={escaped}" if match == "external_id" else f"/customers/search?email={escaped}"
    column = "customer_external_id" if match == "external_id" else "email"
    return f"/contacts?{column}={escaped}"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


@dataclass(frozen=True)
class Write:
    """One subject's write: its changed keys with their values and types, and how to find its record."""

    message: Outgoing
    values: Mapping[str, Any]
    types: Mapping[str, str]  # the type of each non-null value
    kinds: Mapping[str, str]  # key → "audience" or "trait", for messages
    match_value: str | None
    email: str | None


@dataclass(frozen=True)
class ApiRequest(Request):
    write: Write | None = field(default=None)


def _computations(call: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((call.get("context") or {}).get("personas", {}).get("computations", []))


def remote_scope(settings: ChartMogulApiConfig) -> RemoteIds:
    """Record ids are kept per target and way of matching; a subject with none is looked up again after
    ``rematch_after``."""
    return RemoteIds(f"{settings.target}:{settings.match}", settings.rematch_after)


class ChartMogulApiTarget:
    """Requests for ChartMogul's API: one subject's changed keys each, typed; no body is final until the
    record's uuid is known, so ``requests`` carries the values and the destination shapes the body."""

    def __init__(self, settings: ChartMogulApiConfig) -> None:
        self.capabilities = replace(CAPABILITIES, remote_ids=remote_scope(settings))
        self.settings = settings
        self.base = settings.base_url.rstrip("/")
        self.url = self.base
        key = settings.api_key.get_secret_value()
        token = base64.b64encode(f"{key}:".encode()).decode()  # basic auth: the key as the user, no password
        self.secrets = [key, token]
        self.label = f"ChartMogul's API at {public_label(self.base)}"
        self.headers: Mapping[str, str] = {"Authorization": f"Basic {token}"}

    def requests(self, messages: Iterator[Outgoing], clock: Clock) -> Iterator[Request]:
        for message in messages:
            sent_at = clock()
            try:
                write = self.write(message)
            except PermanentDeliveryError as exc:
                yield ApiRequest((message,), refused=exc.reason)
                continue
            yield ApiRequest((message,), b"", sent_at, write=write)

    def write(self, message: Outgoing) -> Write:
        call = message.calls[0]
        traits: Mapping[str, Any] = call.get("traits") or {}
        keys = {c["computation_key"]: c["computation_class"] for c in _computations(call)}
        standard = GROUP_STANDARD_TRAITS if call.get("type") == "group" else STANDARD_TRAITS
        extra = enriched_traits(traits, keys, standard)  # the job's enriched profile columns
        kinds = {**keys, **dict.fromkeys(extra, "enriched trait")}
        values = {key: traits.get(key) for key in kinds}
        types: dict[str, str] = {}
        for key, kind in kinds.items():
            try:
                found = attribute_type(values[key])
            except ValueError as exc:
                raise PermanentDeliveryError(f"rejected before sending: {kind} {key!r} {exc}") from None
            if found is not None:
                types[key] = "Boolean" if kind == "audience" else found
        email = traits.get("email") if isinstance(traits.get("email"), str) else None
        match_value = message.user_id if self.settings.match == "external_id" else email
        return Write(message, values, types, kinds, match_value, email)


class ChartMogulApi(HttpDestination):
    """The delivery engine with a lookup before each write and typed custom attributes.

    ``attribute_types`` are the attributes this job created before (key → type), read from the state store;
    the ones a run creates are added as their writes are acknowledged and come back on each result.
    """

    target: ChartMogulApiTarget

    def __init__(self, target: ChartMogulApiTarget, client: httpx.AsyncClient, **kwargs: Any) -> None:
        super().__init__(target, client, target.settings, **kwargs)
        self._creating: dict[str, asyncio.Event] = {}  # new attributes whose first write is in flight
        self._base_path = urlsplit(target.base).path  # "/v1": requests are recorded by path, without the host

    async def deliver(self, request: Request) -> list[DeliveryResult]:
        write = request.write if isinstance(request, ApiRequest) else None
        if write is None:
            return await super().deliver(request)
        sent: list[tuple[str, str, str | None]] = []
        results = await self._deliver_write(request, write, sent)
        return [replace(result, requests=tuple(sent)) for result in results] if sent else results

    async def _deliver_write(
        self, request: Request, write: Write, sent: list[tuple[str, str, str | None]]
    ) -> list[DeliveryResult]:
        """The lookup (when the record is not known) and the writes of one subject; ``sent`` gets each
        request as it is made (method, path, body)."""
        remote_id = write.message.remote_id
        if remote_id == "":  # found to have no record lately: not looked up again yet
            return [self._unmatched(request, write, 0, lately=True)]
        await self._after_creations(write)
        attempts, status, succeeded = 0, 200, False
        created: tuple[tuple[str, str], ...] = ()
        try:
            writes, new = self._writes(write)
            created = tuple(new.items())
            if self.target.settings.target == "customer":  # a customer attribute is added once, then updated
                for key in new:
                    self._creating.setdefault(key, asyncio.Event())
            if remote_id is None:
                remote_id, attempts = await self._look_up(write, attempts, sent)
                if remote_id is None:
                    return [self._unmatched(request, write, attempts)]
            for method, body in writes:  # nothing to write when every changed value is a null never held
                status, attempts = await self._write(method, remote_id, body, attempts, sent)
                if status == 404:  # the kept uuid is gone (deleted or merged): find the record again
                    remote_id, attempts = await self._look_up(write, attempts, sent)
                    if remote_id is None:
                        return [self._unmatched(request, write, attempts)]
                    status, attempts = await self._write(method, remote_id, body, attempts, sent)
                    if status == 404:
                        raise PermanentDeliveryError(f"HTTP 404: the {self.target.settings.target} vanished")
            succeeded = True
        except DeliveryError as exc:
            return self._failed(request, exc, exc.attempts or attempts)
        finally:
            self._created(dict(created), succeeded=succeeded)
        return [self._result(request, remote_id, attempts, status, created)]

    async def _after_creations(self, write: Write) -> None:
        """Wait while another subject's write creates one of this write's new attributes: each attribute is
        added (POST, with its type) once, and updated (PUT) after that."""
        while waiting := [
            self._creating[k] for k in write.values if k in self._creating and k not in self.attribute_types
        ]:
            await asyncio.gather(*(event.wait() for event in waiting))

    def _created(self, new: dict[str, str], *, succeeded: bool) -> None:
        """The first write of ``new`` ended: known from now on when it succeeded; its waiters go on either way
        (after a failure, the next of them adds the attribute itself)."""
        if succeeded:
            self.attribute_types.update(new)
        for key in new:
            event = self._creating.pop(key, None)
            if event is not None:
                event.set()

    def _writes(self, write: Write) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """The requests of a write, and the attributes it creates (key → type); PermanentDeliveryError when a
        value no longer fits its attribute.

        Contacts: one PATCH. Customers: one PUT when every key exists; else a POST adding the new ones with
        their types — and, for the rare first subject that carries both new and existing keys, a PUT for the
        existing ones after it, since only a POST says a type and only a PUT is documented for an update."""
        known = self.attribute_types
        values: dict[str, Any] = {}
        for key, value in write.values.items():
            if key in known:
                try:
                    values[key] = fits(known[key], value)
                except ValueError as exc:
                    raise PermanentDeliveryError(
                        f"rejected before sending: {write.kinds[key]} {key!r}: {exc}"
                    ) from None
            elif value is not None:
                values[key] = value
        new = {k: write.types[k] for k in values if k not in known}
        bodies: list[tuple[str, dict[str, Any]]] = []
        if not values:
            pass
        elif self.target.settings.target == "contact":
            bodies.append(("PATCH", {"custom": [{"key": k, "value": v} for k, v in values.items()]}))
        else:
            source = self.target.settings.source
            if new:
                added = [{"type": new[k], "key": k, "value": values[k], "source": source} for k in new]
                bodies.append(("POST", {"custom": added}))
            existing = {k: v for k, v in values.items() if k not in new}
            if existing:
                bodies.append(("PUT", {"custom": existing}))
        encoded = [(method, encode_json(body)) for method, body in bodies]
        for _, body in encoded:
            if len(body) > MAX_BODY_BYTES:
                raise PermanentDeliveryError(
                    f"rejected before sending: body is {len(body)} bytes, over {MAX_BODY_BYTES}"
                )
        return encoded, new

    async def _look_up(
        self, write: Write, attempts: int, sent: list[tuple[str, str, str | None]]
    ) -> tuple[str | None, int]:
        """The uuid of the subject's record, or None when ChartMogul has none."""
        if not write.match_value:
            return None, attempts
        settings = self.target.settings
        path = lookup_path(settings.target, settings.match, write.match_value)
        sent.append(("GET", self._base_path + path, None))
        response, tries = await self.exchange("GET", self.target.base + path, expect=frozenset({404}))
        attempts += tries
        if response.status_code == 404:
            return None, attempts
        try:
            entries = [e for e in response.json().get("entries") or [] if isinstance(e, dict) and e.get("uuid")]
        except (ValueError, AttributeError):
            error = PermanentDeliveryError(f"HTTP {response.status_code} to a lookup, with no list of entries")
            error.attempts = attempts
            raise error from None
        if settings.target == "contact" and write.email and len(entries) > 1:  # the contact with the same email
            entries = [e for e in entries if e.get("email") == write.email] or entries
        return (str(entries[0]["uuid"]) if entries else None), attempts

    async def _write(
        self, method: str, remote_id: str, body: bytes, attempts: int, sent: list[tuple[str, str, str | None]]
    ) -> tuple[int, int]:
        record = quote(remote_id, safe="")
        if self.target.settings.target == "contact":
            path = f"/contacts/{record}"
        else:
            path = f"/customers/{record}/attributes/custom"
        sent.append((method, self._base_path + path, body.decode()))
        response, tries = await self.exchange(method, self.target.base + path, body, expect=frozenset({404}))
        return response.status_code, attempts + tries

    def _result(
        self, request: Request, remote_id: str, attempts: int, status: int, created: tuple[tuple[str, str], ...]
    ) -> DeliveryResult:
        message = request.messages[0]
        return DeliveryResult(
            message.user_id,
            message.message_id,
            True,
            attempts,
            request.sent_at,
            self._clock(),
            status,
            remote_id=remote_id,
            created=created,
        )

    def _unmatched(self, request: Request, write: Write, attempts: int, lately: bool = False) -> DeliveryResult:
        settings = self.target.settings
        what = "external id" if settings.match == "external_id" else "email"
        if not write.match_value:
            reason = f"no {what} to find its ChartMogul {settings.target} by"
        elif lately:
            reason = (
                f"no ChartMogul {settings.target} had its {what} when last looked up; "
                f"looked up again {settings.rematch_after} after that"
            )
        else:
            reason = f"no ChartMogul {settings.target} has its {what}"
        message = request.messages[0]
        return DeliveryResult(
            message.user_id,
            message.message_id,
            False,
            attempts,
            request.sent_at if attempts else None,
            self._clock(),
            None,
            reason,
            unmatched=True,
        )
