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


async def _parked(task: asyncio.Task) -> None:
    """Let `task` run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()


async def test_a_waiting_engine_takes_caller_audio_in_the_feeding_call_and_events_keep_their_order():
    bus = CallBus(8000, 16000)
    taken: list[AudioFrame] = []
    accept = True

    def on_audio(frame: AudioFrame) -> bool:
        if accept:
            taken.append(frame)
        return accept

    waiter = asyncio.create_task(bus.next_inbound(on_audio))
    await _parked(waiter)
    bus.feed_audio(b"\x10\x00" * 160)            # taken at once, in this call: nothing queued
    assert len(taken) == 1 and taken[0].sample_rate == 16000 and len(bus.inbound) == 0
    bus.feed_event(Dtmf("5"))                    # events always go through the queue...
    bus.feed_audio(b"\x20\x00" * 160)            # ...and audio behind them too, in order
    assert len(taken) == 1 and len(bus.inbound) == 2
    assert await waiter == Dtmf("5")
    assert isinstance(await bus.next_inbound(on_audio), AudioFrame)

    accept = False                               # declined: the frame is queued for the waiting engine
    waiter = asyncio.create_task(bus.next_inbound(on_audio))
    await _parked(waiter)
    bus.feed_audio(b"\x30\x00" * 160)
    assert isinstance(await waiter, AudioFrame)
    assert bus._engine_direct is None           # not handed anything once it stopped waiting
    bus.feed_audio(b"\x40\x00" * 160)
    assert len(taken) == 1 and len(bus.inbound) == 1


async def test_an_engine_callback_that_fails_gets_its_frames_through_the_queue(caplog):
    bus = CallBus(8000, 8000)
    calls = 0

    def broken(frame: AudioFrame) -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("engine bug")

    waiter = asyncio.create_task(bus.next_inbound(broken))
    await _parked(waiter)
    bus.feed_audio(b"\x10\x00" * 160)            # the carrier's reader is not hit by the engine's exception
    bus.feed_audio(b"\x20\x00" * 160)
    assert calls == 1 and "engine audio callback failed" in caplog.text
    assert isinstance(await waiter, AudioFrame) and len(bus.inbound) == 1


async def test_a_waiting_sender_gets_single_engine_frames_directly_and_bursts_through_the_queue():
    bus = CallBus(8000, 16000)
    written: list[AudioFrame] = []

    def direct(frame: AudioFrame) -> bool:
        written.append(frame)
        return True

    sender = asyncio.create_task(bus.next_outbound(direct))
    await _parked(sender)
    await bus.play(b"\x10\x00" * 320)             # one 20 ms engine frame: written in this call
    assert len(written) == 1 and written[0].sample_rate == 8000 and bus.outbound.empty()
    assert bus.counters.frames_out == 1
    assert bus.play_nowait(b"\x10\x00" * 320) and len(written) == 2
    await bus.play(b"\x10\x00" * 320 * 5)         # a burst is queued: a clear() right behind it still drops it
    assert len(written) == 2 and bus.outbound.qsize() == 5
    assert bus.clear() == 5
    assert isinstance(await sender, Clear)
    await bus.play(b"\x10\x00" * 320)             # nobody waiting: queued
    assert len(written) == 2 and bus.outbound.qsize() == 1


async def test_play_nowait_declines_when_the_outbound_queue_lacks_room():
    bus = CallBus(8000, 8000, outbound_max=10)
    assert bus.play_nowait(b"\x00\x00" * 160 * 3)
    assert bus.outbound.qsize() == 3
    assert not bus.play_nowait(b"\x00\x00" * 160 * 5)   # might not fit: nothing taken
    assert bus.outbound.qsize() == 3
