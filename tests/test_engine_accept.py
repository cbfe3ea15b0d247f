"""Websocket engine bridge, accept mode: an engine connects to the gateway's /engine/ws and is handed a call."""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import API_KEY
from gateway.engine.ws_bridge import AcceptEngine
from gateway.frames import AudioFrame, HangupSource
from sipp import wait_for
from test_api_fakes import FakeLeg

T = 5.0


def engine_url(gw, query: str = "") -> str:
    return f"ws://127.0.0.1:{gw.http_port}/engine/ws{query}"


def auth(key: str = API_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def new_call(gw, spec: str):
    agent = await gw.store.create_agent({"name": "bot", "engine": spec})
    call = await gw.calls.create(carrier="test", direction="outbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    leg = FakeLeg()
    await call.attach(leg, 8000)
    return call, leg


async def finished_row(gw, call) -> dict:
    drain = asyncio.create_task(_drain(call))
    try:
        await wait_for(lambda: call.id not in gw.calls.active)
    finally:
        drain.cancel()
    return await gw.store.get_call(call.log_id)


async def _drain(call):
    while True:
        await call.next_outbound()


async def test_connected_engine_is_handed_the_call_and_echoes(make_gateway):
    gw = await make_gateway()
    hub = gw.engines.accept_hub
    async with connect(engine_url(gw, "?pool=sales"), additional_headers=auth()) as ws:
        await wait_for(lambda: hub.idle_count("sales") == 1)
        call, leg = await new_call(gw, "accept:sales?sample_rate=8000")
        start = json.loads(await asyncio.wait_for(ws.recv(), T))
        assert start["type"] == "start" and start["call_id"] == call.id and start["direction"] == "outbound"
        assert start["audio"]["sample_rate"] == 8000
        assert hub.idle_count("sales") == 0
        frames = [bytes([i]) * 320 for i in range(1, 6)]
        for f in frames:
            call.feed_audio(f)
        for f in frames:
            data = await asyncio.wait_for(ws.recv(), T)
            assert data == f
            await ws.send(data)
        back = [await asyncio.wait_for(call.next_outbound(), T) for _ in frames]
        assert all(isinstance(b, AudioFrame) for b in back) and [b.pcm for b in back] == frames
        await call.end(HangupSource.USER, "caller_left")
        msg = json.loads(await asyncio.wait_for(ws.recv(), T))
        assert msg == {"type": "hangup", "source": "user", "reason": "caller_left"}
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1000


async def test_calls_wait_for_an_engine_that_connects_late(make_gateway):
    gw = await make_gateway()
    call, leg = await new_call(gw, "accept")
    async with connect(engine_url(gw), additional_headers=auth()) as ws:  # pool "default"
        start = json.loads(await asyncio.wait_for(ws.recv(), T))
        assert start["call_id"] == call.id and start["audio"]["sample_rate"] == 16000
        await ws.send(json.dumps({"type": "hangup", "reason": "done"}))
        row = await finished_row(gw, call)
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "done"


async def test_no_engine_within_the_wait_hangs_up(make_gateway, monkeypatch):
    monkeypatch.setattr(AcceptEngine, "wait_s", 0.3)
    gw = await make_gateway()
    # an engine in another pool does not take the call
    async with connect(engine_url(gw, "?pool=other"), additional_headers=auth()):
        await wait_for(lambda: gw.engines.accept_hub.idle_count("other") == 1)
        call, leg = await new_call(gw, "accept:sales")
        row = await finished_row(gw, call)
    assert leg.hangups == ["engine_unavailable"]
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "engine_unavailable"


async def test_each_call_takes_its_own_connection(make_gateway):
    gw = await make_gateway()
    hub = gw.engines.accept_hub
    async with connect(engine_url(gw), additional_headers=auth()) as a, \
            connect(engine_url(gw), additional_headers=auth()) as b:
        await wait_for(lambda: hub.idle_count() == 2)
        c1, _ = await new_call(gw, "accept")
        c2, _ = await new_call(gw, "accept")
        ids = {json.loads(await asyncio.wait_for(ws.recv(), T))["call_id"] for ws in (a, b)}
        assert ids == {c1.id, c2.id}
        await c1.end(HangupSource.USER, "x")
        await c2.end(HangupSource.USER, "x")


async def test_idle_engine_that_leaves_is_not_handed_a_call(make_gateway, monkeypatch):
    monkeypatch.setattr(AcceptEngine, "wait_s", 0.3)
    gw = await make_gateway()
    hub = gw.engines.accept_hub
    async with connect(engine_url(gw), additional_headers=auth()):
        await wait_for(lambda: hub.idle_count() == 1)
    await wait_for(lambda: hub.idle_count() == 0)
    call, leg = await new_call(gw, "accept")
    row = await finished_row(gw, call)
    assert row["hangup_reason"] == "engine_unavailable"


@pytest.mark.parametrize("headers", [{}, auth("wrong-key"), {"Authorization": API_KEY}])
async def test_engine_route_needs_the_api_key(make_gateway, headers):
    gw = await make_gateway()
    with pytest.raises(websockets.InvalidStatus) as e:
        async with connect(engine_url(gw), additional_headers=headers):
            pass
    assert e.value.response.status_code == 401
    assert b"API key" in e.value.response.body
    assert gw.engines.accept_hub.idle_count() == 0


async def test_bad_pool_name_is_rejected(make_gateway):
    gw = await make_gateway()
    with pytest.raises(websockets.InvalidStatus) as e:
        async with connect(engine_url(gw, "?pool=no%20spaces"), additional_headers=auth()):
            pass
    assert e.value.response.status_code == 400 and b"pool" in e.value.response.body


async def test_message_before_start_is_a_policy_violation(make_gateway):
    gw = await make_gateway()
    async with connect(engine_url(gw), additional_headers=auth()) as ws:
        await wait_for(lambda: gw.engines.accept_hub.idle_count() == 1)
        await ws.send(json.dumps({"type": "clear"}))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1008
    assert gw.engines.accept_hub.idle_count() == 0


async def test_garbage_from_accepted_engine_ends_call(make_gateway):
    gw = await make_gateway()
    async with connect(engine_url(gw), additional_headers=auth()) as ws:
        await wait_for(lambda: gw.engines.accept_hub.idle_count() == 1)
        call, leg = await new_call(gw, "accept")
        await asyncio.wait_for(ws.recv(), T)
        await ws.send("{{{")
        row = await finished_row(gw, call)
        with pytest.raises(websockets.ConnectionClosedError):
            while True:
                await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1007
    assert row["hangup_reason"] == "engine_protocol_error"


async def test_accepted_engine_disconnecting_ends_call(make_gateway):
    gw = await make_gateway()
    ws = await connect(engine_url(gw), additional_headers=auth())
    await wait_for(lambda: gw.engines.accept_hub.idle_count() == 1)
    call, leg = await new_call(gw, "accept")
    await asyncio.wait_for(ws.recv(), T)
    await ws.close(1011, "engine crashed")
    row = await finished_row(gw, call)
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "engine_disconnected"


async def test_idle_engines_are_told_on_shutdown(make_gateway):
    gw = await make_gateway()
    async with connect(engine_url(gw), additional_headers=auth()) as ws:
        await wait_for(lambda: gw.engines.accept_hub.idle_count() == 1)
        await asyncio.wait_for(gw.stop(), T)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1001


async def test_call_that_ends_while_waiting_does_not_consume_an_engine(make_gateway):
    gw = await make_gateway()
    hub = gw.engines.accept_hub
    call, leg = await new_call(gw, "accept")
    await wait_for(lambda: hub._waiting.get("default"))  # the call is waiting for an engine
    await call.end(HangupSource.USER, "caller_gave_up")
    await wait_for(lambda: not hub._waiting.get("default"))
    async with connect(engine_url(gw), additional_headers=auth()):
        await wait_for(lambda: hub.idle_count() == 1)  # free for the next call, not handed a dead one


async def test_redirect_op_sends_an_idle_engine_elsewhere(make_gateway):
    gw = await make_gateway()
    hub = gw.engines.accept_hub
    target = "ws://127.0.0.1:1/engine/ws?pool=sales"
    reply = await gw.control.run_local("engine:redirect", {"pool": "sales", "url": target})
    assert reply.status == 404 and reply.body["field"] == "pool"          # nobody idle here
    for args, bad in (({"pool": "no spaces", "url": target}, "pool"), ({"pool": "sales"}, "url"),
                      ({"pool": "sales", "url": "http://127.0.0.1:1/engine/ws"}, "url")):
        reply = await gw.control.run_local("engine:redirect", args)
        assert reply.status == 400 and reply.body["field"] == bad
    async with connect(engine_url(gw, "?pool=sales"), additional_headers=auth()) as ws:
        await wait_for(lambda: hub.idle_count("sales") == 1)
        reply = await gw.control.run_local("engine:redirect", {"pool": "sales", "url": target})
        assert reply.status == 200
        assert json.loads(await asyncio.wait_for(ws.recv(), T)) == {"type": "redirect", "url": target}
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 1000 and ws.close_reason == "redirect"
    assert hub.idle_count("sales") == 0


async def test_engine_url_reaches_this_process(make_gateway):
    single = await make_gateway()
    assert single.direct_port is None
    assert single.engines.accept_hub.engine_url("a.b") == f"ws://127.0.0.1:{single.http_port}/engine/ws?pool=a.b"
    # a worker shares the node's HTTP port, so its own URL names a private port of its own
    worker = await make_gateway(worker_index=1, workers=2)
    hub = worker.engines.accept_hub
    url = hub.engine_url("sales")
    assert worker.direct_port not in (None, worker.http_port)
    assert url == f"ws://127.0.0.1:{worker.direct_port}/engine/ws?pool=sales"
    async with connect(url, additional_headers=auth()):
        await wait_for(lambda: hub.idle_count("sales") == 1)
