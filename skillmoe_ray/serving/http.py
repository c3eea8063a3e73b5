"""The HTTP edge: access, request bodies and errors, shared by every endpoint.

One error type (:class:`HTTPError`) is raised anywhere below the handlers and
turned into a response in one place (:func:`error_response`), in OpenAI's
error shape (``{"error": {"message", "type", "param", "code"}}``);
:func:`install` routes FastAPI's own errors (unknown path, wrong method) and
any bug through the same place. Every response carries an ``x-request-id``;
the server log has the detail under that id, the client never gets a
traceback, a file path, a process or actor id, or terminal colour codes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..errors import SkillMoEError
from . import metrics

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 503: "server_overloaded", 504: "timeout"}
_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
          415: "unsupported_media_type", 503: "overloaded", 504: "timeout", 500: "internal_error"}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: absolute paths (2+ components): only the last component is shown
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:/[\w.\-@+]+){2,}/?")
_IDS = re.compile(r"\b(?:pid=\d+|ip=[\d.:a-f]+|[0-9a-f]{32,})\b", re.IGNORECASE)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.param = param
        self.code = code


def clean(message: str) -> str:
    """A message fit for a client: no colour codes, no traceback, no paths, no process or actor ids."""
    text = _ANSI.sub("", str(message))
    if "Traceback (most recent call last)" in text:
        text = text.split("Traceback (most recent call last)")[0].strip() or "internal error"
    text = _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    text = _IDS.sub("<id>", text)
    return " ".join(text.split())[:2000]


def error_response(status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    body = {"error": {"message": clean(message), "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code or _CODES.get(status)}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def from_error(e: HTTPError) -> JSONResponse:
    return error_response(e.status, e.message, e.headers, e.param, e.code)


def install(app: Any) -> None:
    """Request ids on every response, and FastAPI's own errors (404, 405, body validation, bugs) in
    OpenAI's error shape, from this one place."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        rid = re.sub(r"[^A-Za-z0-9_.\-]", "", rid)[:64] or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - a bug: logged with its id, never shown
            log.exception("request %s failed", rid)
            response = error_response(500, f"internal error; the server log has the detail under request id {rid}")
        response.headers["x-request-id"] = rid
        # by route template, not raw path: an unknown path must not make a metric series of its own
        metrics.request(getattr(request.scope.get("route"), "path", "unmatched"), response.status_code)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))


def check_access(request: Request, api_key: str | None) -> None:
    """Raises a 401 unless the bearer token matches (compared in constant time); /healthz is open."""
    if not api_key or request.url.path.endswith("/healthz"):
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise HTTPError(401, "missing or wrong API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, or a 4xx saying exactly what is wrong with it."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPError(415, f"content type must be application/json, got {ctype or 'none'!r}")
    body = await request.body()
    if len(body) > max_bytes:
        raise HTTPError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPError(400, "request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    check_unicode(data)
    return data


def check_unicode(value: Any, where: str = "body") -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``), which is no character: refuse it with a 400."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, f"{where}: invalid Unicode (a lone surrogate escape such as \\ud800)",
                            param=where) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_unicode(k, where)
            check_unicode(v, f"{where}.{k}" if where != "body" else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_unicode(v, f"{where}[{i}]")


def validate(model: Any, data: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None
        # a value out of its range is a bad request (OpenAI answers 400); a missing or mistyped field, 422
        ranges = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
        status = 400 if errors and all(e["type"] in ranges for e in errors) else 422
        raise HTTPError(status, detail, param=param) from None


def read_api_key(env_name: str, file: str | None) -> str | None:
    """The API key from a file (first line) or an environment variable; never logged."""
    if file:
        from pathlib import Path

        try:
            key = Path(file).expanduser().read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise SkillMoEError(f"{file}: serving.api_key_file cannot be read or is empty") from None
        return key or None
    return os.environ.get(env_name) or None


def user_error(exc: BaseException) -> SkillMoEError | None:
    """The project error behind an exception, unwrapping Ray's task errors; None for a bug."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        seen += 1
        # Ray re-raises a remote error as a RayTaskError that also subclasses the error's own type, with the
        # whole remote traceback as its text: the original exception is its .cause
        cause = getattr(cur, "cause", None)
        if isinstance(cause, BaseException) and cause is not cur:
            cur = cause
            continue
        if isinstance(cur, SkillMoEError):
            return cur
        cur = cur.__cause__
    return None
