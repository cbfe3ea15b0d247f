"""REST API under /api/v1 plus /healthz and /metrics."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..runtime import Gateway


async def healthz(request: web.Request) -> web.Response:
    gw = request.app["gateway"]
    return web.json_response({"status": "ok", **gw.info()})


def setup_api(app: web.Application, gateway: "Gateway") -> None:
    app.router.add_get("/healthz", healthz)
