"""Reading ChartMogul back, through the destination's own HTTP engine (its rate budget, connection cap and
retries): every record of the account through the cursor-paged list endpoints (``GET /v1/customers``,
``GET /v1/contacts``, 200 a page), or the job's records one by one (``GET /v1/customers/{uuid}``…) when
that costs fewer requests. Only the records the job's subjects need are kept: memory follows the job, not
the account."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from sync.destinations.http import HttpDestination
from sync.errors import DeliveryError, SyncError
from sync.reconcile.compare import Record

PER_PAGE = 200  # the most ChartMogul's list endpoints give a page
READS = ("auto", "list", "each")


class ReadError(SyncError):
    """An answer that is not the documented shape, or a key that is refused: nothing can be judged."""


@dataclass
class Reading:
    """What was read: the records kept, whether every record of the account was seen (``complete``), the
    uuids proven gone one by one (``absent``), and what it cost."""

    how: str
    records: dict[str, Record] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    complete: bool = False
    requests: int = 0
    pages: int = 0
    cut_short: str | None = None  # why the reading stopped before it was done


@dataclass(frozen=True)
class Wanted:
    """What the job's subjects need: the uuids they are matched to, and the external ids or emails of those
    that had no record (to see whether one has appeared)."""

    uuids: Set[str]
    match_values: Set[str]
    match: str  # external_id or email

    def keeps(self, record: Record) -> bool:
        value = record.external_id if self.match == "external_id" else record.email
        return record.uuid in self.uuids or (value is not None and value in self.match_values)

    @property
    def count(self) -> int:
        return len(self.uuids) + len(self.match_values)


class Reader:
    """Reads one job's records from ChartMogul with ``destination``'s engine."""

    def __init__(self, destination: HttpDestination, base_url: str, target: str, stop: threading.Event) -> None:
        self.destination, self.base, self.target, self.stop = destination, base_url.rstrip("/"), target, stop
        self._path = urlsplit(self.base).path

    async def read(self, wanted: Wanted, how: str) -> Reading:
        """Read what ``wanted`` needs. ``how``: ``list``, ``each``, or ``auto``: the first page of the list
        tells how many pages the account has, and the records are then read one by one when that is fewer
        requests."""
        reading = Reading("list" if how == "auto" else how)
        if how == "each":
            await self._each(wanted, reading)
            return reading
        cursor: str | None = None
        try:
            while True:
                if self.stop.is_set():
                    reading.cut_short = "stopped"
                    return reading
                page = await self._page(cursor, reading)
                entries, more, cursor, total = self._entries(page)
                for entry in entries:
                    record = self._record(entry, "list")
                    if wanted.keeps(record):
                        reading.records[record.uuid] = record
                if not more:
                    reading.complete = True
                    return reading
                if how == "auto" and reading.pages == 1 and total is not None and wanted.count < total - 1:
                    reading.how = "each"  # one by one costs fewer requests than the pages left
                    await self._each(wanted, reading)
                    return reading
        except DeliveryError as exc:
            self._refused(exc)
            reading.cut_short = exc.reason
            return reading

    async def _page(self, cursor: str | None, reading: Reading) -> Any:
        query = f"per_page={PER_PAGE}" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
        response, attempts = await self.destination.exchange("GET", f"{self.base}/{self.target}s?{query}")
        reading.requests += attempts
        reading.pages += 1
        return self._json(response.content, f"GET {self._path}/{self.target}s")

    async def _each(self, wanted: Wanted, reading: Reading) -> None:
        """The matched records one by one (404: gone), and a lookup for each subject that had none."""
        lanes = asyncio.Semaphore(self.destination.capabilities.max_connections)
        todo: list[tuple[str, str]] = [("uuid", u) for u in sorted(wanted.uuids) if u not in reading.records]
        todo += [("match", v) for v in sorted(wanted.match_values)]
        problems: list[DeliveryError] = []

        async def one(kind: str, value: str) -> None:
            async with lanes:
                if self.stop.is_set() or problems:
                    return
                try:
                    if kind == "uuid":
                        await self._one(value, reading)
                    else:
                        await self._look_up(value, wanted, reading)
                except DeliveryError as exc:
                    problems.append(exc)

        await asyncio.gather(*(one(kind, value) for kind, value in todo))
        if problems:
            self._refused(problems[0])
            reading.cut_short = problems[0].reason
        elif self.stop.is_set():
            reading.cut_short = "stopped"
        else:
            reading.complete = False  # one by one proves what it read, never that nothing else exists

    async def _one(self, uuid: str, reading: Reading) -> None:
        path = f"/{self.target}s/{quote(uuid, safe='')}"
        response, attempts = await self.destination.exchange("GET", self.base + path, expect=frozenset({404}))
        reading.requests += attempts
        if response.status_code == 404:
            reading.absent.add(uuid)
            return
        record = self._record(self._json(response.content, f"GET {self._path}/{self.target}s/{{uuid}}"), "get")
        reading.records[record.uuid] = record

    async def _look_up(self, value: str, wanted: Wanted, reading: Reading) -> None:
        """The record with ``value`` as its external id or email, if one has appeared."""
        value_q = quote(value, safe="")
        if self.target == "customer":
            path = (
                f"/customers?external_id={value_q}"
                if wanted.match == "external_id"
                else f"/customers/search?email={value_q}"
            )
        else:
            column = "customer_external_id" if wanted.match == "external_id" else "email"
            path = f"/contacts?{column}={value_q}"
        response, attempts = await self.destination.exchange("GET", self.base + path, expect=frozenset({404}))
        reading.requests += attempts
        if response.status_code == 404:
            return
        entries, _, _, _ = self._entries(self._json(response.content, f"GET {self._path}{path.split('?')[0]}"))
        for entry in entries:
            record = self._record(entry, "lookup")
            if wanted.keeps(record):
                reading.records[record.uuid] = record

    def _json(self, content: bytes, endpoint: str) -> Any:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ReadError(f"{endpoint} answered with something that is not JSON") from None

    def _entries(self, page: Any) -> tuple[list[Mapping[str, Any]], bool, str | None, int | None]:
        endpoint = f"GET {self._path}/{self.target}s"
        if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            raise ReadError(f"{endpoint} answered without a list of entries")
        more = page.get("has_more")
        if not isinstance(more, bool):
            raise ReadError(f"{endpoint} answered without has_more (true or false)")
        cursor = page.get("cursor")
        if more and not isinstance(cursor, str):
            raise ReadError(f"{endpoint} said it has more but gave no cursor")
        total = page.get("total_pages")
        return page["entries"], more, cursor, total if isinstance(total, int) and not isinstance(total, bool) else None

    def _record(self, entry: Any, source: str) -> Record:
        endpoint = f"GET {self._path}/{self.target}s" + ("/{uuid}" if source == "get" else "")
        if not isinstance(entry, dict) or not isinstance(entry.get("uuid"), str):
            raise ReadError(f"{endpoint} answered with a {self.target} without a uuid")
        if self.target == "customer":
            attributes = entry.get("attributes")
            custom = attributes.get("custom") if isinstance(attributes, dict) else None
            external_id = entry.get("external_id")
        else:
            custom = entry.get("custom", {})
            external_id = entry.get("customer_external_id")
        if not isinstance(custom, dict):
            where = "attributes.custom" if self.target == "customer" else "custom"
            raise ReadError(f"{endpoint} answered with a {self.target} whose {where} is not an object")
        email = entry.get("email")
        return Record(
            entry["uuid"],
            external_id if isinstance(external_id, str) else None,
            email if isinstance(email, str) else None,
            custom,
        )

    def _refused(self, exc: DeliveryError) -> None:
        """A key ChartMogul refuses stops the reading at once: nothing read can be trusted to be complete."""
        if exc.http_status in (401, 403):
            raise ReadError(
                f"ChartMogul refused the API key (HTTP {exc.http_status}): check the job's api_key"
            ) from None
