"""REST API under /api/v1 plus /healthz and /metrics.

Every /api/v1 request needs `Authorization: Bearer <api key>` (compared in constant time). /healthz and
/metrics are open: load balancers and Prometheus scrape them without credentials, and they reveal only counts.
"""
from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING

from aiohttp import web

from .. import metrics
from . import agents, calls, nodes, numbers, openapi
from .errors import error_middleware, error_response

if TYPE_CHECKING:
    from ..runtime import Gateway

PREFIX = "/api/v1"


def _authorized(request: web.Request, key: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or not key:
        return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler):
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        gw = request.app["gateway"]
        if not _authorized(request, gw.api_key or ""):
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
    body = metrics.render(request.app["gateway"])
    return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi.build(request.app["gateway"]))


def setup_api(app: web.Application, gateway: "Gateway") -> None:
    app[numbers.IMPORT_LOCK] = asyncio.Lock()
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi_handler)
    numbers.add_routes(app, PREFIX)
    agents.add_routes(app, PREFIX)
    calls.add_routes(app, PREFIX)
    nodes.add_routes(app, PREFIX)
