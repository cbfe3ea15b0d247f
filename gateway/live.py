"""The live calls page (`/calls/live`) and the websocket that pushes it every change (`/calls/live/ws`).

The page never polls: on connect it gets a snapshot of the active calls, then `call_started`, `call_updated` and
`call_ended` messages as the call manager reports them, and a `meters` message a few times a second with each
call's audio levels and frame/drop counters. Hangup and transfer buttons use the REST API with the same key.

Protocol (JSON text frames):
    client → {"type": "auth", "api_key": "<API key>"}           first message, within AUTH_TIMEOUT seconds
    server → {"type": "snapshot", "calls": [call, …]}
             {"type": "call_started" | "call_updated" | "call_ended", "call": call}
             {"type": "meters", "calls": [{"call_id", "level_in", "level_out", "frames_in", "frames_out",
                                           "dropped_in", "dropped_out", "duration"}, …]}
Non-browser clients may send `Authorization: Bearer <key>` on the upgrade request instead of the auth message.
Close codes: 4401 bad/missing key, 4408 no auth message in time, 4429 source banned after repeated bad keys
(gateway/throttle.py), 1001 gateway shutting down.

A slow viewer never holds up a call: each viewer has a bounded backlog; when it overflows the backlog is dropped
and the viewer gets a fresh snapshot instead. Meters are coalesced (only the latest is ever pending).

In cluster mode the page also shows the calls of every other live process (`owner`, `node` say where each call
lives): they are read from the call log every REMOTE_INTERVAL seconds while someone watches and pushed as the same
call_started / call_updated / call_ended messages; their meters are null (they exist only in the owner).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .cluster.livecalls import METER_FIELDS, remote_live_calls

if TYPE_CHECKING:
    from .call import Call
    from .runtime import Gateway

log = logging.getLogger("gateway.live")

METER_INTERVAL = 0.25
REMOTE_INTERVAL = 1.0
AUTH_TIMEOUT = 10.0
BACKLOG_MAX = 200


def call_view(call: Call) -> dict[str, Any]:
    """What the page shows for one call: describe() plus agent name, hangup and outbound drops."""
    view = call.describe()
    view["agent_name"] = (call.agent or {}).get("name")
    view["dropped_out"] = call.bus.counters.dropped_out if call.bus else 0
    view["ended"] = not call.is_active
    view["hangup_source"] = call.hangup.source.value if call.hangup else None
    view["hangup_reason"] = call.hangup.reason if call.hangup else None
    settings = call.manager.gateway.settings
    view["owner"], view["node"] = settings.proc_id, settings.node_id
    view.pop("metadata", None)              # carrier parameters may be private; the page does not need them
    return view


#: the fields whose change makes a remote call's row worth pushing again
_REMOTE_CHANGES = ("status", "amd", "transfer", "owner")


def meters(call: Call) -> dict[str, Any]:
    c = call.bus.counters if call.bus else None
    return {"call_id": call.id, "level_in": c.level_in if c else 0, "level_out": c.level_out if c else 0,
            "frames_in": c.frames_in if c else 0, "frames_out": c.frames_out if c else 0,
            "dropped_in": c.dropped_in if c else 0, "dropped_out": c.dropped_out if c else 0,
            "duration": round(time.monotonic() - (call.answered or call.created), 1)}


class Viewer:
    """One connected page: an ordered, bounded backlog of events plus the latest meters."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.backlog: deque[str] = deque()
        self.meters: str | None = None
        self.resync = False
        self.wake = asyncio.Event()

    def push(self, text: str) -> None:
        if len(self.backlog) >= BACKLOG_MAX:
            self.backlog.clear()
            self.resync = True
        else:
            self.backlog.append(text)
        self.wake.set()

    def push_meters(self, text: str) -> None:
        self.meters = text
        self.wake.set()


