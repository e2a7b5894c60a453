"""The HTTP API and the page: ``supervisorctl``'s operations over HTTP, plus launching from templates.

Every route under ``/api`` and ``/metrics`` needs the token, in an
``Authorization: Bearer <token>`` or ``X-Auth-Token`` header. Only the page's
shell (``/`` and ``/static/*``, no data in them) is served without it. The
token is never taken from a cookie or the query string, so a cross-site form
or link cannot act with it, and it never lands in a server or proxy log.

A job can be started from the browser only by launching a template with
values for the knobs the template declares (``POST /api/launch``); there is
no route that accepts a config, a ``class_path`` or an interpreter.

    GET  /api/ping                          daemon pid, version, state dir
    GET  /api/templates                     the templates and their knobs
    POST /api/launch                        {template, values: {key: value}, name?} -> the new job (201)
    POST /api/inspect                       {template, values, what: data|model|lr} -> samples / model table / lr
    GET  /api/jobs?limit=&offset=           every job's status object (finished ones: store summaries)
    GET  /api/jobs-page?limit=&offset=      the active jobs and a page of the finished ones, with counts
    GET  /api/jobs/{job}                    one job's status object
    GET  /api/jobs/{job}/history            its attempts
    GET  /api/jobs/{job}/events?after=N     its events after id N
    GET  /api/jobs/{job}/logs?attempt=&stdout=&stderr=&tail=   a chunk of an attempt's output
    GET  /api/jobs/{job}/metrics?attempt=&offset=              new curve points (see ``curves.py``)
    GET  /api/jobs/{job}/profile?attempt=   the profiler's report of an attempt (``trainer.profiler``)
    POST /api/jobs/{job}/stop               stop it
    POST /api/jobs/{job}/restart            relaunch it from its best checkpoint
    GET  /api/events?after=N                every job's events after id N
    GET  /api/gpus                          {"nvml": bool, "gpus": [...]}
    GET  /metrics                           Prometheus text exposition
    /api/sweeps...                          sweeps: list, status, stop, start from a template (``sweeps.py``)

Errors are ``{"error": {"code", "message", "fields"?}}`` with the HTTP status
of the error's kind; a launch that fails validation answers 422 with
``fields``: the problem of each knob, keyed by the knob's config key.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor import __version__
from supervisor.api.ops import Operations
from supervisor.errors import (
    ConfigError,
    InvalidTransition,
    JobNotFound,
    ResourceUnavailable,
    SupervisorError,
)
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.safe_read import regular_size
from supervisor.sweep.ops import SweepNotFound
from supervisor.web.curves import Cursor, read_points
from supervisor.web.inspect import InspectFailed, Inspector
from supervisor.web.limits import RequestGate
from supervisor.web.metrics import CONTENT_TYPE, render_metrics
from supervisor.web.profile import read_profile
from supervisor.web.sweeps import add_sweep_routes
from supervisor.web.templates import Template, field_for_error, find_template, find_templates, plan_launch

log = logging.getLogger("ml_supervisor.web")
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_TAIL = 256 * 1024
_CLI_HINT = " (set on the command line)"
_UNAUTHORIZED = "a valid token is required: open the URL that `supervisorctl web-url` prints"
# Query integers (ids, offsets, attempt numbers) stay where SQLite and seek() take them.
MAX_QUERY_INT = 2**53
JOBS_PAGE = 50  # finished jobs per page of the jobs list (the active ones come first, on every page)
MAX_JOBS_PAGE = 1000

GpuSource = Callable[[], list[dict[str, Any]] | None]

_STATUS_BY_ERROR: dict[type[SupervisorError], int] = {
    JobNotFound: 404, SweepNotFound: 404, InvalidTransition: 409, ConfigError: 422, ResourceUnavailable: 409,
    InspectFailed: 422,  # the user's code failed or timed out: not the server's error
}

# The page loads nothing from elsewhere and is never framed: a strict policy costs nothing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LaunchRequest(BaseModel):
    """What the page sends to start a job. Anything else in the body is refused (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=64)
    values: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(default=None, max_length=64)


