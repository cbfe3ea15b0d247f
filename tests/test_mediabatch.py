"""Carrier audio of one loop iteration delivered together (gateway/mediabatch.py): order per stream, the engine's
answers resampled in a batch and written exactly as without one, errors reported to their stream."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from gateway import mediabatch
from gateway.bus import CallBus
from gateway.frames import AudioFrame, Clear, Dtmf
from voicecodecs import StreamResampler
from voicecodecs.resample import BATCH_MIN

CALLS = BATCH_MIN + 4
FRAME_8K = 320


def speech(seed: int, frames: int) -> list[bytes]:
    """Loud, varied 8 kHz frames (some saturate the resampler's output)."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(160 * frames) * (3000 + 4000 * (seed % 5)), -32768, 32767)
    pcm = x.astype("<i2").tobytes()
    return [pcm[i : i + FRAME_8K] for i in range(0, len(pcm), FRAME_8K)]


class BusInlet:
    """What a call does with a stream's audio, minus the taps: its bus (`Call.feed_audio`, `Call.resample_job`)."""

    def __init__(self, bus: CallBus) -> None:
        self.bus = bus

    def resample_job(self, pcm: bytes) -> tuple[StreamResampler, bytes] | None:
        return self.bus.inbound_job(pcm)

    def feed_audio(self, pcm: bytes) -> None:
        self.bus.feed_audio(pcm)

    def feed_event(self, event: Any) -> None:
        self.bus.feed_event(event)


class Stream:
    def __init__(self, inlet: Any) -> None:
        self.inlet = inlet
        self.errors: list[Exception] = []

    def batch_failed(self, error: Exception) -> None:
        self.errors.append(error)


class Recorder:
    """An inlet that records what it is given, in order."""

    def __init__(self, log: list[tuple[str, Any]], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def feed_audio(self, pcm: bytes) -> None:
        if self.fail:
            raise ValueError("inlet broke")
        self.log.append((self.name, pcm))

    def feed_event(self, event: Any) -> None:
        self.log.append((self.name, event))


async def until(cond: Any, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout)


async def test_audio_and_digits_arrive_after_the_reader_returns_in_order_and_errors_reach_their_stream() -> None:
    batch = mediabatch.for_loop(asyncio.get_running_loop())
    log: list[tuple[str, Any]] = []
    a, b = Stream(Recorder(log, "a")), Stream(Recorder(log, "b"))
    broken = Stream(Recorder(log, "x", fail=True))
    batch.feed_audio(a, b"a1")
    batch.feed_audio(broken, b"x1")
    batch.feed_event(a, Dtmf("5"))
    batch.feed_audio(b, b"b1")
    batch.feed_audio(a, b"a2")
    assert log == []                       # nothing is delivered inside the reader's callback
    await until(lambda: len(log) == 4)
    assert log == [("a", b"a1"), ("a", Dtmf("5")), ("b", b"b1"), ("a", b"a2")]
    assert [str(e) for e in broken.errors] == ["inlet broke"] and not a.errors and not b.errors
    batch.feed_audio(b, b"b2")             # the next iteration's batch
    await until(lambda: len(log) == 5)
    assert log[-1] == ("b", b"b2")


async def run_echo_calls(batched: bool) -> list[list[bytes]]:
    """CALLS buses, each with an engine that echoes every frame synchronously (as the built-in echo does) and a
    sender that writes what it is handed; every call gets 12 frames, each loop iteration one frame per call."""
    loop = asyncio.get_running_loop()
    batch = mediabatch.for_loop(loop)
    buses = [CallBus(8000, 16000) for _ in range(CALLS)]
    written: list[list[bytes]] = [[] for _ in range(CALLS)]
    tasks = []
    for i, bus in enumerate(buses):
        def echo(frame: AudioFrame, bus: CallBus = bus) -> bool:
            return bus.play_nowait(frame.pcm)

        def write(frame: AudioFrame, out: list[bytes] = written[i]) -> bool:
            out.append(frame.pcm)
            return True
        tasks.append(asyncio.create_task(bus.next_inbound(echo)))
        tasks.append(asyncio.create_task(bus.next_outbound(write)))
    await asyncio.sleep(0)                 # both have started waiting on their empty queues
    streams = [Stream(BusInlet(bus)) for bus in buses]
    sources = [speech(i, 12) for i in range(CALLS)]
    for f in range(12):
        for i, stream in enumerate(streams):
            if batched:
                batch.feed_audio(stream, sources[i][f])
            else:
                stream.inlet.feed_audio(sources[i][f])
        await until(lambda f=f: all(len(w) == f + 1 for w in written))
    for t in tasks:
        t.cancel()
    return written


async def test_engine_answers_resampled_in_a_batch_are_written_exactly_as_without_one() -> None:
    assert await run_echo_calls(batched=True) == await run_echo_calls(batched=False)


async def test_a_deferred_frame_keeps_its_place_before_a_clear() -> None:
    """Inside a batch, `play_nowait` of a whole frame is only recorded; a `clear()` right behind it carries it out
    first, so it is dropped as it would have been without the batch."""
    batch = mediabatch.for_loop(asyncio.get_running_loop())
    buses = [CallBus(8000, 16000) for _ in range(CALLS)]
    cleared: list[int] = []
    for bus in buses:
        def engine(frame: AudioFrame, bus: CallBus = bus) -> bool:
            assert bus.play_nowait(frame.pcm)
            cleared.append(bus.clear())
            return True
        asyncio.get_running_loop().create_task(bus.next_inbound(engine))
    await asyncio.sleep(0)
    for i, bus in enumerate(buses):
        batch.feed_audio(Stream(BusInlet(bus)), speech(i, 1)[0])
    await until(lambda: len(cleared) == CALLS)
    assert cleared == [1] * CALLS
    for bus in buses:
        assert isinstance(bus.next_outbound_nowait(), Clear) and bus.next_outbound_nowait() is None


class Clock:
    """mediabatch's `time`: a monotonic clock the test moves, and the sleeps asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def feed(batch: mediabatch.MediaBatch, stream: Stream, log: list[tuple[str, Any]], n: int) -> None:
    """n frames in one loop iteration, then wait until they are delivered."""
    want = len(log) + n
    for i in range(n):
        batch.feed_audio(stream, b"f%d" % i)
    await until(lambda: len(log) == want)


async def test_a_busy_loop_pauses_after_a_small_batch_only(monkeypatch) -> None:
    """`gateway serve --media-coalesce-ms`: once the loop has delivered PAUSE_FROM frames a second over a whole
    second, a batch of fewer than PAUSE_BELOW frames is followed by the pause (the next poll then reads many
    sockets at once); a larger batch, a quiet loop (few streams: their latency is worth more than the CPU) or a
    pause of 0 never sleep; set_pause reaches the batch a loop already has."""
    clock = Clock()
    monkeypatch.setattr(mediabatch, "time", clock)
    loop = asyncio.get_running_loop()
    monkeypatch.setitem(mediabatch._batches, loop, mediabatch.MediaBatch(loop))
    batch = mediabatch.for_loop(loop)
    log: list[tuple[str, Any]] = []
    stream = Stream(Recorder(log, "a"))
    mediabatch.set_pause(0.002)
    try:
        assert batch.pause == 0.002
        await feed(batch, stream, log, 1)
        clock.now += 1.0                         # a quiet second: 2 frames
        await feed(batch, stream, log, 1)
        await feed(batch, stream, log, 1)
        assert clock.slept == []
        await feed(batch, stream, log, mediabatch.PAUSE_FROM)    # a busy second
        clock.now += 1.0
        await feed(batch, stream, log, 1)
        assert clock.slept == [0.002]
        await feed(batch, stream, log, mediabatch.PAUSE_BELOW)   # a large batch: no pause
        assert clock.slept == [0.002]
        mediabatch.set_pause(0)
        await feed(batch, stream, log, 1)
        assert clock.slept == [0.002]
    finally:
        mediabatch.set_pause(0)
    with pytest.raises(ValueError):
        mediabatch.set_pause(-0.001)
    assert batch.pause == 0


async def test_the_pause_holds_the_loop_at_least_that_long(monkeypatch) -> None:
    """The real sleep: the flush of a small batch of a busy loop returns no sooner than the pause (a lower bound
    only: a busy machine may hold it longer)."""
    loop = asyncio.get_running_loop()
    batch = mediabatch.MediaBatch(loop)
    monkeypatch.setitem(mediabatch._batches, loop, batch)
    log: list[tuple[str, Any]] = []
    stream = Stream(Recorder(log, "a"))
    mediabatch.set_pause(0.02)
    try:
        batch._busy, batch._since = True, time.monotonic()    # a busy loop, its rate window just started
        t0 = time.monotonic()
        await feed(batch, stream, log, 1)        # (delivered, then slept, in one callback)
        assert time.monotonic() - t0 >= 0.02
    finally:
        mediabatch.set_pause(0)
