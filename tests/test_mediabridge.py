"""The media ports of gateway/mediabridge.py on their own: a bridge port converts to the other leg's rate and 20 ms
frames, relays digits, bounds its queue, and releases a waiting sender on wake(); a hold port plays music then
silence at the leg's rate."""
from __future__ import annotations

import asyncio

from gateway.frames import AudioFrame, Dtmf, SendDtmf, Wake
from gateway.mediabridge import BridgePort, HoldPort, pair_stats


async def test_bridge_converts_rate_and_frames_and_relays_digits():
    a, b = BridgePort.pair(8000, 16000, max_queued=100)
    a.feed_audio(b"\x10\x00" * 800)                # 100 ms at 8 kHz, one chunk (Exotel's size)
    a.feed_event(Dtmf("5"))
    first = b.next_outbound_nowait()
    assert first == SendDtmf("5")                   # digits go first
    frames = []
    while (item := b.next_outbound_nowait()) is not None:
        frames.append(item)
    assert frames and all(isinstance(f, AudioFrame) and f.sample_rate == 16000 and len(f.pcm) == 640 for f in frames)
    assert 3 <= len(frames) <= 5                    # 100 ms, less the resampler's delay
    b.feed_audio(b"\x00\x00" * 1600)                # 100 ms at 16 kHz → 8 kHz frames for a
    back = [a.next_outbound_nowait() for _ in range(len(a.queue))]
    assert back and all(isinstance(f, AudioFrame) and f.sample_rate == 8000 and len(f.pcm) == 320 for f in back)
    assert pair_stats(a, b) == {"a_to_b": 1, "b_to_a": 1, "dropped": 0}


async def test_bridge_queue_is_bounded_and_wake_releases_the_sender():
    a, b = BridgePort.pair(8000, 8000, max_queued=5)
    for _ in range(12):
        a.feed_audio(b"\x01\x00" * 160)
    assert len(b.queue) == 5 and b.dropped == 7
    item = await asyncio.wait_for(b.next_outbound(), 2)
    assert isinstance(item, AudioFrame) and item.sample_rate == 8000
    b.queue.clear()
    waiting = asyncio.ensure_future(b.next_outbound())
    await asyncio.sleep(0)
    assert not waiting.done()
    b.wake()
    assert isinstance(await asyncio.wait_for(waiting, 2), Wake)


async def test_hold_port_plays_music_then_silence_at_its_rate():
    music = iter([b"\x02\x00" * 320])
    hold = HoldPort(music, 16000)
    hold.feed_audio(b"\x00" * 640)                  # heard by nobody
    first = await asyncio.wait_for(hold.next_outbound(), 2)
    second = await asyncio.wait_for(hold.next_outbound(), 2)
    assert isinstance(first, AudioFrame) and first.pcm == b"\x02\x00" * 320 and first.sample_rate == 16000
    assert isinstance(second, AudioFrame) and second.pcm == bytes(640)
