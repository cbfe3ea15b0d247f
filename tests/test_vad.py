"""Speech activity: one speech:started / speech:ended pair per utterance, none for noise or clicks."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.engine import VoiceEngine
from gateway.frames import HangupSource, SpeechActivity, TransferResult
from gateway.vad import SpeechDetector
from sipp import serve_app

T = 5.0


def speech_like(rate: int, seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like signal: a gliding harmonic-rich source with a ~4 Hz syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = f0 + 30 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    src = sum(np.sin(k * phase) / k for k in range(1, 25) if k * pitch.max() < rate / 2)
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return src * env * 6000 / np.abs(src).max()


def line_noise(rate: int, seconds: float, level: float = 30.0, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, int(rate * seconds))


def pcm(x: np.ndarray) -> bytes:
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def run(detector: SpeechDetector, audio: bytes) -> list[tuple[bool, int]]:
    size = detector.sample_rate // 50 * 2
    events = []
    for i in range(0, len(audio) - size + 1, size):
        change = detector.process(audio[i:i + size])
        if change is not None:
            events.append((change, detector.position_ms))
    return events


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_one_pair_per_burst(rate):
    # silence 1 s | speech 1.5 s | silence 1.2 s | speech 0.8 s | silence 1.5 s
    parts = [line_noise(rate, 1.0), speech_like(rate, 1.5), line_noise(rate, 1.2, seed=2),
             speech_like(rate, 0.8, f0=200, seed=3), line_noise(rate, 1.5, seed=4)]
    events = run(SpeechDetector(rate), pcm(np.concatenate(parts)))
    assert [e[0] for e in events] == [True, False, True, False]
    (_, s1), (_, e1), (_, s2), (_, e2) = events
    # started within 300 ms of the burst's start; ended within 900 ms of its end (hangover, not spam)
    assert 1000 < s1 <= 1300 and 2500 < e1 <= 3400
    assert 3700 < s2 <= 4000 and 4500 < e2 <= 5400


def test_pauses_between_words_do_not_end_speech():
    rate = 8000
    word = speech_like(rate, 0.4)
    gap = line_noise(rate, 0.25)
    audio = np.concatenate([line_noise(rate, 0.5)] + [word, gap] * 5 + [line_noise(rate, 1.5)])
    assert [e[0] for e in run(SpeechDetector(rate), pcm(audio))] == [True, False]


@pytest.mark.parametrize("noise", ["quiet line", "loud white noise", "clicks"])
def test_noise_and_clicks_are_not_speech(noise):
    rate = 8000
    if noise == "quiet line":
        audio = line_noise(rate, 5, level=100)
    elif noise == "loud white noise":
        audio = line_noise(rate, 5, level=1000)  # -30 dBFS of hiss
    else:  # 60 ms bursts of speech-like sound every half second
        audio = np.concatenate([np.concatenate([speech_like(rate, 0.06, seed=i), line_noise(rate, 0.44)])
                                for i in range(10)])
    assert run(SpeechDetector(rate), pcm(audio)) == []


def test_speech_is_dated_by_when_its_first_and_last_voiced_frames_arrived():
    """Frames that arrive unevenly (the sender or this process stalled for 0.5 s while speech began, and again in
    the hangover after it) move neither end of the utterance: its times are those its first and last voiced frames
    came with, not ones counted back 20 ms a frame from the frame that declared the change."""
    rate = 8000
    size = rate // 50 * 2
    audio = pcm(np.concatenate([line_noise(rate, 1.0), speech_like(rate, 1.5), line_noise(rate, 1.5)]))
    frames = [audio[i:i + size] for i in range(0, len(audio) - size + 1, size)]
    probe = SpeechDetector(rate)
    voiced = [n for n, f in enumerate(frames, 1) if probe.is_voiced(f)]    # process() counts frames from 1
    stalls = {voiced[0] + 2, voiced[-1] + 3}
    arrived, at = {}, 100.0
    for n in range(1, len(frames) + 1):
        at += 0.02 + (0.5 if n in stalls else 0.0)
        arrived[n] = at
    d = SpeechDetector(rate)
    changes = {}
    for n, frame in enumerate(frames, 1):
        change = d.process(frame, arrived[n])
        if change is not None:
            changes[change] = (d.onset, d.onset_at) if change else (d.offset, d.offset_at)
    # onset / offset count the frames before speech / up to its end: the start of the first voiced frame (its
    # arrival less 20 ms) and the end of the last
    assert changes[True] == (voiced[0] - 1, arrived[voiced[0]] - 0.02)
    assert changes[False] == (voiced[-1], arrived[voiced[-1]])


class Recorder(VoiceEngine):
    """An in-process engine that records the speech events it is given."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.speech: list[bool] = []

    async def handle_call(self, session) -> None:
        async for item in session:
            if isinstance(item, SpeechActivity):
                self.speech.append(item.speaking)


