"""The web console: every job, run, change and subject a click away, each page also JSON under ``/api/v1/``.

It reads through the same query layer as the CLI's ``--json`` commands (``sync.audit``), so a page, its JSON
and the CLI's output are one schema. Safe by default: it answers only what the state store holds (never a
secret: job definitions are stored with their secrets reduced to a host or ``(set)``), every value escaped, a
strict Content-Security-Policy, and a bearer token required when one is configured (always, off loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sync.audit.queries import (
    CHANGE_FIELDS,
    CHANGES,
    DEFAULT_PAGE,
    MAX_PAGE,
    ChangeFilter,
    audiences,
    change_page,
    decode_cursor,
    duration_text,
    encode_cursor,
    failure_records,
    history,
    run_detail,
    run_messages,
    run_page,
    search_subject,
)
from sync.audit.report import small_multiples
from sync.audit.status import job_status, scheduler_line, scheduler_records, status_rows
from sync.clock import utc_now
from sync.config import Outline
from sync.console.actions import CONTROLS, Actions, Busy
from sync.errors import ConfigError, SyncError
from sync.store import AuditFilter, Store, store_reason

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# Statuses an update can have, for the run page's filter.
UPDATE_STATUSES = ("planned", "pending", "delivered", "failed", "unmatched", "dead")
# The cookie a browser keeps the token in, once given on the login form.
TOKEN_COOKIE = "audience_sync_token"
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # a same-origin form post then carries its Origin (no-referrer sends "null")
    "X-Frame-Options": "DENY",
}


# How many drifted rows a reconciliation's page shows (`diff RUN_ID` has them all).
DRIFT_ROWS = 200
# How many recent runs a key's sparkline shows.
SPARK_RUNS = 30
# How many recent runs a job's charts and its JSON's per-key ``runs`` hold: six weeks at every 2 h (the whole
# history is `audience-sync audiences --json`'s; a chart 230 px wide shows no more).
CHART_RUNS = 500


def sparkline(runs: list[dict[str, Any]], width: int = 150, height: int = 28) -> str:
    """Entries (up, green) and exits (down, red) of each run as a small inline SVG, drawn on the server: no
    script. Its text is built from numbers only."""
    if not runs:
        return ""
    top = max([max(r["delivered_entered"], r["delivered_exited"], r["delivered_changed"]) for r in runs] + [1])
    band = width / len(runs)
    half = height / 2
    bars = []
    for index, run in enumerate(runs):
        x, bar = index * band + band * 0.15, band * 0.7
        up = half * (run["delivered_entered"] or run["delivered_changed"]) / top
        down = half * run["delivered_exited"] / top
        bars.append(f'<rect x="{x:.1f}" y="{half - up:.1f}" width="{bar:.1f}" height="{up:.1f}" fill="#2f9e44"/>')
        bars.append(f'<rect x="{x:.1f}" y="{half:.1f}" width="{bar:.1f}" height="{down:.1f}" fill="#e03131"/>')
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="entries and exits of the last {len(runs)} runs">{"".join(bars)}</svg>'
    )


class _JSON(JSONResponse):
    """JSON through orjson: a page of a thousand changes encodes several times faster than with json."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


class _SizesBefore:
    """Per job, the audience sizes its runs before the recent ones left, kept between requests: those runs
    are finished, so their counts change only when runs are deleted (``forget --runs``), which changes how
    many there are or when the first recent run started, both read (from indexes) on every request. A few are
    kept per job: the overview and a job's page look back over different spans."""

    KEEP_PER_JOB = 4

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kept: dict[tuple[str, int], tuple[tuple[int, datetime | None], Mapping[str, tuple[str, int]]]] = {}

    def __call__(self, job: str, before: int) -> Mapping[str, tuple[str, int]]:
        # Runs deleted change the count; runs deleted and made again (a run id used twice) change when the run
        # `before` started, as it was made after them.
        seen = (self.store.runs_before(job, before), self.store.run_started(before))
        kept = self.kept.get((job, before))
        if kept is not None and kept[0] == seen:
            return kept[1]
        sizes = self.store.key_sizes(job, before=before)
        mine = [key for key in self.kept if key[0] == job and key[1] != before]
        for stale in mine[: max(0, len(mine) - self.KEEP_PER_JOB + 1)]:  # the oldest first
            self.kept.pop(stale, None)
        self.kept.pop((job, before), None)
        self.kept[(job, before)] = (seen, sizes)
        return sizes


