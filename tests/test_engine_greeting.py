"""Built-in greeting engine through a real Gateway: the prompt first, then echo; '#' hangs up, '0' transfers."""
from __future__ import annotations

import asyncio

import numpy as np

from gateway.engine.greeting import PROMPT_MARK, load_prompt
from gateway.frames import AudioFrame, Clear, Dtmf, HangupSource, Mark
from sipp import wait_for
from test_api_fakes import FakeLeg
from voicecodecs import StreamResampler

TRANSFER_TO = "+15550009999"


def tone(freq: float, frames: int, rate: int = 8000, amp: int = 8000, start: int = 0) -> bytes:
    n = np.arange(start, start + frames * rate // 50)
    return (amp * np.sin(2 * np.pi * freq * n / rate)).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int = 8000) -> float:
    x = np.frombuffer(pcm, "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def similarity(a: bytes, b: bytes, max_lag: int = 80) -> float:
    """Peak normalised cross-correlation within ±10 ms (a resampler may add a few samples of delay)."""
    x = np.frombuffer(a, "<i2").astype(float)
    y = np.frombuffer(b, "<i2").astype(float)
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        u, v = (x[lag:], y[:len(y) - lag]) if lag >= 0 else (x[:lag], y[-lag:])
        best = max(best, float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9)))
    return best


async def start_call(make_gateway):
    gw = await make_gateway(engine="greeting")
    agent = await gw.store.create_agent({"name": "greeter", "engine": "greeting",
                                         "settings": {"transfer": {"number": TRANSFER_TO}}})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    leg = FakeLeg()
    await call.attach(leg, 8000)
    return gw, call, leg


async def next_out(call, timeout: float = 3.0):
    return await asyncio.wait_for(call.next_outbound(), timeout)


async def test_prompt_plays_first_then_caller_is_echoed(make_gateway):
    gw, call, leg = await start_call(make_gateway)
    # Caller audio that arrives while the prompt plays is not echoed behind it.
    call.feed_audio(tone(1000, 10))
    prompt = bytearray()
    while True:
        item = await next_out(call)
        if isinstance(item, Mark):
            assert item.name == PROMPT_MARK
            break
        assert isinstance(item, AudioFrame) and item.sample_rate == 8000 and len(item.pcm) == 320
        prompt += item.pcm
    # Exactly the packaged WAV (16 kHz engine rate → 8 kHz carrier), padded to whole 20 ms frames.
    src = load_prompt(16000)
    src += b"\0" * (-len(src) % 640)
    expected = StreamResampler(16000, 8000).process(src)
    assert len(prompt) == len(expected)
    assert similarity(bytes(prompt), expected) > 0.98
    assert 3.0 < len(prompt) / 2 / 8000 <= 4.0

    call.feed_event(Mark(PROMPT_MARK))  # the carrier reports the prompt played
    call.feed_audio(tone(300, 10))
    echoed = bytearray()
    while len(echoed) < 10 * 320:
        item = await next_out(call)
        assert isinstance(item, AudioFrame)
        echoed += item.pcm
    assert abs(dominant_hz(bytes(echoed)) - 300) < 20     # the 300 Hz caller audio, not the 1 kHz from before
    assert np.sqrt(np.mean(np.frombuffer(bytes(echoed[640:]), "<i2").astype(float) ** 2)) > 3000
    await call.end(HangupSource.USER, "test done")


async def test_pound_hangs_up_at_once(make_gateway):
    gw, call, leg = await start_call(make_gateway)
    # the whole prompt is queued before anything is played
    await wait_for(lambda: call.bus.outbound.qsize() > 150, 3, 0.01)
    call.feed_event(Dtmf("#"))
    items: list = []
    drain = asyncio.create_task(_drain(call, items))
    await wait_for(lambda: call.id not in gw.calls.active, 3, 0.01)
    drain.cancel()
    # the rest of the prompt was dropped: a Clear went to the carrier and (almost) no prompt audio was played
    assert any(isinstance(i, Clear) for i in items)
    assert sum(isinstance(i, AudioFrame) for i in items) < 20
    assert leg.hangups == ["caller_requested"]
    assert call.hangup.source is HangupSource.AGENT and call.hangup.reason == "caller_requested"
    row = await gw.store.get_call(call.log_id)
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "caller_requested"


async def test_zero_transfers_to_agent_number(make_gateway):
    gw, call, leg = await start_call(make_gateway)
    drain = asyncio.create_task(_drain(call, [], ack_marks=True))
    call.feed_event(Dtmf("0"))
    await wait_for(lambda: leg.transfers, 3, 0.01)
    assert leg.transfers[0].number == TRANSFER_TO
    assert call.transfer_result.outcome == "completed"
    assert call.is_active  # a transfer is not a hangup
    row = await gw.store.get_call(call.log_id)
    assert row["is_call_transfer"] and row["transfer_target"] == TRANSFER_TO
    drain.cancel()
    await call.end(HangupSource.USER, "test done")


async def _drain(call, items: list, ack_marks: bool = False) -> None:
    while True:
        item = await call.next_outbound()
        items.append(item)
        if ack_marks and isinstance(item, Mark):
            call.feed_event(Mark(item.name))