class FakeLeg:
    async def hangup(self, call, reason: str) -> None:
        pass

    async def transfer(self, call, request) -> None:
        await call.transfer_finished(TransferResult(request.number, "failed"))


async def test_every_call_emits_speech_events_and_feeds_the_engine(make_gateway):
    gw = await make_gateway()
    engine = Recorder()
    gw.engines.register("recorder", engine)
    agent = await gw.store.create_agent({"name": "rec", "engine": "recorder"})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    await call.attach(FakeLeg(), 8000)
    audio = pcm(np.concatenate([line_noise(8000, 0.5), speech_like(8000, 1.0), line_noise(8000, 1.0),
                                speech_like(8000, 0.7, seed=5), line_noise(8000, 1.0)]))
    pos = 0
    for size in [7, 333, 160, 1000, 2] * 1000:  # carriers deliver odd chunk sizes
        call.feed_audio(audio[pos:pos + size])
        pos += size
        if pos >= len(audio):
            break
        await asyncio.sleep(0)  # let the engine keep up, as a socket reader would

    async def four_events():
        while len([e for e in await gw.store.list_call_events(call.log_id) if e["kind"].startswith("speech")]) < 4:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(four_events(), T)
    events = [e for e in await gw.store.list_call_events(call.log_id) if e["kind"].startswith("speech:")]
    assert [e["kind"] for e in events] == ["speech:started", "speech:ended"] * 2
    assert 500 < events[0]["data"]["at_ms"] <= 800
    assert 1000 < events[1]["data"]["duration_ms"] < 2000
    await asyncio.wait_for(_until(lambda: len(engine.speech) == 4), T)
    assert engine.speech == [True, False, True, False]
    await call.end(HangupSource.USER, "done")


async def _until(predicate, step: float = 0.01):
    while not predicate():
        await asyncio.sleep(step)


async def test_speech_webhooks_arrive_in_order(make_gateway):
    from aiohttp import web

    received: list[dict] = []

    async def hook(request):
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner, port = await serve_app(app)
    try:
        gw = await make_gateway(engine="echo", allow_private_webhooks=True)   # receiver on 127.0.0.1
        agent = await gw.store.create_agent({"name": "hooked", "engine": "echo",
                                             "webhook_url": f"http://127.0.0.1:{port}/hook"})
        call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                     to_number="+15550002222", agent=agent)
        await call.attach(FakeLeg(), 16000)
        audio = pcm(np.concatenate([line_noise(16000, 0.4), speech_like(16000, 0.9), line_noise(16000, 1.0)]))
        for i in range(0, len(audio), 640):
            call.feed_audio(audio[i:i + 640])
        await asyncio.wait_for(_until(lambda: sum(r["event"].startswith("speech:") for r in received) == 2), T)
        await call.end(HangupSource.USER, "done")
        await asyncio.wait_for(_until(lambda: any(r["event"] == "post_call" for r in received)), T)
        names = [r["event"] for r in received]
        assert names.index("conversation:started") < names.index("speech:started") < names.index("speech:ended") \
            < names.index("hang_up")
        assert names.count("speech:started") == names.count("speech:ended") == 1
        ended = received[names.index("speech:ended")]
        assert ended["call_id"] == call.id and 800 < ended["data"]["duration_ms"] < 1800
    finally:
        await runner.cleanup()
