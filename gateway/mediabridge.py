"""Media ports: what a call leg's audio is connected to instead of the call's engine — hold (music on hold, or
silence), or the other leg of a bridge the gateway relays itself.

A port looks like a Call to whatever carries the leg's media: audio and events in (`feed_audio`, `feed_event`),
audio out. It serves both kinds of media transport with one implementation:

* RTP sessions tick on the shared 20 ms clock and take one frame per tick (`next_outbound_nowait`; the session sends
  G.711 silence when there is none): SIP hold and the SIP bridge (gateway/sip/bridge.py).
* Carrier media websockets (carriers/mediasocket.py) have a sender task that awaits its next item
  (`next_outbound`): the port hands out one 20 ms frame per 20 ms of real time, so a burst from one side (Exotel
  sends 100 ms chunks) reaches the other side at the pace it is played, and `wake()` releases a sender waiting on
  a port it no longer uses.

A bridge port converts what its leg says to the other leg's sample rate (voicecodecs' StreamResampler and
Reframer, as the call bus does) and queues it for the other leg, bounded: a stalled leg can never grow memory.
DTMF is relayed as digits (`SendDtmf`), which each transport sends its own way.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Any

from voicecodecs import Reframer, StreamResampler, frame_bytes

from .frames import AudioFrame, BusItem, Dtmf, SendDtmf, Wake

MAX_QUEUED_FRAMES = 10  # 200 ms: beyond this the oldest audio is dropped (and counted)
RATE = 8000
FRAME_S = 0.020


class _Pacer:
    """Hands out one 20 ms frame per 20 ms of loop time (a little ahead: `lead`); restarts after an idle spell."""

    def __init__(self, lead: float = 0.0) -> None:
        self.due = 0.0
        self.lead = lead

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.due < now - 0.2:        # the first frame, or nothing to send for a while: start from now
            self.due = now
        wait = self.due - self.lead - now
        if wait > 0:
            await asyncio.sleep(wait)
        self.due += FRAME_S


class BridgePort:
    """One leg's end of a gateway bridge: audio in goes to the peer port's queue (at the peer's rate); audio out
    comes from ours."""

    def __init__(self, name: str, rate: int = RATE, max_queued: int = MAX_QUEUED_FRAMES) -> None:
        self.name = name
        self.rate = rate
        self.max_queued = max_queued
        self.bus = True            # RtpSession only checks that a bus exists
        self.peer: BridgePort | None = None
        self.queue: deque[bytes] = deque()
        self.digits: deque[str] = deque()
        self.frames_in = self.frames_out = self.dropped = 0
        self._convert: StreamResampler | None = None
        self._reframe: Reframer | None = None
        self._ready = asyncio.Event()
        self._pacer = _Pacer()
        self.closed = False

    @classmethod
    def pair(cls, a_rate: int = RATE, b_rate: int = RATE, max_queued: int = MAX_QUEUED_FRAMES
             ) -> tuple[BridgePort, BridgePort]:
        """Two linked ports: what `a`'s leg says is queued for `b`'s leg and the other way round."""
        a, b = cls("a", a_rate, max_queued), cls("b", b_rate, max_queued)
        a.link(b)
        b.link(a)
        return a, b

    def link(self, peer: BridgePort) -> None:
        self.peer = peer
        self._reframe = Reframer(frame_bytes(peer.rate))     # (sockets deliver 100 ms chunks and odd sizes)
        if peer.rate != self.rate:
            self._convert = StreamResampler(self.rate, peer.rate)

    def feed_audio(self, pcm: bytes) -> None:
        peer, reframe = self.peer, self._reframe
        if peer is None or reframe is None:
            return
        self.frames_in += 1
        if self._convert is not None:
            pcm = self._convert.process(pcm)
        for frame in reframe.push(pcm):
            peer._put(frame)

    def _put(self, frame: bytes) -> None:
        if len(self.queue) >= self.max_queued:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(frame)
        self._ready.set()

    def feed_event(self, event: Any) -> None:
        if isinstance(event, Dtmf) and self.peer is not None:
            self.peer.digits.append(event.digit)
            self.peer._ready.set()

    def next_outbound_nowait(self) -> BusItem | None:
        if self.digits:
            return SendDtmf(self.digits.popleft())
        if self.queue:
            self.frames_out += 1
            return AudioFrame(self.queue.popleft(), self.rate)
        return None

    async def next_outbound(self, *, on_wire: bool = True) -> BusItem:
        """For a websocket's sender: the peer's next frame (or digits), no faster than one frame per 20 ms; `Wake`
        once the port is closed or `wake()` is called (the sender then looks at its port again)."""
        while not self.closed:
            item = self.next_outbound_nowait()
            if item is not None:
                await self._pacer.wait()
                return item
            self._ready.clear()
            await self._ready.wait()
        return Wake()

    def wake(self) -> None:
        """The sender using this port moves on (the bridge ended, or its socket is closing)."""
        self.closed = True
        self._ready.set()


def pair_stats(a: BridgePort, b: BridgePort) -> dict[str, int]:
    """Frames each way and frames dropped, for the call log (`extra.bridge`)."""
    return {"a_to_b": a.frames_in, "b_to_a": b.frames_in, "dropped": a.dropped + b.dropped}


class HoldPort:
    """A caller on hold: what the caller says goes nowhere, what the caller hears is `music` (20 ms PCM16 frames at
    `rate`, e.g. `Call.hold_frames()`) or, without it, silence."""

    def __init__(self, music: Iterator[bytes] | None = None, rate: int = RATE) -> None:
        self.bus = True            # RtpSession only checks that a bus exists
        self.music = music
        self.rate = rate
        self.inbound_arrived: float | None = None
        self._pacer = _Pacer(lead=0.06)

    def feed_audio(self, pcm: bytes) -> None:
        """The caller's audio while on hold is not heard by anyone."""

    def feed_event(self, event: Any) -> None:
        """Nor are the caller's keys."""

    def next_outbound_nowait(self) -> AudioFrame | None:
        frame = next(self.music, None) if self.music is not None else None
        if frame is None:
            self.music = None
            return None
        return AudioFrame(frame, self.rate)

    async def next_outbound(self, *, on_wire: bool = True) -> BusItem:
        """For a websocket's sender: the next 20 ms of music (silence without it), at real time."""
        await self._pacer.wait()
        return self.next_outbound_nowait() or AudioFrame(bytes(frame_bytes(self.rate)), self.rate)

    def wake(self) -> None:
        """Nothing to release: `next_outbound` returns within 20 ms."""
