"""examples/engine_client.py works against a real Gateway in both directions (connect and accept mode)."""
from __future__ import annotations

import asyncio

import pytest

from conftest import API_KEY, load_example
from gateway.frames import AudioFrame, Dtmf, Mark
from sipp import wait_for
from test_api_fakes import FakeLeg

T = 5.0


@pytest.fixture(scope="module")
def example():
    return load_example("engine_client")


async def exercise(gw, spec: str) -> FakeLeg:
    """Beep + mark first, then echo; '0' transfers; '#' hangs up."""
    agent = await gw.store.create_agent({"name": "ex", "engine": spec,
                                         "settings": {"transfer": {"number": "+15550009999"}}})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    leg = FakeLeg()
    await call.attach(leg, 8000)
    beep = 0
    while not isinstance(item := await asyncio.wait_for(call.next_outbound(), T), Mark):
        beep += 1
    assert beep == 10 and item.name == "beep"   # 200 ms beep = 10 frames of 20 ms
    call.feed_event(Mark("beep"))
    frames = [bytes([i]) * 320 for i in range(1, 6)]
    for f in frames:
        call.feed_audio(f)
    back = [await asyncio.wait_for(call.next_outbound(), T) for _ in frames]
    assert all(isinstance(b, AudioFrame) for b in back)
    if "sample_rate=8000" in spec:
        assert [b.pcm for b in back] == frames
    call.feed_event(Dtmf("0"))
    drain = asyncio.create_task(_drain(call))
    await wait_for(lambda: leg.transfers)
    call.feed_event(Dtmf("#"))
    await wait_for(lambda: call.id not in gw.calls.active)
    drain.cancel()
    row = await gw.store.get_call(call.log_id)
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "caller_requested"
    assert [t.number for t in leg.transfers] == ["+15550009999"]
    return leg


async def _drain(call):
    while True:
        await call.next_outbound()


async def test_example_engine_in_connect_mode(make_gateway, example):
    server = await example.listen("127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await make_gateway()
        await exercise(gw, f"ws://127.0.0.1:{port}/?sample_rate=8000")
        await exercise(gw, f"ws://127.0.0.1:{port}")  # 16 kHz engine, 8 kHz carrier
    finally:
        server.close()
        await server.wait_closed()


async def test_example_engine_in_accept_mode(make_gateway, example):
    gw = await make_gateway()
    url = f"ws://127.0.0.1:{gw.http_port}/engine/ws?pool=demo"
    workers = asyncio.create_task(example.accept_worker(url, API_KEY, 0))
    try:
        hub = gw.engines.accept_hub
        await wait_for(lambda: hub.idle_count("demo") == 1)
        await exercise(gw, "accept:demo?sample_rate=8000")
        await wait_for(lambda: hub.idle_count("demo") == 1)  # back in the pool for the next call
        await exercise(gw, "accept:demo")
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)


async def test_example_engine_stops_on_wrong_key(make_gateway, example):
    gw = await make_gateway()
    with pytest.raises(example.Refused, match="401"):
        await asyncio.wait_for(example.accept_worker(f"ws://127.0.0.1:{gw.http_port}/engine/ws", "nope", 0), T)
