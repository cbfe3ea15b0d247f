"""The web console at `/console`: numbers and trunks, agents and call history, built on the REST API only.

Plain HTML, CSS and JavaScript from `gateway/web/` (no build step, nothing loaded from elsewhere: the page must
work on a machine that reaches only this gateway). The page holds the API key in the tab's sessionStorage and sends
it as `Authorization: Bearer` on each `/api/v1` request, never in a URL; it shares that storage key with the live
page, so one key entry serves both. Forms are generated from what the API describes (`/api/v1/openapi.json`: the
loaded carriers' import fields, the agent settings schema) and from the values it returns, so a field a carrier or
the API adds appears without a change here.

The response headers keep the page to its own origin: a Content-Security-Policy allowing only this origin's
scripts, styles and API, no framing, no form submission (so a form can never put a value in a URL), and no
Referer sent anywhere.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runtime import Gateway

PATH = "/console"
#: file in gateway/web → its content type
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; media-src 'self' blob: https:; form-action 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _read(name: str) -> str:
    return resources.files("gateway.web").joinpath(name).read_text()


async def console_page(request: web.Request) -> web.Response:
    return web.Response(text=_read("console.html"), content_type="text/html", headers=HEADERS)


def _asset(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=_read(name), content_type=content_type, headers=HEADERS)
    return handler


def setup_routes(app: web.Application, gateway: Gateway) -> None:
    app.router.add_get(PATH, console_page)
    for name, content_type in ASSETS.items():
        app.router.add_get(f"{PATH}/{name}", _asset(name, content_type))