class NotFound(SyncError):
    """A job, run or subject the state store does not hold."""


@dataclass(frozen=True)
class Settings:
    """What the console serves and how: the state store, the configuration's jobs, and the token."""

    outline: Outline
    token: str | None = None
    actions: Actions | None = None  # None: every action answers 403 (started without --allow-actions)


def make_app(settings: Settings, store: Store) -> Starlette:
    """The console over ``store`` (opened by the caller, closed by the caller)."""
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
    )
    templates.filters["duration"] = duration_text
    # Entries and exits of a key's recent runs; its SVG is built from numbers only.
    templates.filters["spark"] = lambda runs, width=110, height=22: sparkline(runs[-SPARK_RUNS:], width, height)
    views = _Views(settings, store, templates)
    routes = [
        Route("/", views.overview),
        Route("/login", views.login, methods=["GET", "POST"]),
        Route("/jobs/{job}", views.job),
        Route("/jobs/{job}/failures", views.failures),
        Route("/jobs/{job}/subjects/{subject:path}", views.subject),
        Route("/runs/{run_id:int}", views.run),
        Route("/runs/{run_id:int}/messages", views.messages),
        Route("/search", views.search),
        Route("/api/v1/jobs", views.api_jobs),
        Route("/api/v1/jobs/{job}", views.api_job),
        Route("/api/v1/jobs/{job}/runs", views.api_runs),
        Route("/api/v1/jobs/{job}/failures", views.api_failures),
        Route("/api/v1/jobs/{job}/subjects/{subject:path}", views.api_subject),
        Route("/api/v1/runs/{run_id:int}", views.api_run),
        Route("/api/v1/runs/{run_id:int}/changes", views.api_changes),
        Route("/api/v1/runs/{run_id:int}/messages", views.api_messages),
        Route("/api/v1/search", views.api_search),
        Route("/api/v1/jobs/{job}/runs", views.api_start, methods=["POST"]),
        Route("/api/v1/jobs/{job}/{action}", views.api_control, methods=["POST"]),
        Route("/jobs/{job}/actions", views.form_action, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=_guard(settings))]
    handlers = {HTTPException: _http_error, Exception: _unexpected}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)  # type: ignore[arg-type]


