"""Grafana dashboards for the gateway's /metrics series, served so the landing page can link them.

The dashboard files live in the repository's `deploy/grafana/` (next to the other deployment files, where
operators look for them). They are found beside the source tree, or under the working directory (the Docker image
and the systemd units run from the checkout's root); when neither has any, no route is added and the landing page
shows no link. `/dashboards` lists them with how to import one; `/dashboards/<file>.json` is the file itself.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runtime import Gateway

PATH = "/dashboards"
#: where dashboards are looked for, first match wins
SEARCH: list[Path] = [Path(__file__).resolve().parent.parent / "deploy" / "grafana",
                      Path.cwd() / "deploy" / "grafana"]


def find() -> dict[str, Path]:
    """The dashboard files of the first SEARCH directory that has any, by file name."""
    for folder in SEARCH:
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if files:
            return {f.name: f for f in files}
    return {}


def setup_routes(app: web.Application, gateway: Gateway) -> None:
    files = find()
    if not files:
        return

    async def index(request: web.Request) -> web.Response:
        items = "\n".join(f'  <li><a href="{PATH}/{html.escape(name)}" download>{html.escape(name)}</a></li>'
                          for name in files)
        body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dashboards — telephony gateway</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}</style>
</head><body>
<h1>Grafana dashboards</h1>
<p>Built on this gateway's <a href="/metrics">/metrics</a> series. In Grafana: <em>Dashboards → New → Import</em>,
upload the file and choose the Prometheus data source that scrapes the gateway.</p>
<ul>
{items}
</ul>
<p><a href="/">All pages</a></p>
</body></html>
"""
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def dashboard(request: web.Request) -> web.Response:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(text="no such dashboard")
        return web.Response(body=path.read_bytes(), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get(PATH, index)
    app.router.add_get(PATH + "/{name}", dashboard)
