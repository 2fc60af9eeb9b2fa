"""``validate --connect``: what a run will meet, checked without writing anything anywhere.

- the state store: it can be reached, and its schema is this version's (or only needs migrating);
- each warehouse: it can be reached, ``source.session`` runs, and every query runs wrapped so that it returns
  no rows, with the columns its kind of query must return;
- each destination: ChartMogul's API answers ``GET /v1/ping`` with the job's key; the webhook's and Segment's
  host resolves, accepts a connection and completes a TLS handshake.

A SQLite file that does not exist is not created: it is reported (a warehouse) or noted (a state store that
the first run creates).
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sync.config import ChartMogulApiConfig, ChartMogulWebhookConfig, JobConfig, SegmentConfig, redact_url
from sync.errors import SourceError
from sync.model import SUBJECTS
from sync.redact import public_label
from sync.sources import driver_reason, warehouse_engine
from sync.store.schema import current_revision, head_revision, known_revisions

# How long one check may take (a connection, a query planned, a ping).
TIMEOUT_S = 10.0


@dataclass
class Findings:
    """What the checks found: problems (the run would fail) and notes (worth knowing, not wrong)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_store(url: str) -> Findings:
    found = Findings()
    where = f"state store {redact_url(url)}"
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.exists():
        found.notes.append(f"{where}: does not exist yet; the first run (or `audience-sync migrate`) creates it")
        return found
    engine = create_engine(url, connect_args=_connect_timeout(url))
    try:
        current = current_revision(engine)
        head = head_revision(engine)
        if current == head:
            found.notes.append(f"{where}: reachable, schema up to date (revision {head})")
        elif current is not None and current not in known_revisions(engine):
            found.problems.append(
                f"{where}: its schema (revision {current}) is newer than this version of audience-sync knows; "
                "upgrade audience-sync"
            )
        else:
            found.notes.append(
                f"{where}: reachable; its schema is at revision {current or 'none'}, this version's is {head}: "
                "the next run (or `audience-sync migrate`) upgrades it"
            )
    except SQLAlchemyError as exc:
        found.problems.append(f"{where}: cannot connect: {driver_reason(exc)}")
    finally:
        engine.dispose()
    return found


def check_job(job: JobConfig, client: httpx.Client) -> Findings:
    found = Findings()
    if job.source.url:
        _check_warehouse(job, found)
    _check_destination(job, client, found)
    return found


def _check_warehouse(job: JobConfig, found: Findings) -> None:
    url = job.source.url or ""
    where = f"job {job.name!r}: the warehouse {job.source.redacted_url()}"
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.exists():
        found.problems.append(f"{where}: no such file: {sqlite_file}")
        return
    queries = list(_queries(job))
    engine = warehouse_engine(job)
    try:
        with engine.connect() as connection:
            for label, sql, needed, allowed in queries:
                problem = _check_query(connection, sql, needed, allowed)
                if problem:
                    found.problems.append(f"job {job.name!r}: {label}: {problem}")
        found.notes.append(f"{where}: reachable; {len(queries)} queries checked")
    except SourceError as exc:  # source.session failed
        found.problems.append(str(exc))
    except SQLAlchemyError as exc:
        found.problems.append(f"{where}: cannot connect: {driver_reason(exc)}")
    finally:
        engine.dispose()


def _queries(job: JobConfig) -> Iterator[tuple[str, str, tuple[str, ...], tuple[str, ...] | None]]:
    """Each query of the job: its label, its SQL, the columns it must return, and the only ones it may
    return (None: any others too)."""
    subject = SUBJECTS[job.subject]
    ids = (subject.id_column,)
    if job.source.profiles:
        yield "source.profiles", job.source.profiles, ids, (*subject.profile_columns, *job.enrich)
    for index, audience in enumerate(job.audiences):
        if audience.query is not None:
            yield f"audiences[{index}] ({audience.name})", audience.query, ids, None
    for index, trait in enumerate(job.traits):
        if trait.query is not None:
            yield f"traits[{index}] ({trait.name})", trait.query, (*ids, "value"), (*ids, "value")


