"""JSON errors for the API: every failure is `{"success": false, "error", "field"}` with a 4xx/5xx status.

Handlers raise `ApiError`; the middleware turns it (and aiohttp's own 404/405/413, and unexpected exceptions)
into that shape, so no client ever sees an HTML page or a traceback.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .. import safejson

if TYPE_CHECKING:
    from ..carrier import CarrierError

log = logging.getLogger("gateway.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers
        self.extra = extra


def error_body(message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON of every API error (also what a forwarded call op answers with from the owning process)."""
    return {"success": False, "error": message, "field": field, **extra}


def carrier_api_error(e: CarrierError, message: str | None = None, **extra: Any) -> ApiError:
    """A carrier's refusal as the API answers it (status mapped in gateway/carrier_rest.py; a rate limit carries
    `Retry-After`). `message`: the error text after scrubbing secrets, when the caller had some to scrub."""
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return ApiError(e.status, message if message is not None else e.message, e.field, headers=headers, **extra)


def error_response(status: int, message: str, field: str | None = None, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    body = error_body(message, field, **extra)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="telephony-gateway"'
    return web.json_response(body, status=status, headers=headers or None)


def _is_json_path(path: str) -> bool:
    return path.startswith("/api/") or path in ("/healthz", "/metrics")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        # status, path and field only: messages may quote the input
        log.info("API request refused", extra={"source_ip": request.remote, "method": request.method,
                                               "path": request.path, "status": e.status, "field": e.field})
        return error_response(e.status, e.message, e.field, headers=e.headers, **e.extra)
    except web.HTTPException as e:
        if not _is_json_path(request.path) or e.status < 400:
            raise
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: "request body too large"}.get(e.status, e.reason)
        return error_response(e.status, message)
    except Exception:
        if not _is_json_path(request.path):
            raise
        log.exception("API request failed", extra={"method": request.method, "path": request.path})
        return error_response(500, "internal error (logged on the gateway)")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming `body`."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = safejson.loads(raw)
    except safejson.BadJson as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "body")
    return body
