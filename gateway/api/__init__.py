"""REST API under /api/v1 plus /healthz and /metrics.

Every /api/v1 request needs `Authorization: Bearer <api key>` (compared in constant time). /healthz and
/metrics are open: load balancers and Prometheus scrape them without credentials, and they reveal only counts.
A source address that fails the key `auth_max_failures` times within `auth_failure_window` seconds gets 429 with
Retry-After for `auth_ban_seconds` (gateway/throttle.py); every refusal is logged with its source IP and path.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from ..metrics_workers import SCOPE_PROCESS, node_exposition
from . import agents, calls, nodes, numbers, openapi, queue, recordings
from .errors import error_middleware, error_response

if TYPE_CHECKING:
    from ..runtime import Gateway

PREFIX = "/api/v1"
log = logging.getLogger("gateway.api")


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        gw = request.app["gateway"]
        source = request.remote or ""
        wait = gw.api_throttle.banned(source)
        if wait:
            log.warning("API request refused", extra={"source_ip": source, "method": request.method,
                                                      "path": request.path, "reason": "banned", "status": 429})
            return error_response(429, "too many failed API key attempts from this address: try again later",
                                  "Authorization", headers={"Retry-After": str(math.ceil(wait))})
        if not gw.api_key_ok(_bearer(request), source, method=request.method, path=request.path):
            missing = not request.headers.get("Authorization")
            return error_response(401, "missing API key: send 'Authorization: Bearer <key>'" if missing
                                  else "invalid API key", "Authorization")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """200 `ok`; 503 `draining` while draining, so HTTP load balancers send new webhooks elsewhere."""
    gw = request.app["gateway"]
    if gw.draining:
        return web.json_response({"status": "draining", **gw.info()}, status=503)
    return web.json_response({"status": "ok", **gw.info()})


async def metrics_handler(request: web.Request) -> web.Response:
    """This process's series; under `--workers N` (unless `?scope=process`) every worker's of the node, each
    labelled `proc` (gateway/metrics_workers.py)."""
    gw = request.app["gateway"]
    accept = request.headers.get("Accept", "")
    if gw.settings.worker_index > 0 and request.query.get("scope") != SCOPE_PROCESS:
        body, content_type = await node_exposition(gw, accept)
    else:
        body, content_type = gw.metrics.render(accept)
    return web.Response(body=body, headers={"Content-Type": content_type, "X-Gateway-Proc": gw.settings.proc_id})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi.build(request.app["gateway"]))


def setup_api(app: web.Application, gateway: Gateway) -> None:
    app[numbers.IMPORT_LOCK] = asyncio.Lock()
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi_handler)
    numbers.add_routes(app, PREFIX)
    agents.add_routes(app, PREFIX)
    calls.add_routes(app, PREFIX)
    queue.add_routes(app, PREFIX)
    recordings.add_routes(app, PREFIX)
    nodes.add_routes(app, PREFIX)
