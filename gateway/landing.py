"""The page at `/`: what this gateway serves, one link per page, for whoever opens the bare address.

The list is data (`PAGES`): a new page (a web console, say) is one more entry. An entry shows only while its
route is registered, so `/call` appears only when the WebRTC carrier is loaded.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

from aiohttp import web

from . import __version__

if TYPE_CHECKING:
    from .runtime import Gateway

#: (path, title, what it is)
PAGES: list[tuple[str, str, str]] = [
    ("/console", "Console",
     "numbers and trunks (import, test connection, attach), agents, call history and each call's details"),
    ("/calls/live", "Live calls", "every live call on every carrier: audio meters, hangup and transfer buttons"),
    ("/call", "Browser call", "talk to an agent from this browser's microphone (WebRTC)"),
    ("/api/v1/openapi.json", "REST API (OpenAPI 3.1)",
     "the API document; like every /api/v1 request it needs Authorization: Bearer <API key>"),
    ("/dashboards", "Dashboards", "Grafana dashboards for the metrics below, to import into Grafana"),
    ("/metrics", "Metrics", "Prometheus metrics: calls by carrier and outcome, setup and media latency, call quality "
                            "(RTP/RTCP, MOS), SIP, AMD, engines, webhooks, queue, process (docs/operations.md)"),
    ("/healthz", "Health", "liveness and load as JSON"),
]


def _registered(app: web.Application) -> set[str]:
    return {r.canonical for r in app.router.resources()}


async def landing_page(request: web.Request) -> web.Response:
    routes = _registered(request.app)
    items = "\n".join(f'  <li><a href="{html.escape(path)}">{html.escape(title)}</a> — {html.escape(what)}</li>'
                      for path, title, what in PAGES if path in routes)
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Telephony gateway</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}</style>
</head><body>
<h1>Telephony gateway <small>{html.escape(__version__)}</small></h1>
<ul>
{items}
</ul>
</body></html>
"""
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})


def setup_routes(app: web.Application, gateway: Gateway) -> None:
    app.router.add_get("/", landing_page)
