"""The dashboard's ASGI app: HTML pages, the JSON API under ``/api/`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import _database
from .._database import Undecodable
from ..errors import ArgumentError, ConfigurationError, PgjobsError
from ..metrics import DatabaseCollector
from . import chart, security
from .store import STATUSES, JobFilter, Row, Store

_HERE = Path(__file__).resolve().parent
FLASH_COOKIE = "pgjobs_flash"
#: The scope key _Guard sets on requests the token lets in (the login page shows no database to others).
_LET_IN = "pgjobs.let_in"
#: Host names a loopback dashboard answers to (a page of another site that resolves its own name
#: to 127.0.0.1 is refused: DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_LIMIT = 50
#: The menu entry each page belongs to, and the pages that refresh themselves.
_NAV = {"job": "jobs", "confirm": "jobs", "preview": "schedules"}
_LIVE = {"overview", "jobs", "job", "workers", "schedules"}

Handler = Callable[[Request], Awaitable[Response]]


# -- formatting ---------------------------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    """``3 s``, ``4 m 10 s``, ``2 h 5 m``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None or math.isnan(seconds):
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} m"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    if isinstance(value, Undecodable):
        return str(value)
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def _json(data: Any, status_code: int = 200) -> Response:
    body = json.dumps(data, default=_json_default, ensure_ascii=False)
    return Response(body, status_code=status_code, media_type="application/json")


def _safe_next(request: Request, target: str | None, default: str) -> str:
    """A local path to go back to: ``target`` when it is one below the app's root, else default."""
    root = request.scope.get("root_path", "")
    local = target is not None and target.startswith(root + "/") and not target.startswith("//")
    if local and target is not None and "\\" not in target and "://" not in target.split("?", 1)[0]:
        return target
    return default


def _int(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"{name}: a whole number, got {text[:40]!r}") from None