def _guard(settings: Settings) -> Callable[[Request, Any], Awaitable[Response]]:
    """Every request: the token when one is set (a bearer header, or the login form's cookie), the security
    headers on every answer, and the product's errors as 4xx/503 answers instead of tracebacks."""

    async def dispatch(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if settings.token and not path.startswith(("/static/", "/login")) and not _authorised(request, settings):
            if path.startswith("/api/"):
                response: Response = JSONResponse({"error": "a valid token is required"}, status_code=401)
            else:
                response = RedirectResponse("/login", status_code=303)
        else:
            response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    return dispatch


def _same_origin(request: Request) -> bool:
    """A browser says where a request comes from; one from another site is refused (no Origin: not a browser's
    cross-site request, or an old one that sends none)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def _authorised(request: Request, settings: Settings) -> bool:
    assert settings.token is not None
    header = request.headers.get("authorization", "")
    given = (
        header.removeprefix("Bearer ").strip()
        if header.startswith("Bearer ")
        else request.cookies.get(TOKEN_COOKIE, "")
    )
    return hmac.compare_digest(given.encode(), settings.token.encode())


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(request, exc.status_code, "no such page" if exc.status_code == 404 else str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("the console could not answer", extra={"path": request.url.path})
    return _error(request, 500, f"unexpected error: {type(exc).__name__}")


def _error(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    page = f"<!doctype html><title>audience-sync</title><p>{_escape(message)}</p><p><a href='/'>overview</a></p>"
    return HTMLResponse(page, status_code=status)


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


class _Views:
    """The console's pages and API answers; each reads the store through ``sync.audit``."""

    def __init__(self, settings: Settings, store: Store, templates: Environment) -> None:
        self.settings, self.store, self.templates = settings, store, templates
        self.sizes_before = _SizesBefore(store)
        # A form's CSRF token: the same for every form of this process, unknown to any other site.
        self.csrf = hmac.new(secrets.token_bytes(32), b"console forms", hashlib.sha256).hexdigest()
        templates.globals["csrf"] = self.csrf
        templates.globals["actions"] = settings.actions is not None

    # -- acting, when allowed -------------------------------------------------------------------------------

    async def _act(self, request: Request, act: Callable[[Actions], Any], status: int = 200) -> Response:
        actions = self.settings.actions
        if actions is None:
            return _error(request, 403, "actions are off: start the console with --allow-actions")
        if not _same_origin(request):
            return _error(request, 403, "refused: the request comes from another site")
        try:
            self._job(request.path_params["job"])
            done = await _in_thread(lambda: act(actions))
        except NotFound as exc:
            return _error(request, 404, str(exc))
        except Busy as exc:
            return _error(request, 409, str(exc))
        except ConfigError as exc:
            return _error(request, 400, "; ".join(exc.problems))
        except SyncError as exc:
            return _error(request, 400, str(exc))
        return JSONResponse(done, status_code=status)

    async def api_start(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(request, 415, 'send {"full": false, "dry_run": false} as application/json')
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(request, 400, "the body is not JSON")
        if (
            not isinstance(body, dict)
            or set(body) - {"full", "dry_run"}
            or not all(isinstance(v, bool) for v in body.values())
        ):
            return _error(request, 400, 'the body takes only {"full": bool, "dry_run": bool}')
        job = request.path_params["job"]
        full, dry_run = body.get("full", False), body.get("dry_run", False)
        return await self._act(request, lambda actions: {"run_id": actions.start_run(job, full, dry_run)}, 202)

    async def api_control(self, request: Request) -> Response:
        action, job = request.path_params["action"], request.path_params["job"]
        if action not in CONTROLS:
            return _error(request, 404, "no such page")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(request, 415, "send the request as application/json")
        return await self._act(request, lambda actions: {"job": job, "done": actions.control(job, action, utc_now())})

    async def form_action(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if self.settings.actions is None:  # said first: no token would help
            return _error(request, 403, "actions are off: start the console with --allow-actions")
        if not hmac.compare_digest((form.get("csrf") or [""])[0].encode(), self.csrf.encode()):
            return _error(request, 403, "refused: the form's CSRF token is missing or stale; reload the page")
        job, action = request.path_params["job"], (form.get("action") or [""])[0]
        runs = {"run": {}, "plan": {"dry_run": True}, "full": {"full": True}}
        if action in runs:
            answer = await self._act(request, lambda actions: {"run_id": actions.start_run(job, **runs[action])})
        elif action in CONTROLS:
            answer = await self._act(request, lambda actions: {"done": actions.control(job, action, utc_now())})
        else:
            return _error(request, 400, f"unknown action {action!r}")
        if answer.status_code != 200:
            return answer
        done = json.loads(bytes(answer.body))
        target = f"/runs/{done['run_id']}" if "run_id" in done else f"/jobs/{quote(job, safe='')}"
        return RedirectResponse(target, status_code=303)

    # -- reading, with the product's errors as answers -------------------------------------------------------

    async def _answer(self, request: Request, read: Callable[[], Any], page: str | None = None) -> Response:
        try:
            data = await _in_thread(read)
        except NotFound as exc:
            return _error(request, 404, str(exc))
        except SyncError as exc:
            return _error(request, 400, str(exc))
        except SQLAlchemyError as exc:
            return _error(request, 503, f"the state store is not answering: {store_reason(exc)}")
        if page is None:
            return _JSON(data)
        html = self.templates.get_template(page).render(data=data, request=request, now=utc_now())
        return HTMLResponse(html)

    def _job(self, name: str) -> str:
        if name not in self.store.job_names() and name not in {j.name for j in self.settings.outline.jobs}:
            raise NotFound(f"no job named {name!r}")
        return name

    def _run_exists(self, run_id: int) -> None:
        if self.store.run(run_id) is None:
            raise NotFound(f"no run with id {run_id}")

    # -- what each page shows -----------------------------------------------------------------------------

    def _jobs(self) -> dict[str, Any]:
        """Every job's status (the shape of ``status --json``) with its keys over its recent runs (the shape of
        ``audiences --json``, the last ``SPARK_RUNS`` runs in each key's ``runs``)."""
        now = utc_now()
        schedulers = scheduler_records(self.store, now)
        jobs = [
            {**row, "audiences": audiences(self.store, row["job"], SPARK_RUNS, self.sizes_before)}
            for row in status_rows(self.store, self.settings.outline, now)
        ]
        return {"jobs": jobs, "scheduler": scheduler_line(schedulers, now)}

    def _job_data(self, request: Request, name: str) -> dict[str, Any]:
        job = self._job(name)
        statuses = tuple(request.query_params.getlist("status"))
        query = request.query_params
        trigger = query.get("trigger") or None
        runs, cursor = run_page(self.store, job, statuses, trigger, query.get("cursor"), _limit(request))
        configured = next((j for j in self.settings.outline.jobs if j.name == job), None)
        status = job_status(self.store, configured, utc_now()) if configured else None
        last = self.store.last_run(job)
        detail = run_detail(self.store, last.id) if last else None
        keys = audiences(self.store, job, CHART_RUNS, self.sizes_before)
        return {
            "job": job,
            "status": status,
            "runs": runs,
            "next": cursor,
            "definition": detail["definition"] if detail else None,
            "keys": keys,
        }

    def _job_page(self, request: Request, name: str) -> dict[str, Any]:
        """The job's data with its charts, drawn on the server (no script)."""
        data = self._job_data(request, name)
        keys = data["keys"]
        # Every key lists the same runs (zeros included): the first one's say when each started.
        times = {r["run_id"]: datetime.fromisoformat(r["started_at"]) for k in keys[:1] for r in k["runs"]}
        return {
            **data,
            "sizes": small_multiples([k for k in keys if k["kind"] == "audience"], times),
            "trait_changes": small_multiples([k for k in keys if k["kind"] == "trait"], times, "delivered_changed"),
        }

    def _changes(self, request: Request, run_id: int) -> dict[str, Any]:
        self._run_exists(run_id)
        query = request.query_params
        change = query.get("change") or None
        if change is not None and change not in (*CHANGES, "changed"):
            raise SyncError(f"change must be one of {', '.join(CHANGES)}, not {change!r}")
        status = query.get("status") or None
        if status is not None and status not in UPDATE_STATUSES:
            raise SyncError(f"status must be one of {', '.join(UPDATE_STATUSES)}, not {status!r}")
        filters = AuditFilter(run_id=run_id, user_id=query.get("subject") or None, status=status)
        keep = ChangeFilter(query.get("key") or None, "trait" if change == "changed" else change)
        rows, cursor = change_page(self.store, filters, keep, query.get("cursor"), _limit(request))
        return {"items": [{f: row[f] for f in CHANGE_FIELDS} for row in rows], "next": cursor}

    def _messages(self, request: Request, run_id: int) -> dict[str, Any]:
        """A page of what the destination received; the cursor is the position of the next message."""
        self._run_exists(run_id)
        start = decode_cursor(request.query_params.get("cursor"), 1) or (0,)
        limit = _limit(request)
        items: list[dict[str, Any]] = []
        with closing(run_messages(self.store, run_id)) as messages:  # ends the store's cursor when a page is full
            for index, message in enumerate(islice(messages, start[0], None), start[0]):
                if len(items) == limit:
                    return {"items": items, "next": encode_cursor(index)}
                items.append(message)
        return {"items": items, "next": None}

    def _subject(self, job: str, subject: str) -> dict[str, Any]:
        found = history(self.store, self._job(job), subject)
        if not found["timeline"] and not found["acknowledged"]:
            raise NotFound(f"job {job!r} has no subject {subject!r}")
        return found

    def _failures(self, job: str) -> dict[str, Any]:
        name = self._job(job)  # the shape of `failed JOB --all --json`
        return {"job": name, "items": failure_records(self.store, name, every=True), "next": None}

    def _search(self, request: Request) -> dict[str, Any]:
        q = (request.query_params.get("q") or "").strip()
        return {"q": q, "items": search_subject(self.store, q) if q else []}

    def _run(self, run_id: int) -> dict[str, Any]:
        self._run_exists(run_id)
        return run_detail(self.store, run_id)

    # -- routes ---------------------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        return await self._answer(request, self._jobs, "overview.html")

    async def api_jobs(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._jobs()["jobs"])

    async def job(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._job_page(request, request.path_params["job"]), "job.html")

    async def api_job(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            data = self._job_data(request, request.path_params["job"])
            return {"status": data["status"], "definition": data["definition"], "audiences": data["keys"]}

        return await self._answer(request, read)

    async def api_runs(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            data = self._job_data(request, request.path_params["job"])
            return {"items": data["runs"], "next": data["next"]}

        return await self._answer(request, read)

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def read() -> dict[str, Any]:
            detail = self._run(run_id)
            drifts = []
            if detail["reconcile"] is not None:  # a reconciliation: what it found, the first rows of it
                drifts = list(islice(self.store.drifts_of(run_id), DRIFT_ROWS))
            return {
                "detail": detail,
                "drifts": drifts,
                "changes": self._changes(request, run_id),
                "query": dict(request.query_params),
                "change_kinds": CHANGES,
                "statuses": UPDATE_STATUSES,
            }

        return await self._answer(request, read, "run.html")

    async def api_run(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._run(request.path_params["run_id"]))

    async def api_changes(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._changes(request, request.path_params["run_id"]))

    async def messages(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return await self._answer(
            request, lambda: {"run_id": run_id, **self._messages(request, run_id)}, "messages.html"
        )

    async def api_messages(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._messages(request, request.path_params["run_id"]))

    async def subject(self, request: Request) -> Response:
        params = request.path_params
        return await self._answer(request, lambda: self._subject(params["job"], params["subject"]), "subject.html")

    async def api_subject(self, request: Request) -> Response:
        params = request.path_params
        return await self._answer(request, lambda: self._subject(params["job"], params["subject"]))

    async def failures(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._failures(request.path_params["job"]), "failures.html")

    async def api_failures(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._failures(request.path_params["job"]))

    async def search(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._search(request), "search.html")

    async def api_search(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._search(request))

    async def login(self, request: Request) -> Response:
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", "replace"))  # the login form, url-encoded
            given = (form.get("token") or [""])[0]
            token = self.settings.token or ""
            if token and hmac.compare_digest(given.encode(), token.encode()):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
                return response
            return HTMLResponse(self.templates.get_template("login.html").render(failed=True), status_code=401)
        return HTMLResponse(self.templates.get_template("login.html").render(failed=False))


def _limit(request: Request) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise SyncError(f"limit must be a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return int(text)


async def _in_thread(read: Callable[[], Any]) -> Any:
    """Reads wait on the database: off the event loop, so that one slow page holds up no other."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(read)
