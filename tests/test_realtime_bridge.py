"""examples/realtime_bridge.py between a real Gateway and a local Realtime-style stand-in (tests/fakes/
realtime_server.py): caller audio reaches the model at 24 kHz, the model's audio reaches the caller at 24 kHz, and
the model's `input_audio_buffer.speech_started` becomes a `clear` (barge-in)."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from conftest import load_example
from fakes.realtime_server import RealtimeStandIn
from gateway.frames import AudioFrame, Clear, HangupSource
from sipp import wait_for

T = 5.0
FRAME = 960   # 20 ms of PCM16 at 24 kHz


@pytest.fixture(scope="module")
def example():
    return load_example("realtime_bridge")


class FakeLeg:
    async def hangup(self, call, reason: str) -> None:
        pass


@contextlib.asynccontextmanager
async def bridged_call(make_gateway, example, query: str, carrier_rate: int, barge_after: int = 10):
    """A Realtime stand-in, the example bridge in connect mode in front of it, and a call whose agent dials it."""
    async with RealtimeStandIn(barge_after=barge_after) as model:
        bridge = await example.listen("127.0.0.1", 0, model.url)
        try:
            port = bridge.sockets[0].getsockname()[1]
            gw = await make_gateway()
            agent = await gw.store.create_agent({"name": "s2s", "engine": f"ws://127.0.0.1:{port}/{query}"})
            call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                         to_number="+15550002222", agent=agent)
            await call.attach(FakeLeg(), carrier_rate)
            yield gw, call, model
        finally:
            bridge.close()
            await bridge.wait_closed()


async def _ended(gw, call) -> dict:
    """Read the call's output until it is over; its call-log row."""
    drain = asyncio.create_task(_drain(call))
    await wait_for(lambda: call.id not in gw.calls.active, T, 0.01)
    drain.cancel()
    return await gw.store.get_call(call.log_id)


async def test_audio_flows_both_ways_at_24khz_and_speech_started_clears(make_gateway, example):
    # a 24 kHz carrier leg: no resampling, so bytes compare exactly
    async with bridged_call(make_gateway, example, "?sample_rate=24000", 24000) as (gw, call, model):
        frames = [bytes([i, 0]) * (FRAME // 2) for i in range(1, 13)]
        back = []
        for f in frames[:9]:   # one at a time, so each echo is taken before the barge-in could drop it
            call.feed_audio(f)
            back.append(await asyncio.wait_for(call.next_outbound(), T))
        assert all(isinstance(b, AudioFrame) and b.sample_rate == 24000 for b in back), back
        assert [b.pcm for b in back] == frames[:9]
        # the 10th append makes the model say speech_started right after echoing it → the bridge sends clear →
        # the carrier is told to flush (the 10th echo itself may already be dropped by that clear: not heard)
        call.feed_audio(frames[9])
        items = [await asyncio.wait_for(call.next_outbound(), T)]
        while items[-1] != Clear():
            items.append(await asyncio.wait_for(call.next_outbound(), T))
        assert [i.pcm for i in items[:-1]] in ([], [frames[9]]), items
        # the model heard the caller at 24 kHz, in 20 ms appends, after asking for 24 kHz PCM both ways
        assert model.appended == frames[:10]
        pcm = {"type": "audio/pcm", "rate": 24000}
        assert model.session["audio"]["input"]["format"] == pcm
        assert model.session["audio"]["output"]["format"] == pcm
        for f in frames[10:]:   # and the conversation goes on after the barge-in
            call.feed_audio(f)
            item = await asyncio.wait_for(call.next_outbound(), T)
            assert isinstance(item, AudioFrame) and item.pcm == f
        await call.end(HangupSource.USER, "done")
        await asyncio.wait_for(model.closed.wait(), T)   # the gateway's hangup closes the model's socket


async def test_model_going_away_hangs_up_the_call(make_gateway, example):
    async with bridged_call(make_gateway, example, "?sample_rate=24000", 8000) as (gw, call, model):
        await wait_for(lambda: model.session is not None, T, 0.01)
        model.drop()
        row = await _ended(gw, call)
        assert row["hangup_source"] == "agent" and row["hangup_reason"] == "realtime_closed", row


async def test_a_call_not_at_24khz_is_refused(make_gateway, example):
    async with bridged_call(make_gateway, example, "", 8000) as (gw, call, model):
        row = await _ended(gw, call)
        assert row["hangup_reason"] == "engine_needs_24khz" and model.session is None, row


async def _drain(call):
    while True:
        await call.next_outbound()