class Dashboard:
    """The app's parts: the store, the token check, the templates, read-only mode, the metrics."""

    def __init__(self, dsn: str, *, read_only: bool, token: str | None, refresh: float) -> None:
        self.store = Store(dsn)
        self.auth = security.TokenAuth(token)
        self.read_only = read_only
        self.refresh = refresh
        self.database = _database.redact(dsn)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(DatabaseCollector(dsn))
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        env.filters.update(age=_age, when=_when, pretty=_pretty, first_line=_first_line)
        self.env = env

    # -- rendering --------------------------------------------------------------------------------
    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        flash = _read_flash(request)

        def path(name: str, /, **params: Any) -> str:
            return str(request.url_for(name, **params).path)

        def url(name: str, /, query: Mapping[str, Any] | None = None, **params: Any) -> str:
            base = path(name, **params)
            q = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
            return f"{base}?{urlencode(q)}" if q else base

        name = template.removesuffix(".html")
        html = self.env.get_template(template).render(
            nav=_NAV.get(name, name), live=name in _LIVE, request=request, path=path, url=url,
            csrf=security.csrf_token(request), read_only=self.read_only,
            auth=self.auth.enabled, flash=flash, refresh=self.refresh,
            database=self.database if request.scope.get(_LET_IN) else None,
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""), **context,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status_code)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=_cookie_path(request))
        return response

    # -- pages ------------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        queues, (last_minute, series, chart_error), workers, schedules = await asyncio.gather(
            self.store.queues(), self._series(), self.store.worker_counts(), self.store.schedules(),
        )  # fmt: skip
        by_queue = chart.per_queue(series)
        known = {q["queue"] for q in queues}
        rows = list(queues) + [_idle_queue(name) for name in sorted(set(by_queue) - known)]
        rows.sort(key=lambda q: q["queue"])
        charts = {q["queue"]: chart.minutes_chart(by_queue.get(q["queue"], []), last_minute, width=240, height=36)
                  for q in rows}  # fmt: skip
        upcoming = [s for s in schedules if s["enabled"]][:5]
        return self.page(
            request, "overview.html", queues=rows, charts=charts, total=chart.minutes_chart(series, last_minute),
            workers=workers, upcoming=upcoming, schedules=len(schedules), chart_error=chart_error,
        )  # fmt: skip

    async def _series(self) -> tuple[dt.datetime, list[Row], str | None]:
        """The chart's last hour, or none and why when its query ran out of time."""
        try:
            last_minute, series = await self.store.finished_per_minute(60)
        except psycopg.errors.QueryCanceled:
            now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            return now, [], "The chart's query ran out of time (a large history): chart skipped."
        return last_minute, series, None

    async def jobs(self, request: Request) -> Response:
        where = JobFilter.from_params(request.query_params)
        before = _int(request.query_params.get("before"), "before")
        limit = min(_int(request.query_params.get("limit"), "limit") or _LIMIT, 200)
        jobs, queues = await asyncio.gather(self.store.jobs(where, before, limit + 1), self.store.queues())
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return self.page(
            request, "jobs.html", jobs=jobs, where=where, before=before, statuses=STATUSES,
            next_before=jobs[-1]["id"] if more else None, queue_names=[q["queue"] for q in queues],
            limit=None if limit == _LIMIT else limit,
        )  # fmt: skip

    async def job(self, request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        job = await self.store.job(job_id)
        if job is None:
            return self.page(request, "error.html", status_code=404, message=f"There is no job {job_id}.")
        parents, children = await asyncio.gather(
            self.store.parents(job.get("depends_on") or []),
            self.store.children(job_id) if job.get("has_dependants") else _nothing(),
        )
        return self.page(request, "job.html", job=job, parents=parents, children=children)

    async def bulk_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        if action not in ("retry", "cancel"):
            raise ArgumentError("action: retry or cancel")
        where = JobFilter.from_params(request.query_params)
        count = await self.store.bulk(action, where, dry_run=True)
        return self.page(request, "confirm.html", action=action, where=where, count=count)

    async def workers(self, request: Request) -> Response:
        workers, counts = await asyncio.gather(self.store.workers(), self.store.worker_counts())
        return self.page(request, "workers.html", workers=workers, counts=counts)

    async def schedules(self, request: Request) -> Response:
        return self.page(request, "schedules.html", schedules=await self.store.schedules())

    async def schedule_preview(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        start, end = (_time(request.query_params.get(k), k) for k in ("start", "end"))
        ticks, more = await self.store.backfill_preview(name, start, end)
        return self.page(request, "preview.html", name=name, start=start, end=end, ticks=ticks, more=more,
                         would=sum(1 for t in ticks if t["action"] == "enqueued"))  # fmt: skip

    # -- login ------------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        root = str(request.url_for("overview").path)
        target = _safe_next(request, request.query_params.get("next"), root)
        if not self.auth.enabled:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self.page(request, "login.html", target=target, failed=False)
        form = await request.form()
        target = _safe_next(request, _field(form, "next"), root)
        if not (security.csrf_ok(request, _field(form, security.CSRF_FIELD)) and security.same_origin(request)):
            return self.page(request, "error.html", status_code=403, message="The form expired: load it again.")
        if not self.auth.check_token(_field(form, "token") or ""):
            await security.failed()
            return self.page(request, "login.html", status_code=401, target=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE, self.auth.new_session(), httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path=_cookie_path(request),
        )  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not security.csrf_ok(request, _field(form, security.CSRF_FIELD)):
            return self.page(request, "error.html", status_code=403, message="The form expired: load it again.")
        response = RedirectResponse(str(request.url_for("login").path), status_code=303)
        response.delete_cookie(security.SESSION_COOKIE, path=_cookie_path(request))
        return response

    # -- actions (forms) --------------------------------------------------------------------------
    def action(self, do: Callable[[Request, FormData], Awaitable[tuple[str, str]]]) -> Handler:
        """A form action: refused (403) when read-only or without the CSRF token, then done, then a
        redirect back (to the form's ``next``) with a flash message."""

        async def endpoint(request: Request) -> Response:
            if self.read_only:
                return self.page(request, "error.html", status_code=403, message="This dashboard is read-only.")
            form = await request.form()
            if not (security.csrf_ok(request, _field(form, security.CSRF_FIELD)) and security.same_origin(request)):
                message = "Refused: the form's CSRF token is missing or wrong."
                return self.page(request, "error.html", status_code=403, message=message)
            try:
                kind, text = await do(request, form)
            except (ArgumentError, LookupError) as exc:
                kind, text = "error", str(exc)
            except psycopg.Error as exc:
                if exc.sqlstate is None or exc.sqlstate.startswith("08"):
                    raise
                kind, text = "error", _database.redact(str(exc).strip().splitlines()[0])
            response = RedirectResponse(
                _safe_next(request, _field(form, "next"), str(request.url_for("overview").path)), status_code=303
            )
            _set_flash(request, response, kind, text)
            return response

        return endpoint

    async def do_retry(self, request: Request, form: FormData) -> tuple[str, str]:
        job_id = int(request.path_params["job_id"])
        status = await self.store.retry(job_id)
        if status is None:
            return "error", f"Job {job_id} is neither failed nor aborted: nothing to retry."
        return "ok", f"Job {job_id} is {status} again."

    async def do_cancel(self, request: Request, form: FormData) -> tuple[str, str]:
        job_id = int(request.path_params["job_id"])
        status = await self.store.cancel(job_id)
        if status is None:
            return "error", f"There is no job {job_id}."
        return "ok", f"Job {job_id} is {status}."

    async def do_delete(self, request: Request, form: FormData) -> tuple[str, str]:
        job_id = int(request.path_params["job_id"])
        if not await self.store.delete(job_id):
            return "error", f"There is no job {job_id}."
        return "ok", f"Job {job_id} deleted."

    async def do_bulk(self, request: Request, form: FormData) -> tuple[str, str]:
        action = _field(form, "action")
        if action not in ("retry", "cancel"):
            raise ArgumentError("action: retry or cancel")
        n = await self.store.bulk(action, JobFilter.from_params(form), dry_run=False)
        return "ok", f"{n} job(s) {'queued again' if action == 'retry' else 'cancelled'}."

    def do_queue(self, paused: bool) -> Callable[[Request, FormData], Awaitable[tuple[str, str]]]:
        async def do(request: Request, form: FormData) -> tuple[str, str]:
            queue = request.path_params["queue"]
            await self.store.pause_queue(queue, paused)
            return "ok", f"Queue {queue} {'paused' if paused else 'resumed'}."

        return do

    async def do_worker_stop(self, request: Request, form: FormData) -> tuple[str, str]:
        worker_id = _field(form, "worker_id") or ""
        status = await self.store.stop_worker(worker_id)
        if status is None:
            return "error", f"There is no worker {worker_id}."
        return "ok", f"Worker {worker_id} is {status}."

    def do_schedule(self, verb: str) -> Callable[[Request, FormData], Awaitable[tuple[str, str]]]:
        async def do(request: Request, form: FormData) -> tuple[str, str]:
            name = _field(form, "name") or ""
            if verb == "run":
                try:
                    job_id = await self.store.run_schedule(name)
                except psycopg.errors.NoDataFound:
                    return "error", f"There is no schedule {name}."
                return "ok", f"Schedule {name} enqueued job {job_id}."
            if not await self.store.enable_schedule(name, verb == "resume"):
                return "error", f"There is no schedule {name}."
            return "ok", f"Schedule {name} {'resumed' if verb == 'resume' else 'paused'}."

        return do

    # -- JSON API ---------------------------------------------------------------------------------
    async def api_queues(self, request: Request) -> Response:
        return _json({"queues": await self.store.queues()})

    async def api_series(self, request: Request) -> Response:
        minutes = _int(request.query_params.get("minutes"), "minutes") or 60
        last_minute, series = await self.store.finished_per_minute(minutes)
        return _json({"minutes": minutes, "last_minute": last_minute, "series": series})

    async def api_jobs(self, request: Request) -> Response:
        where = JobFilter.from_params(request.query_params)
        before = _int(request.query_params.get("before"), "before")
        limit = min(_int(request.query_params.get("limit"), "limit") or _LIMIT, 1000)
        jobs = await self.store.jobs(where, before, limit + 1)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return _json({"jobs": jobs, "next_before": jobs[-1]["id"] if more else None})

    async def api_job(self, request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        job = await self.store.job(job_id)
        if job is None:
            return _json({"error": f"no job {job_id}"}, 404)
        parents = await self.store.parents(job.get("depends_on") or [])
        children = await self.store.children(job_id) if job.get("has_dependants") else []
        return _json({"job": job, "parents": parents, "children": children})

    async def api_workers(self, request: Request) -> Response:
        workers, counts = await asyncio.gather(self.store.workers(), self.store.worker_counts())
        return _json({"workers": workers, "counts": counts})

    async def api_schedules(self, request: Request) -> Response:
        return _json({"schedules": await self.store.schedules()})

    async def api_schedule_preview(self, request: Request) -> Response:
        start, end = (_time(request.query_params.get(k), k) for k in ("start", "end"))
        ticks, more = await self.store.backfill_preview(request.query_params.get("name", ""), start, end)
        return _json({"ticks": ticks, "more": more})

    def api_action(self, do: Callable[[Request, dict[str, Any]], Awaitable[Response]]) -> Handler:
        """A JSON action: refused (403) when read-only, and unless it carries the Bearer token or the
        CSRF cookie's value in ``X-CSRF-Token`` from the same origin."""

        async def endpoint(request: Request) -> Response:
            if self.read_only:
                return _json({"error": "this dashboard is read-only"}, 403)
            header = request.headers.get(security.CSRF_HEADER)
            if not (self.auth.bearer(request) or (security.csrf_ok(request, header) and security.same_origin(request))):
                return _json({"error": f"send the CSRF cookie's value in {security.CSRF_HEADER}, or a Bearer token"},
                             403)  # fmt: skip
            body = await request.body()
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError:
                return _json({"error": "the body must be a JSON object"}, 400)
            if not isinstance(data, dict):
                return _json({"error": "the body must be a JSON object"}, 400)
            return await do(request, data)

        return endpoint

    async def api_retry(self, request: Request, data: dict[str, Any]) -> Response:
        job_id = int(request.path_params["job_id"])
        status = await self.store.retry(job_id)
        if status is None:
            return _json({"error": f"job {job_id} is unknown, or neither failed nor aborted"}, 409)
        return _json({"id": job_id, "status": status})

    async def api_cancel(self, request: Request, data: dict[str, Any]) -> Response:
        job_id = int(request.path_params["job_id"])
        status = await self.store.cancel(job_id)
        if status is None:
            return _json({"error": f"no job {job_id}"}, 404)
        return _json({"id": job_id, "status": status})

    async def api_delete(self, request: Request, data: dict[str, Any]) -> Response:
        job_id = int(request.path_params["job_id"])
        if not await self.store.delete(job_id):
            return _json({"error": f"no job {job_id}"}, 404)
        return _json({"id": job_id, "deleted": True})

    def api_bulk(self, action: str) -> Callable[[Request, dict[str, Any]], Awaitable[Response]]:
        async def do(request: Request, data: dict[str, Any]) -> Response:
            dry_run = data.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise ArgumentError("dry_run: true or false")
            n = await self.store.bulk(action, JobFilter.from_params(data), dry_run=dry_run)
            return _json({"action": action, "dry_run": dry_run, "count": n})

        return do

    def api_queue(self, paused: bool) -> Callable[[Request, dict[str, Any]], Awaitable[Response]]:
        async def do(request: Request, data: dict[str, Any]) -> Response:
            return _json({"queue": await self.store.pause_queue(request.path_params["queue"], paused)})

        return do

    async def api_worker_stop(self, request: Request, data: dict[str, Any]) -> Response:
        worker_id = str(data.get("worker_id") or "")
        status = await self.store.stop_worker(worker_id)
        if status is None:
            return _json({"error": f"no worker {worker_id!r}"}, 404)
        return _json({"worker_id": worker_id, "status": status})

    def api_schedule(self, verb: str) -> Callable[[Request, dict[str, Any]], Awaitable[Response]]:
        async def do(request: Request, data: dict[str, Any]) -> Response:
            name = str(data.get("name") or "")
            if verb == "run":
                try:
                    return _json({"name": name, "job_id": await self.store.run_schedule(name)})
                except psycopg.errors.NoDataFound:
                    return _json({"error": f"no schedule {name!r}"}, 404)
            if not await self.store.enable_schedule(name, verb == "resume"):
                return _json({"error": f"no schedule {name!r}"}, 404)
            return _json({"name": name, "enabled": verb == "resume"})

        return do

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _nothing() -> list[Row]:
    return []


def _idle_queue(name: str) -> Row:
    """A queue that only finished jobs lately: no settings, nothing unfinished."""
    return {"queue": name, "paused": False, "rate_limit": 0, "rate_period": 0, "max_active": 0, "group_rate_limit": 0,
            "group_rate_period": 0, "group_max_active": 1, "queued": 0, "scheduled": 0, "waiting": 0, "active": 0,
            "oldest_queued_seconds": None, "fair": False, "max_queued": 0}  # fmt: skip


def _field(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _time(text: str | None, name: str) -> dt.datetime:
    if not text:
        raise ArgumentError(f"{name}: a date or time is needed (like 2026-11-01 or 2026-11-01T06:00)")
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ArgumentError(f"{name}: {text[:40]!r} is not an ISO date or time") from None


def _cookie_path(request: Request) -> str:
    return str(request.scope.get("root_path") or "") + "/"


def _read_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    return {"kind": "error" if data.get("kind") == "error" else "ok", "text": data["text"][:500]}


def _set_flash(request: Request, response: Response, kind: str, text: str) -> None:
    value = base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": text[:500]}).encode()).decode()
    response.set_cookie(FLASH_COOKIE, value, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path=_cookie_path(request))  # fmt: skip


class _Guard(BaseHTTPMiddleware):
    """Lets in only requests the token allows (the login page and static files excepted), answers
    errors without leaking the DSN, sets the CSRF cookie and the security headers."""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        super().__init__(app)
        self.dashboard = dashboard

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        root = request.scope.get("root_path", "")
        relative = request.url.path[len(root) :] if request.url.path.startswith(root) else request.url.path
        if len(request.cookies.get(security.CSRF_COOKIE, "")) < 32:
            request.scope["pgjobs.csrf"] = security.new_csrf()
        try:
            open_to_all = relative.startswith(("/static/", "/login"))
            if open_to_all or self.dashboard.auth.allows(request):
                request.scope[_LET_IN] = not open_to_all  # else /login would tell a right token from a wrong one
                response = await call_next(request)
            else:
                if self.dashboard.auth.tried(request):
                    await security.failed()  # a wrong token, whatever its scheme, is as slow as the form's
                response = self.refusal(request, relative)
        except Exception as exc:  # every error becomes a page or JSON without secrets
            response = self.dashboard_error(request, relative, exc)
        new = request.scope.get("pgjobs.csrf")
        if new:
            response.set_cookie(security.CSRF_COOKIE, new, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path=_cookie_path(request))  # fmt: skip
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def refusal(self, request: Request, relative: str) -> Response:
        """401 for the API and /metrics, else a redirect to the login form."""
        if relative.startswith(("/api/", "/metrics")):
            response = _json({"error": "authentication required"}, 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="pgjobs dashboard", charset="UTF-8"'
            return response
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{request.url_for('login').path}?{urlencode({'next': here})}", 303)

    def dashboard_error(self, request: Request, relative: str, exc: Exception) -> Response:
        if isinstance(exc, ArgumentError | ValueError):
            status, message = 400, str(exc)
        elif isinstance(exc, LookupError):
            status, message = 404, str(exc)
        elif isinstance(exc, psycopg.Error | PoolTimeout | PgjobsError | OSError):
            status = 503
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"The database did not answer as expected: {first}"
        else:
            raise exc
        message = _database.redact(message).replace(self.dashboard.store.dsn, self.dashboard.database)
        if relative.startswith(("/api/", "/metrics")):
            return _json({"error": message}, status)
        return self.dashboard.page(request, "error.html", status_code=status, message=message)


def app(
    dsn: str | None = None,
    *,
    read_only: bool = False,
    token: str | None = None,
    insecure: bool = False,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    refresh: float = 5.0,
) -> Starlette:
    """The dashboard as an ASGI app, to serve with uvicorn or mount in FastAPI/Starlette.

    :param dsn: the database (default: ``PGJOBS_DSN``, ``DATABASE_URL``, else the embedded server).
    :param read_only: no action buttons, and every action refused with 403.
    :param token: every request needs it (``Authorization: Bearer``, the password of HTTP basic
        credentials, or the session cookie of the login form). Without one the app is refused
        (ConfigurationError) unless ``insecure``.
    :param insecure: serve without a token, every request let in: only where something else (the
        parent application, a proxy) authenticates every request, or on a loopback address.
    :param allowed_hosts: the Host names it answers to (default: loopback names only, against DNS
        rebinding; ``["*"]``: any). Mounted in a public application, name its host here.
    :param refresh: seconds between live refreshes of a page (0: none).

    Its connection pool opens with the app's lifespan, or at the first request where the app is
    mounted (whose lifespan the parent does not run); ``dashboard.router.lifespan_context`` closes it.
    """
    from .. import migrations

    if token is None and not insecure:
        raise ConfigurationError(
            "the dashboard needs a token: anyone who reaches it could retry, cancel and delete jobs. Give "
            "token=..., or insecure=True where the application around it authenticates every request"
        )
    if token is not None and insecure:
        raise ConfigurationError("the dashboard was given a token and insecure=True: one or the other")
    target = migrations.prepare(dsn)
    dashboard = Dashboard(target, read_only=read_only, token=token, refresh=refresh)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await dashboard.store.open()
        try:
            yield
        finally:
            await dashboard.store.close()

    d = dashboard
    routes = [
        Route("/", d.overview, name="overview"),
        Route("/jobs", d.jobs, name="jobs"),
        Route("/jobs/bulk", d.bulk_confirm, name="bulk_confirm", methods=["GET"]),
        Route("/jobs/bulk", d.action(d.do_bulk), name="bulk", methods=["POST"]),
        Route("/jobs/{job_id:int}", d.job, name="job"),
        Route("/jobs/{job_id:int}/retry", d.action(d.do_retry), name="job_retry", methods=["POST"]),
        Route("/jobs/{job_id:int}/cancel", d.action(d.do_cancel), name="job_cancel", methods=["POST"]),
        Route("/jobs/{job_id:int}/delete", d.action(d.do_delete), name="job_delete", methods=["POST"]),
        Route("/queues/{queue}/pause", d.action(d.do_queue(True)), name="queue_pause", methods=["POST"]),
        Route("/queues/{queue}/resume", d.action(d.do_queue(False)), name="queue_resume", methods=["POST"]),
        Route("/workers", d.workers, name="workers"),
        Route("/workers/stop", d.action(d.do_worker_stop), name="worker_stop", methods=["POST"]),
        Route("/schedules", d.schedules, name="schedules"),
        Route("/schedules/preview", d.schedule_preview, name="schedule_preview"),
        Route("/schedules/pause", d.action(d.do_schedule("pause")), name="schedule_pause", methods=["POST"]),
        Route("/schedules/resume", d.action(d.do_schedule("resume")), name="schedule_resume", methods=["POST"]),
        Route("/schedules/run", d.action(d.do_schedule("run")), name="schedule_run", methods=["POST"]),
        Route("/login", d.login, name="login", methods=["GET", "POST"]),
        Route("/logout", d.logout, name="logout", methods=["POST"]),
        Route("/metrics", d.metrics, name="metrics"),
        Route("/api/queues", d.api_queues, name="api_queues"),
        Route("/api/series", d.api_series, name="api_series"),
        Route("/api/jobs", d.api_jobs, name="api_jobs"),
        Route("/api/jobs/retry", d.api_action(d.api_bulk("retry")), methods=["POST"]),
        Route("/api/jobs/cancel", d.api_action(d.api_bulk("cancel")), methods=["POST"]),
        Route("/api/jobs/{job_id:int}", d.api_job, name="api_job"),
        Route("/api/jobs/{job_id:int}/retry", d.api_action(d.api_retry), methods=["POST"]),
        Route("/api/jobs/{job_id:int}/cancel", d.api_action(d.api_cancel), methods=["POST"]),
        Route("/api/jobs/{job_id:int}/delete", d.api_action(d.api_delete), methods=["POST"]),
        Route("/api/queues/{queue}/pause", d.api_action(d.api_queue(True)), methods=["POST"]),
        Route("/api/queues/{queue}/resume", d.api_action(d.api_queue(False)), methods=["POST"]),
        Route("/api/workers", d.api_workers, name="api_workers"),
        Route("/api/workers/stop", d.api_action(d.api_worker_stop), methods=["POST"]),
        Route("/api/schedules", d.api_schedules, name="api_schedules"),
        Route("/api/schedules/preview", d.api_schedule_preview, name="api_schedule_preview"),
        Route("/api/schedules/pause", d.api_action(d.api_schedule("pause")), methods=["POST"]),
        Route("/api/schedules/resume", d.api_action(d.api_schedule("resume")), methods=["POST"]),
        Route("/api/schedules/run", d.api_action(d.api_schedule("run")), methods=["POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        Middleware(_Guard, dashboard=dashboard),
    ]
    starlette = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    starlette.state.dashboard = dashboard
    return starlette
