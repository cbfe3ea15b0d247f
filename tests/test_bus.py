"""Frame bus: back-pressure never reaches the carrier reader; rate conversion at the edges; clear."""
import asyncio

from gateway.bus import CallBus
from gateway.frames import AudioFrame, Clear, Dtmf, Mark


def test_inbound_drops_oldest_audio_and_counts():
    bus = CallBus(8000, 16000, inbound_max=10)
    frame = b"\x01\x00" * 160
    for _ in range(25):
        bus.feed_audio(frame)  # nobody reads: a stalled engine
    assert len(bus.inbound) == 10
    assert bus.counters.dropped_in == 15
    assert bus.counters.frames_in == 25


def test_events_outrank_audio_when_full():
    bus = CallBus(8000, 8000, inbound_max=3)
    bus.feed_audio(b"\x00\x00" * 160)
    bus.feed_event(Dtmf("1"))
    bus.feed_audio(b"\x00\x00" * 160)
    bus.feed_event(Dtmf("2"))  # full: the oldest audio frame goes, not the DTMF
    items = [bus.inbound.get_nowait() for _ in range(3)]
    assert [type(i) for i in items] == [Dtmf, AudioFrame, Dtmf]
    assert bus.counters.dropped_in == 1


async def test_stalled_engine_does_not_stall_reader():
    bus = CallBus(8000, 16000, inbound_max=50)

    async def reader():  # a carrier socket reader feeding 2 s of audio as fast as it can
        for _ in range(100):
            bus.feed_audio(b"\x10\x00" * 160)
            await asyncio.sleep(0)

    await asyncio.wait_for(reader(), 1.0)
    assert bus.counters.dropped_in == 50
    item = await bus.inbound.get()
    assert isinstance(item, AudioFrame) and item.sample_rate == 16000 and len(item.pcm) == 640


async def test_outbound_converts_to_carrier_rate_in_20ms_frames():
    bus = CallBus(8000, 16000)
    await bus.play(b"\x00\x01" * 1000)  # 62.5 ms at 16 kHz: 3 whole frames, remainder kept
    frames = []
    while (item := bus.next_outbound_nowait()) is not None:
        frames.append(item)
    assert len(frames) == 3
    assert all(isinstance(f, AudioFrame) and len(f.pcm) == 320 and f.sample_rate == 8000 for f in frames)


async def test_clear_drops_audio_keeps_marks():
    bus = CallBus(8000, 8000)
    await bus.play(b"\x00\x00" * 160 * 5)
    await bus.send_control(Mark("m1"))
    dropped = bus.clear()
    assert dropped == 5
    assert isinstance(bus.next_outbound_nowait(), Mark)
    assert isinstance(bus.next_outbound_nowait(), Clear)
