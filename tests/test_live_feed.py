"""/calls/live/ws: authentication, snapshot, pushed call events and meters, slow-viewer bounds."""
from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import pytest

import gateway.live as live
from conftest import API_KEY
from gateway.frames import AmdResult, AnsweredBy, HangupSource

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class FakeLeg:
    """A carrier leg in the test: pumps 20 ms of tone in, drains the outbound side, records hangups."""

    def __init__(self, call) -> None:
        self.call = call
        self.hung_up = asyncio.Event()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        frame = b"".join(struct.pack("<h", 6000 if (i // 10) % 2 else -6000) for i in range(160))
        while self.call.is_active:
            self.call.feed_audio(frame)
            while self.call.bus is not None and self.call.next_outbound_nowait() is not None:
                pass
            await asyncio.sleep(0.02)

    async def hangup(self, call, reason: str) -> None:
        self.hung_up.set()

    async def transfer(self, call, request) -> None:
        pass


async def start_call(gw, carrier="fakews", from_number="+14155550100"):
    call = await gw.calls.create(carrier=carrier, direction="inbound", from_number=from_number,
                                 to_number="+15005550006")
    leg = FakeLeg(call)
    await call.attach(leg, carrier_rate=8000)
    return call, leg


async def receive_until(ws, pred, timeout=5.0) -> dict:
    async def loop():
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            if pred(data):
                return data
    return await asyncio.wait_for(loop(), timeout)


async def test_feed_pushes_snapshot_events_and_meters(make_gateway):
    gw = await make_gateway(engine="echo")
    call, leg = await start_call(gw)
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url("/calls/live/ws")) as ws:
        await ws.send_json({"type": "auth", "api_key": API_KEY})
        snap = await receive_until(ws, lambda m: m["type"] == "snapshot")
        assert [c["call_id"] for c in snap["calls"]] == [call.id]
        view = snap["calls"][0]
        assert view["carrier"] == "fakews" and view["from_number"] == "+14155550100" and "metadata" not in view

        meters = await receive_until(ws, lambda m: m["type"] == "meters" and m["calls"][0]["level_out"] > 0)
        m = meters["calls"][0]
        assert m["call_id"] == call.id and m["level_in"] > 1000 and m["frames_in"] > 0 and m["dropped_in"] == 0

        second, leg2 = await start_call(gw, from_number="+14155550111")
        started = await receive_until(ws, lambda m: m["type"] == "call_started")
        assert started["call"]["call_id"] == second.id

        await second.set_amd(AmdResult(AnsweredBy.MACHINE_END_BEEP, 2400))
        updated = await receive_until(ws, lambda m: m["type"] == "call_updated" and m["call"]["amd"])
        assert updated["call"]["call_id"] == second.id and updated["call"]["amd"] == "machine_end_beep"

        r = await http.post(gw.url(f"/api/v1/calls/{call.log_id}/hangup"), headers=AUTH)
        assert r.status == 200
        ended = await receive_until(ws, lambda m: m["type"] == "call_ended")
        assert ended["call"]["call_id"] == call.id and ended["call"]["ended"]
        assert ended["call"]["hangup_source"] == "system" and ended["call"]["hangup_reason"] == "api_hangup"
        assert leg.hung_up.is_set()
        await second.end(HangupSource.USER, "stop")
        ended = await receive_until(ws, lambda m: m["type"] == "call_ended")
        assert ended["call"]["call_id"] == second.id and ended["call"]["hangup_source"] == "user"
    feed = gw.app["live_feed"]
    assert not feed.viewers and feed._on_call not in gw.calls._listeners     # unsubscribed when the page left


@pytest.mark.parametrize("first", [{"type": "auth", "api_key": "wrong"}, {"type": "hello"}, "not json"])
async def test_feed_refuses_bad_auth(make_gateway, first):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url("/calls/live/ws")) as ws:
        await (ws.send_str(first) if isinstance(first, str) else ws.send_json(first))
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4401


async def test_feed_accepts_bearer_header_and_times_out_silent_clients(make_gateway, monkeypatch):
    gw = await make_gateway()
    monkeypatch.setattr(live, "AUTH_TIMEOUT", 0.3)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url("/calls/live/ws"), headers=AUTH) as ws:
            snap = await receive_until(ws, lambda m: True)
            assert snap == {"type": "snapshot", "calls": []}
        async with http.ws_connect(gw.url("/calls/live/ws"), headers={"Authorization": "Bearer nope"}) as ws:
            await asyncio.wait_for(ws.receive(), 5)
            assert ws.close_code == 4401
        async with http.ws_connect(gw.url("/calls/live/ws")) as ws:
            await asyncio.wait_for(ws.receive(), 5)
            assert ws.close_code == 4408


def test_slow_viewer_backlog_is_bounded_and_resyncs():
    class WS:
        closed = False
    v = live.Viewer(WS())
    for i in range(live.BACKLOG_MAX + 50):
        v.push(f"event {i}")
    assert len(v.backlog) <= live.BACKLOG_MAX and v.resync
    v.push_meters("m1")
    v.push_meters("m2")
    assert v.meters == "m2"          # meters coalesce: only the latest is pending


async def test_live_page_is_served(make_gateway):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as http, http.get(gw.url("/calls/live")) as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]
        text = await r.text()
    assert "/calls/live/ws" in text and "/api/v1/calls/logs" in text
