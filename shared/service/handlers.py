"""Where errors become HTTP answers, the same on both services. Every answer is JSON
``{"error": code, "message": what to do}``:

    LatentwireError (shared.errors and the      -> exc.status, exc.body(): the two keys plus the error's
      service's own errors.py)                     own (``file``, ``min_bytes``); ``Retry-After`` from its
                                                   ``retry_after_s`` (a sender waits that long)
    request validation (a query parameter       -> 422 InvalidRequest, "fix the request parameters (...)"
      of the wrong type or out of range)
    routing: no such path / a method the        -> 404 NotFound / 405 MethodNotAllowed (with ``Allow``),
      path does not take                           the message naming what the path takes and /docs, or
                                                   the service's hint for a known mistake (an upload
                                                   POSTed to the receiver, a frame to the sender)
    anything else                               -> 500 InternalError, logged with its traceback; the
                                                   answer carries no internals
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from shared.errors import LatentwireError


def install_error_handlers(app: FastAPI, service: str, *, on_error: Callable[[Request, str], None] | None = None,
                           hints: Mapping[tuple[str, str], str] | None = None) -> None:
    """Answer every error of ``app`` as the module docstring says. ``service`` ("sender" |
    "receiver") names it in messages and picks its logger; ``on_error(request, code)`` sees every
    error answered (metrics); ``hints`` maps (method, path) of a request that cannot work to the
    message it gets instead of a bare 404/405."""
    log = logging.getLogger(f"latentwire.{service}")
    hints = dict(hints or {})

    def answer(request: Request, status: int, body: dict, headers: Mapping[str, str] | None = None) -> JSONResponse:
        if on_error is not None:
            on_error(request, body["error"])
        return JSONResponse(body, status_code=status, headers=headers)

    async def latentwire_error(request: Request, exc: LatentwireError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc,
                        exc_info=exc.__cause__ is not None)
        retry_after = getattr(exc, "retry_after_s", None)
        headers = None if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
        return answer(request, exc.status, exc.body(), headers)

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return answer(request, 422, {"error": "InvalidRequest", "message": f"fix the request parameters ({problems})"})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        try:
            code = HTTPStatus(exc.status_code).phrase.replace(" ", "")  # NotFound, MethodNotAllowed, ...
        except ValueError:
            code = "HTTPError"
        headers = dict(getattr(exc, "headers", None) or {})
        allowed = _allowed(request) if exc.status_code == 405 else ""
        if allowed:  # Starlette's Allow names the methods of the first route of the path only
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"Allow": allowed}
        hint = hints.get((request.method, request.url.path.rstrip("/")))
        if exc.status_code in (404, 405) and hint:
            message = hint
        elif exc.status_code == 404:
            message = f"no such endpoint {request.url.path}: see /docs for the {service}'s API"
        elif exc.status_code == 405:
            message = (f"{request.method} is not allowed on {request.url.path}"
                       + (f", which takes {allowed}" if allowed else "") + f": see /docs for the {service}'s API")
        else:
            message = exc.detail if isinstance(exc.detail, str) else code
        return answer(request, exc.status_code, {"error": code, "message": message}, headers or None)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return answer(request, 500, {"error": "InternalError", "message": f"the {service} hit an unexpected error; "
                                     f"the operator can find it in the {service}'s log. Retrying may help."})

    app.add_exception_handler(LatentwireError, latentwire_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _allowed(request: Request) -> str:
    """The methods the request's path takes, e.g. "GET, POST": each one asked of the app's routes."""
    path = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    return ", ".join(method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
                     if any(route.matches({**path, "method": method})[0] == Match.FULL
                            for route in request.app.router.routes))


def _where(loc: tuple) -> str:
    """("query", "limit") -> "limit": the parameter's name, without where it travelled."""
    return ".".join(str(p) for p in loc[1:]) or ".".join(str(p) for p in loc) or "request"
