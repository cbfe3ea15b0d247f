"""Nodes and worker processes: graceful drain (`POST /api/v1/nodes/{proc}/drain`, docs/deploy.md).

`{proc}` is a process id (`<node>` for a single-process node, `<node>.<k>` for worker k) or a node id. The
process that answers drains itself when it is `{proc}`; when `{proc}` is its node and it runs under a
`serve --workers N` supervisor, it asks the supervisor (SIGTERM), which drains every worker of the node.
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import ApiError, read_json
from .validation import as_int, reject_unknown

if TYPE_CHECKING:
    from ..runtime import Gateway

#: set by the supervisor in each worker's environment: the process to signal to drain the whole node.
SUPERVISOR_PID_ENV = "GATEWAY_SUPERVISOR_PID"


def supervisor_pid() -> int | None:
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    return int(raw) if raw.isdigit() else None


async def drain(request: web.Request) -> web.Response:
    gw: "Gateway" = request.app["gateway"]
    proc = request.match_info["proc"]
    body = await read_json(request)
    reject_unknown(body, {"timeout"})
    timeout = as_int(body["timeout"], "timeout", minimum=0) if body.get("timeout") is not None else None
    s = gw.settings
    if proc == s.proc_id:
        gw.begin_drain(timeout)
        return web.json_response({"success": True, "proc": proc, "state": "draining",
                                  "live_calls": len(gw.calls.active)}, status=202)
    sup = supervisor_pid()
    if proc == s.node_id and sup is not None:
        if timeout is not None:
            raise ApiError(400, "a node drain uses the node's --drain-timeout; send a timeout only to one "
                                "process", "timeout")
        os.kill(sup, signal.SIGTERM)
        return web.json_response({"success": True, "proc": proc, "state": "draining", "workers": s.workers},
                                 status=202)
    raise ApiError(404, f"process {proc!r} is not served here (this is {s.proc_id!r} of node {s.node_id!r})",
                   "proc")


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/nodes/{{proc}}/drain", drain)