def _check_query(
    connection: Connection, sql: str, needed: tuple[str, ...], allowed: tuple[str, ...] | None
) -> str | None:
    """Run ``sql`` so that it returns no rows; what is wrong with it or its columns, if anything."""
    probe = f"SELECT * FROM ({sql.strip().rstrip(';')}) AS audience_sync_probe WHERE 1 = 0"
    try:
        columns = [str(c) for c in connection.execute(text(probe)).keys()]
    except SQLAlchemyError as exc:
        connection.rollback()
        return f"the query failed: {driver_reason(exc)}"
    missing = [c for c in needed if c not in columns]
    if missing:
        hint = f" (write {columns[0]} AS {missing[0]})" if columns and columns[0] not in needed else ""
        return (
            f"the query returns {', '.join(columns) or 'no columns'}; it must return {', '.join(needed)}"
            f" — missing {', '.join(missing)}{hint}"
        )
    extra = [c for c in columns if allowed is not None and c not in allowed]
    if extra:
        return f"the query returns columns it may not: {', '.join(extra)} (it may return {', '.join(allowed or ())})"
    return None


def _check_destination(job: JobConfig, client: httpx.Client, found: Findings) -> None:
    settings = job.destination
    if isinstance(settings, ChartMogulApiConfig):
        _ping(job.name, settings, client, found)
        return
    if isinstance(settings, ChartMogulWebhookConfig):
        url, what = settings.webhook_url.get_secret_value(), "the ChartMogul webhook"
    else:
        assert isinstance(settings, SegmentConfig)
        url, what = settings.endpoint, "the Segment endpoint"
    problem = reach(url)
    where = f"job {job.name!r}: {what} at {public_label(url)}"
    if problem:
        found.problems.append(f"{where}: {problem}")
    else:
        found.notes.append(f"{where}: reachable (nothing sent)")


def _ping(job: str, settings: ChartMogulApiConfig, client: httpx.Client, found: Findings) -> None:
    base = settings.base_url.rstrip("/")
    token = base64.b64encode(f"{settings.api_key.get_secret_value()}:".encode()).decode()
    where = f"job {job!r}: ChartMogul's API at {public_label(base)}"
    try:
        response = client.get(f"{base}/ping", headers={"Authorization": f"Basic {token}"}, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        found.problems.append(f"{where}: no answer to GET /ping ({type(exc).__name__}); {reach(base) or ''}".rstrip())
        return
    if response.status_code in (401, 403):
        found.problems.append(f"{where}: the API key was refused (HTTP {response.status_code}); check the key")
    elif response.status_code != 200:
        found.problems.append(f"{where}: GET /ping answered HTTP {response.status_code}")
    else:
        found.notes.append(f"{where}: the key works (GET /ping answered 200)")


def reach(url: str) -> str | None:
    """Why ``url``'s host cannot be reached (DNS, TCP, then TLS for https); None when it can. Sends nothing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    except socket.gaierror:
        return f"the host name {host} could not be resolved (DNS)"
    try:
        with socket.create_connection((str(address[0]), port), timeout=TIMEOUT_S) as connection:
            if parts.scheme == "https":
                with ssl.create_default_context().wrap_socket(connection, server_hostname=host):
                    pass
    except ssl.SSLError as exc:
        return f"the TLS handshake with {host} failed ({exc.reason or type(exc).__name__})"
    except ConnectionRefusedError:
        return f"{host}:{port} refused the connection (nothing listens on that port)"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})"
    return None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite or DuckDB URL, which connecting would create (None for another database, or one
    in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def _connect_timeout(url: str) -> dict[str, object]:
    return {"connect_timeout": int(TIMEOUT_S)} if make_url(url).get_backend_name() == "postgresql" else {}
