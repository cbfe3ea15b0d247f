"""Nodes and worker processes: graceful drain (`POST /api/v1/nodes/{proc}/drain`, docs/deploy.md).

`{proc}` is a process id (`<node>` for a single-process node, `<node>.<k>` for worker k) or a node id. The
process that answers drains itself when it is `{proc}`; when `{proc}` is its node and it runs under a
`serve --workers N` supervisor, it asks the supervisor (SIGTERM), which drains every worker of the node. Any other
live process (or every live process of another node) is asked over the control bus (op `drain`).
"""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..cluster.control import Reply
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
    gw: Gateway = request.app["gateway"]
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
    targets = [n["proc"] for n in await gw.store.list_nodes(s.stale_after) if n["alive"]
               and (n["proc"] == proc or n["node_id"] == proc)] if gw.control.clustered else []
    if not targets:
        raise ApiError(404, f"no live process or node {proc!r} (this is {s.proc_id!r} of node {s.node_id!r})",
                       "proc")
    replies = await asyncio.gather(*(gw.control.request(t, "drain", {"timeout": timeout}) for t in targets))
    if len(targets) == 1 and replies[0] is not None:
        return web.json_response(replies[0].body, status=replies[0].status, headers=replies[0].headers)
    silent = [t for t, r in zip(targets, replies, strict=True) if r is None or not r.ok]
    if silent:
        raise ApiError(504, f"no answer to the drain request from {', '.join(silent)}", "proc")
    return web.json_response({"success": True, "proc": proc, "state": "draining", "processes": targets},
                             status=202)


def _drain_handler(gw: Gateway) -> Callable[[dict[str, Any]], Awaitable[Reply]]:
    async def handler(args: dict[str, Any]) -> Reply:
        timeout = args.get("timeout")
        gw.begin_drain(float(timeout) if isinstance(timeout, (int, float)) else None)
        return Reply(202, {"success": True, "proc": gw.settings.proc_id, "state": "draining",
                           "live_calls": len(gw.calls.active)})
    return handler


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/nodes/{{proc}}/drain", drain)
    gw: Gateway = app["gateway"]
    gw.control.handle("drain", _drain_handler(gw))