class LiveFeed:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.viewers: set[Viewer] = set()
        self._meter_task: asyncio.Task[None] | None = None
        self._remote_task: asyncio.Task[None] | None = None
        self._subscribed = False
        #: other processes' live calls as last read from the call log (call_id → view)
        self.remote: dict[str, dict[str, Any]] = {}
        self._remote_read_at = 0.0

    def snapshot(self) -> str:
        local = [call_view(c) for c in self.gateway.calls.active.values()]
        return json.dumps({"type": "snapshot", "calls": local + list(self.remote.values())})

    def _on_call(self, kind: str, call: Call) -> None:
        if not self.viewers:
            return
        if kind == "call_released":   # adopted by another process: gone from here, listed as its call next read
            kind = "call_ended"
        text = json.dumps({"type": kind, "call": call_view(call)})
        for v in self.viewers:
            v.push(text)

    def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        if not self._subscribed:
            self.gateway.calls.subscribe(self._on_call)
            self._subscribed = True
        if self._meter_task is None or self._meter_task.done():
            self._meter_task = asyncio.create_task(self._meter_loop(), name="live-meters")
        if self.gateway.control.clustered and (self._remote_task is None or self._remote_task.done()):
            self._remote_task = asyncio.create_task(self._remote_loop(), name="live-remote")

    def remove(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers and self._subscribed:
            self.gateway.calls.unsubscribe(self._on_call)
            self._subscribed = False

    async def _meter_loop(self) -> None:
        while self.viewers:
            await asyncio.sleep(METER_INTERVAL)
            active = list(self.gateway.calls.active.values())
            if not active and not self.remote:
                continue
            since_read = time.time() - self._remote_read_at
            remote = [{"call_id": r["call_id"], "duration": round(r["duration"] + since_read, 1),
                       **{k: None for k in METER_FIELDS}} for r in self.remote.values()]
            text = json.dumps({"type": "meters", "calls": [meters(c) for c in active] + remote})
            for v in list(self.viewers):
                v.push_meters(text)

    async def _remote_loop(self) -> None:
        """Read the other processes' live calls and push what changed since the last read."""
        while self.viewers:
            try:
                now = {c["call_id"]: c for c in await remote_live_calls(self.gateway)}
            except Exception:
                log.exception("live page: other processes' calls not read")
                now = self.remote
            self._remote_read_at = time.time()
            old, self.remote = self.remote, now
            out = []
            for cid, view in now.items():
                before = old.get(cid)
                if before is None:
                    out.append({"type": "call_started", "call": view})
                elif any(before.get(k) != view.get(k) for k in _REMOTE_CHANGES):
                    out.append({"type": "call_updated", "call": view})
            out += [{"type": "call_ended", "call": {**view, "ended": True}} for cid, view in old.items()
                    if cid not in now and cid not in self.gateway.calls.active]   # adopted here: not ended
            for msg in out:
                text = json.dumps(msg)
                for v in list(self.viewers):
                    v.push(text)
            await asyncio.sleep(REMOTE_INTERVAL)
        self.remote = {}

    async def close(self) -> None:
        for v in list(self.viewers):
            await v.ws.close(code=1001, message=b"gateway shutting down")
        for task in (self._meter_task, self._remote_task):
            if task is not None:
                task.cancel()


async def _authenticate(request: web.Request, ws: web.WebSocketResponse, gateway: Gateway) -> bool:
    source = request.remote or ""

    if gateway.api_throttle.banned(source):
        await ws.close(code=4429, message=b"too many failed API key attempts from this address")
        return False
    scheme, _, cred = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and cred.strip():
        if gateway.api_key_ok(cred.strip(), source, path=request.path):
            return True
        await ws.close(code=4401, message=b"invalid API key")
        return False
    try:
        msg = await ws.receive(timeout=AUTH_TIMEOUT)
    except TimeoutError:
        await ws.close(code=4408, message=b"send {\"type\": \"auth\", \"api_key\": ...} first")
        return False
    if msg.type != WSMsgType.TEXT:
        await ws.close(code=4401, message=b"first message must be the JSON auth message")
        return False
    try:
        data = json.loads(msg.data)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("type") != "auth" or not isinstance(data.get("api_key"), str):
        await ws.close(code=4401, message=b"first message must be {\"type\": \"auth\", \"api_key\": ...}")
        return False
    if not gateway.api_key_ok(data["api_key"], source, path=request.path):
        await ws.close(code=4401, message=b"invalid API key")
        return False
    return True


async def live_ws(request: web.Request) -> web.WebSocketResponse:
    gateway: Gateway = request.app["gateway"]
    feed: LiveFeed = request.app["live_feed"]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    if not await _authenticate(request, ws, gateway):
        return ws
    viewer = Viewer(ws)
    viewer.push(feed.snapshot())
    feed.add(viewer)
    writer = asyncio.create_task(_write(viewer, feed), name="live-writer")
    try:
        async for msg in ws:              # the page sends nothing after auth; this waits for it to go away
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        feed.remove(viewer)
        writer.cancel()
    return ws


async def _write(viewer: Viewer, feed: LiveFeed) -> None:
    ws = viewer.ws
    try:
        while not ws.closed:
            await viewer.wake.wait()
            viewer.wake.clear()
            if viewer.resync:
                viewer.resync = False
                viewer.backlog.clear()
                await ws.send_str(feed.snapshot())
            while viewer.backlog:
                await ws.send_str(viewer.backlog.popleft())
            if viewer.meters is not None:
                text, viewer.meters = viewer.meters, None
                await ws.send_str(text)
    except (ConnectionResetError, RuntimeError):
        pass                               # the viewer left mid-send


async def live_page(request: web.Request) -> web.Response:
    html = resources.files("gateway.web").joinpath("live.html").read_text()
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


def setup_routes(app: web.Application, gateway: Gateway) -> None:
    feed = LiveFeed(gateway)
    app["live_feed"] = feed
    app.router.add_get("/calls/live", live_page)
    app.router.add_get("/calls/live/ws", live_ws)

    async def _close(_app: web.Application) -> None:
        await feed.close()
    app.on_shutdown.append(_close)
