"""Reading ChartMogul back, through the destination's own HTTP engine (its rate budget, connection cap and
retries): every record of the account through the cursor-paged list endpoints (``GET /v1/customers``,
``GET /v1/contacts``, 200 a page), or the job's records one by one (``GET /v1/customers/{uuid}``…) when
that costs fewer requests. Only the records the job's subjects need are kept: memory follows the job, not
the account."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from sync.destinations.chartmogul_api import lookup_path
from sync.destinations.http import HttpDestination
from sync.errors import DeliveryError, SyncError
from sync.reconcile.compare import Comparer, Record

PER_PAGE = 200  # the most ChartMogul's list endpoints give a page
READS = ("auto", "list", "each")


class ReadError(SyncError):
    """An answer that is not the documented shape, or a key that is refused: nothing can be judged."""


@dataclass
class Reading:
    """How the reading went: whether every record of the account was seen (``complete``), and what it
    cost. The records themselves go to the ``Comparer`` as they are read."""

    how: str
    complete: bool = False
    requests: int = 0
    pages: int = 0
    cut_short: str | None = None  # why the reading stopped before it was done


class Reader:
    """Reads one job's records from ChartMogul with ``destination``'s engine, into a ``Comparer``."""

    def __init__(self, destination: HttpDestination, base_url: str, target: str, stop: threading.Event) -> None:
        self.destination, self.base, self.target, self.stop = destination, base_url.rstrip("/"), target, stop
        self._path = urlsplit(self.base).path

    async def read(self, comparer: Comparer, how: str) -> Reading:
        """Read what ``comparer``'s subjects need. ``how``: ``list``, ``each``, or ``auto``: the first page of
        the list tells how many pages the account has, and the rest is then read record by record when that
        takes fewer requests."""
        reading = Reading("list" if how == "auto" else how)
        try:
            if how == "each":
                await self._each(comparer, reading)
                return reading
            cursor: str | None = None
            while True:
                if self.stop.is_set():
                    reading.cut_short = "stopped"
                    return reading
                page = await self._page(cursor, reading)
                entries, more, cursor, total = self._entries(page, f"GET {self._path}/{self.target}s")
                for entry in entries:
                    comparer.see(self._record(entry, "list"))
                if not more:
                    reading.complete = True
                    return reading
                needed = len(comparer.by_uuid) - len(comparer.seen) + len(comparer.by_value)
                if how == "auto" and reading.pages == 1 and total is not None and needed < total - 1:
                    reading.how = "each"  # one by one takes fewer requests than the pages left
                    await self._each(comparer, reading)
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

    async def _each(self, comparer: Comparer, reading: Reading) -> None:
        """The job's records not read yet one by one (404: gone), and a lookup for each subject that had
        none; DeliveryError (the first) when one failed past its retries."""
        lanes = asyncio.Semaphore(self.destination.capabilities.max_connections)
        todo = [("uuid", u) for u in sorted(comparer.by_uuid) if u not in comparer.seen]
        todo += [("match", v) for v in sorted(comparer.by_value)]
        problems: list[DeliveryError] = []

        async def one(kind: str, value: str) -> None:
            async with lanes:
                if self.stop.is_set() or problems:
                    return
                try:
                    if kind == "uuid":
                        await self._one(value, comparer, reading)
                    else:
                        await self._look_up(value, comparer, reading)
                except DeliveryError as exc:
                    problems.append(exc)

        await asyncio.gather(*(one(kind, value) for kind, value in todo))
        if problems:
            raise problems[0]
        if self.stop.is_set():
            reading.cut_short = "stopped"

    async def _one(self, uuid: str, comparer: Comparer, reading: Reading) -> None:
        path = f"/{self.target}s/{quote(uuid, safe='')}"
        response, attempts = await self.destination.exchange("GET", self.base + path, expect=frozenset({404}))
        reading.requests += attempts
        if response.status_code == 404:
            comparer.absent.add(uuid)
            return
        comparer.see(self._record(self._json(response.content, f"GET {self._path}/{self.target}s/{{uuid}}"), "get"))

    async def _look_up(self, value: str, comparer: Comparer, reading: Reading) -> None:
        """The record with ``value`` as its external id or email, if one has appeared."""
        path = lookup_path(self.target, comparer.match, value)  # the lookup a run makes
        response, attempts = await self.destination.exchange("GET", self.base + path, expect=frozenset({404}))
        reading.requests += attempts
        if response.status_code == 404:
            return
        endpoint = f"GET {self._path}{path.split('?')[0]}"
        entries, _, _, _ = self._entries(self._json(response.content, endpoint), endpoint)
        for entry in entries:
            comparer.see(self._record(entry, "lookup"))

    def _json(self, content: bytes, endpoint: str) -> Any:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ReadError(f"{endpoint} answered with something that is not JSON") from None

    def _entries(self, page: Any, endpoint: str) -> tuple[list[Mapping[str, Any]], bool, str | None, int | None]:
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