class InspectRequest(BaseModel):
    """What the page sends to look at a template's data or model for some knob values."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=64)
    values: dict[str, Any] = Field(default_factory=dict)
    what: Literal["data", "model", "lr"]


class SafeJSONResponse(JSONResponse):
    """JSON without NaN or infinities (not JSON; a browser's parser rejects them): they become null."""

    def render(self, content: Any) -> bytes:
        return super().render(_finite(content))


class ApiError(Exception):
    """An error answer of the web layer itself (not from the daemon's operations)."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


def create_app(ops: Operations, *, token: str, templates_dir: str | Path, gpus: GpuSource | None = None,
               workdir: str | Path | None = None, inspector: Inspector | None = None) -> FastAPI:
    """The web app over ``ops``.

    ``token``: the secret every API request must carry. ``templates_dir``: the
    folder of launchable templates (re-read on every request, so edits show at
    once). ``gpus``: returns ``supervisorctl gpus --json`` entries, or None when
    NVML is not available. ``workdir``: the directory a launched job is
    submitted from (its ``workdir`` when the template sets none); default: the
    template folder's parent, the repository for the bundled ``configs/``. ``inspector``:
    runs the launch page's Inspect actions (default: ``python -m trainer``, cached).
    """
    if len(token) < 16:
        raise ValueError("the web token is too short to be a secret")
    expected = token.encode()
    templates_path = Path(templates_dir).resolve()
    submit_cwd = Path(workdir).resolve() if workdir is not None else templates_path.parent
    inspections = inspector or Inspector()

    def authorized(headers: Mapping[str, str]) -> bool:
        """Whether the headers carry the token (constant-time compare)."""
        supplied = headers.get("x-auth-token")
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            supplied = credentials.strip()
        return supplied is not None and hmac.compare_digest(supplied.encode("utf-8", "replace"), expected)

    def require_token(request: Request) -> None:
        """Every API request carries the token in a header (``RequestGate`` checks it first, before the body)."""
        if not authorized(request.headers):
            raise ApiError(401, "unauthorized", _UNAUTHORIZED)

    app = FastAPI(title="ml-supervisor", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=SafeJSONResponse)
    _install_error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # Added last, so outermost: the token and the body's size are checked before anything reads the body.
    app.add_middleware(RequestGate, authorized=authorized, extra_headers=_SECURITY_HEADERS,
                       unauthorized={"error": {"code": "unauthorized", "message": _UNAUTHORIZED}})

    # -- the page (no token: it holds no data; its script asks the API with the token) -----------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Registered on the app itself (not an included router) so ``app.routes`` lists every route: a test
    # walks them all and checks each one refuses a request without the token.
    auth = [Depends(require_token)]

    def api_get(path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return app.get("/api" + path, dependencies=auth, **kwargs)

    def api_post(path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return app.post("/api" + path, dependencies=auth, **kwargs)

    @api_get("/ping")
    def ping() -> dict[str, Any]:
        return {**ops.op_ping(), "templates_dir": str(templates_path)}

    @api_get("/templates")
    def templates() -> list[dict[str, Any]]:
        return [t.as_dict() for t in find_templates(templates_path)]

    @api_post("/launch", status_code=201)
    def launch(body: LaunchRequest) -> dict[str, Any]:
        template = find_template(templates_path, body.template)
        if template is None:
            raise ApiError(404, "template_not_found", f"no template {body.template!r} in {templates_path}")
        if template.error:
            raise ApiError(409, "template_invalid", template.error)
        return _launch(ops, template, body, submit_cwd)

    @api_post("/inspect")
    def inspect(body: InspectRequest) -> dict[str, Any]:
        template = find_template(templates_path, body.template)
        if template is None:
            raise ApiError(404, "template_not_found", f"no template {body.template!r} in {templates_path}")
        if template.error:
            raise ApiError(409, "template_invalid", template.error)
        plan = plan_launch(template, body.values)
        if plan.errors:
            raise ApiError(422, "config_invalid", "some values are not accepted", plan.errors)
        return inspections.inspect(template.path, plan.overrides, body.what, submit_cwd)

    @api_get("/jobs")
    def jobs(limit: int | None = Query(None, ge=0, le=MAX_QUERY_INT), offset: int = Query(0, ge=0, le=MAX_QUERY_INT)
             ) -> list[dict[str, Any]]:
        return ops.op_list(all=True, limit=limit, offset=offset)

    @api_get("/jobs-page")
    def jobs_page(limit: int = Query(JOBS_PAGE, ge=0, le=MAX_JOBS_PAGE),
                  offset: int = Query(0, ge=0, le=MAX_QUERY_INT)) -> dict[str, Any]:
        """The page's jobs list: the active jobs and one page of the finished ones, with the counts."""
        return ops.op_list_page(limit=limit, offset=offset)

    @api_get("/jobs/{job}")
    def job_status(job: str) -> dict[str, Any]:
        return ops.op_status(job)

    @api_get("/jobs/{job}/history")
    def history(job: str) -> list[dict[str, Any]]:
        return ops.op_history(job)

    @api_get("/jobs/{job}/events")
    def job_events(job: str, after: int = Query(0, ge=0, le=MAX_QUERY_INT),
                   limit: int = Query(1000, ge=1, le=10000)
                   ) -> list[dict[str, Any]]:
        return ops.op_events(after=after, job=job, limit=limit)

    @api_get("/events")
    def events(after: int = Query(0, ge=0, le=MAX_QUERY_INT), limit: int = Query(1000, ge=1, le=10000)
               ) -> list[dict[str, Any]]:
        return ops.op_events(after=after, limit=limit)

    @api_get("/jobs/{job}/logs")
    def logs(job: str, attempt: int | None = Query(None, ge=1, le=MAX_QUERY_INT),
             stdout: int | None = Query(None, ge=0, le=MAX_QUERY_INT),
             stderr: int | None = Query(None, ge=0, le=MAX_QUERY_INT),
             tail: int | None = Query(None, ge=1, le=MAX_TAIL)
             ) -> dict[str, Any]:
        offsets = {"stdout": stdout or 0, "stderr": stderr or 0}
        if tail is not None and stdout is None and stderr is None:
            offsets = _tail_offsets(ops, job, attempt, tail)
        return ops.op_logs(job, attempt=attempt, offsets=offsets)

    @api_get("/jobs/{job}/metrics")
    def curve(job: str, attempt: int = Query(0, ge=0, le=MAX_QUERY_INT),
              offset: int = Query(0, ge=0, le=MAX_QUERY_INT)) -> dict[str, Any]:
        status = ops.op_status(job)
        numbers = [a["n"] for a in status["attempts"]]
        return read_points(status["job_dir"], numbers, Cursor(attempt, offset))

    @api_get("/jobs/{job}/profile")
    def profile(job: str, attempt: int | None = Query(None, ge=1)) -> dict[str, Any]:
        status = ops.op_status(job)
        numbers = [a["n"] for a in status["attempts"]]
        n = attempt if attempt is not None else (numbers[-1] if numbers else None)
        if n is None or n not in numbers:
            return {"attempt": n, "files": []}
        return {"attempt": n, "files": read_profile(JobLayout(Path(status["job_dir"])).attempt(n).dir)}

    @api_post("/jobs/{job}/stop")
    def stop(job: str) -> dict[str, Any]:
        return ops.op_stop(job)

    @api_post("/jobs/{job}/restart")
    def restart(job: str) -> dict[str, Any]:
        return ops.op_restart(job)

    add_sweep_routes(api_get, api_post, ops, templates_path=templates_path, cwd=submit_cwd, error=ApiError)

    @api_get("/gpus")
    def gpu_list() -> dict[str, Any]:
        listed = _gpus(gpus)
        return {"nvml": listed is not None, "gpus": listed or []}

    @app.get("/metrics", dependencies=auth)
    def metrics() -> Response:
        text = render_metrics(ops.op_list(all=True), _gpus(gpus), version=__version__)
        return Response(text, media_type=CONTENT_TYPE)

    return app


def _launch(ops: Operations, template: Template, body: LaunchRequest, cwd: Path) -> dict[str, Any]:
    """Check the values against the knobs, then submit through ``op_submit`` (schema + import check)."""
    plan = plan_launch(template, body.values)
    if plan.errors:
        unknown = [k for k in plan.errors if template.knob(k) is None]
        if unknown:  # a crafted request: the page only ever sends the template's knobs
            raise ApiError(400, "not_a_knob", f"{unknown[0]}: {plan.errors[unknown[0]]}", plan.errors)
        raise ApiError(422, "config_invalid", "some values are not accepted", plan.errors)
    try:
        job = ops.op_submit(config_path=str(template.path), cwd=str(cwd), overrides=plan.overrides, name=body.name)
    except ConfigError as exc:
        problem = exc.problem.removesuffix(_CLI_HINT)
        knob = field_for_error(template, exc.key)
        if knob is not None:
            raise ApiError(422, exc.code, exc.message.removesuffix(_CLI_HINT), {knob: problem}) from None
        if exc.key == "name" and body.name is not None:
            raise ApiError(422, exc.code, exc.message, {"name": problem}) from None
        raise ApiError(422, exc.code, exc.message.removesuffix(_CLI_HINT), {}) from None
    except ResourceUnavailable as exc:
        fields = {"supervision.gpus": exc.message} if template.knob("supervision.gpus") else {}
        raise ApiError(409, exc.code, exc.message, fields) from None
    log.info("web: launched %s from template %s (%s)", job["id"], template.name, " ".join(plan.overrides))
    return job


def _tail_offsets(ops: Operations, job: str, attempt: int | None, tail: int) -> dict[str, int]:
    """Offsets that read the last ``tail`` bytes of each stream of the attempt (the latest by default)."""
    status = ops.op_status(job)
    numbers = [a["n"] for a in status["attempts"]]
    n = attempt if attempt is not None else (numbers[-1] if numbers else None)
    if n is None or n not in numbers:
        return {"stdout": 0, "stderr": 0}
    layout = JobLayout(Path(status["job_dir"])).attempt(n)
    offsets = {}
    for stream, path in (("stdout", layout.stdout), ("stderr", layout.stderr)):
        try:
            offsets[stream] = max(0, (regular_size(path) or 0) - tail)  # the owner's file: safe_read
        except OSError:
            offsets[stream] = 0
    return offsets


def _gpus(source: GpuSource | None) -> list[dict[str, Any]] | None:
    if source is None:
        return None
    try:
        return source()
    except Exception:  # a GPU query must never break the page or a scrape
        log.exception("web: listing GPUs failed")
        return None


def _install_error_handlers(app: FastAPI) -> None:
    def answer(status: int, code: str, message: str, fields: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> SafeJSONResponse:
        error: dict[str, Any] = {"code": code, "message": message}
        if fields is not None:
            error["fields"] = fields
        return SafeJSONResponse({"error": error}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> SafeJSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return answer(exc.status, exc.code, exc.message, exc.fields, headers)

    @app.exception_handler(SupervisorError)
    async def supervisor_error(request: Request, exc: SupervisorError) -> SafeJSONResponse:
        status = next((s for cls, s in _STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)
        return answer(status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return answer(400, "bad_request", "; ".join(problems) or "malformed request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> SafeJSONResponse:
        # A bug must answer JSON the page can show, not take the daemon down (uvicorn logs the traceback too).
        log.error("web: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return answer(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        return answer(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
