"""The HTTP edge: access, request bodies and errors, shared by every endpoint.

One error type (:class:`HTTPError`) is raised anywhere below the handlers and
turned into a response in one place (:func:`error_response`), in OpenAI's
error shape, so a client never sees a stack trace.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..errors import SkillMoEError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          503: "server_overloaded", 504: "timeout"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": None, "code": status}}
    return JSONResponse(status_code=status, content=body, headers=headers)


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
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPError(400, "request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def validate(model: Any, data: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise HTTPError(422, detail) from None


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
    while cur is not None and seen < 5:
        if isinstance(cur, SkillMoEError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__  # RayTaskError keeps the remote exception in .cause
        seen += 1
    return None
