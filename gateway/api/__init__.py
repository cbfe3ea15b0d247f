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
from . import agents, calls, models, nodes, numbers, openapi, queue, recordings, responses
from .errors import error_middleware, error_response
from .models import parse
from .routes import api_route, ok, reply

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
    """200 `ok` once everything that takes calls is up (SIP, RTP, the control bus, the carriers); 503 `starting`
    before that (the HTTP port is bound first) and `draining` while draining, so HTTP load balancers and the
    `--workers` supervisor send new calls elsewhere."""
    gw = request.app["gateway"]
    if gw.draining:
        return reply(responses.Health, status="draining", **gw.info(), _status=503)
    waiting = gw.waiting_for()
    if waiting:
        return reply(responses.Health, status="starting", waiting_for=waiting, **gw.info(), _status=503)
    return reply(responses.Health, status="ok", **gw.info())


async def metrics_handler(request: web.Request) -> web.Response:
    """This process's series; under `--workers N` (unless `?scope=process`) every worker's of the node, each
    labelled `proc` (gateway/metrics_workers.py)."""
    gw = request.app["gateway"]
    accept = request.headers.get("Accept", "")
    scope = parse(models.MetricsQuery, request.query).scope
    if gw.settings.worker_index > 0 and scope != SCOPE_PROCESS:
        body, content_type = await node_exposition(gw, accept)
    else:
        body, content_type = gw.metrics.render(accept)
    return web.Response(body=body, headers={"Content-Type": content_type, "X-Gateway-Proc": gw.settings.proc_id})


async def openapi_handler(request: web.Request) -> web.Response:
    return ok(responses.OpenApiDocument.model_validate(openapi.build(request.app["gateway"], request.app)))


def setup_api(app: web.Application, gateway: Gateway) -> None:
    app[numbers.IMPORT_LOCK] = asyncio.Lock()
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)
    api_route(app, "GET", "/healthz", healthz, "Liveness for load balancers (503 while draining)", tag="meta",
              response=responses.Health, auth=False, errors=(),
              also=((503, responses.Health, "Starting or draining: send new calls elsewhere"),))
    api_route(app, "GET", "/metrics", metrics_handler, "Prometheus exposition (text 0.0.4, or OpenMetrics by "
              "Accept); under --workers N every worker's series of the node", tag="meta", query=models.MetricsQuery,
              response=None, content_type="text/plain", auth=False, errors=(400,))
    api_route(app, "GET", f"{PREFIX}/openapi.json", openapi_handler, "This document", tag="meta",
              response=responses.OpenApiDocument, errors=(401,))
    numbers.add_routes(app, PREFIX)
    agents.add_routes(app, PREFIX)
    calls.add_routes(app, PREFIX)
    queue.add_routes(app, PREFIX)
    recordings.add_routes(app, PREFIX)
    nodes.add_routes(app, PREFIX)
