"""Per-call frame bus: bounded queues in both directions with rate conversion at the edges.

The inbound side (carrier → engine) is fed from carrier socket readers, which must never block: when the engine
falls behind, the oldest *audio* is dropped and counted (events are never dropped while audio can go instead).
The outbound side (engine → carrier) is bounded too, but there the producer is the engine, which may wait.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from voicecodecs import Reframer, StreamResampler, frame_bytes
from voicecodecs._audioop import audioop
from voicecodecs.resample import resample_many

from .frames import AudioFrame, BusItem, Clear

log = logging.getLogger("gateway.bus")

#: while a list (`defer_plays`, for the length of one synchronous batch of deliveries: gateway/mediabatch.py), a
#: `play_nowait` of one whole engine frame is only recorded on its bus and listed here; `settle_plays` then
#: resamples them together and carries each out, in the same callback
_deferring: list[CallBus] | None = None


def defer_plays() -> list[CallBus]:
    """Start recording whole-frame `play_nowait`s (see `_deferring`); hand the list to `settle_plays`."""
    global _deferring
    _deferring = []
    return _deferring


def settle_plays(buses: list[CallBus]) -> None:
    """Carry out the plays recorded since `defer_plays`, their 16 → 8 kHz (…) resampling in one batch."""
    global _deferring
    _deferring = None
    resample_many([(bus._down, bus._deferred) for bus in buses if bus._deferred is not None])
    for bus in buses:
        try:
            bus.settle()
        except Exception:    # what play_nowait raised in the engine's callback (the carrier's writer failing)
            log.exception("deferred engine audio failed")

#: one frame in this many is timed through the bus (gateway_media_turnaround_seconds): once a second of audio,
#: so the cost per frame is an identity test, not a histogram update
TURNAROUND_SAMPLE = 50


@dataclass
class BusCounters:
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0
    dropped_out: int = 0   # frames discarded by clear()/barge-in
    #: the last carrier-rate frame each way: meters show its RMS, computed when they read it (a few times a
    #: second) instead of for every frame (100 a second per call)
    last_in: bytes = b""
    last_out: bytes = b""

    @property
    def level_in(self) -> int:
        """RMS of the last inbound frame, for meters."""
        return int(audioop.rms(self.last_in, 2))

    @property
    def level_out(self) -> int:
        """RMS of the last outbound frame, for meters."""
        return int(audioop.rms(self.last_out, 2))


class DropOldestQueue:
    """A bounded queue whose put never blocks: on overflow it discards the oldest audio frame.

    Events (DTMF, marks, hangup) outrank audio; if the queue is full of events only (a flood), the oldest item of
    any kind goes, so memory stays bounded at `maxsize` whatever the sender does.
    """

    def __init__(self, maxsize: int, counters: BusCounters) -> None:
        self.maxsize = maxsize
        self._items: deque[BusItem] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._counters = counters

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: BusItem) -> None:
        items = self._items
        if len(items) >= self.maxsize:
            self._drop_one()
        items.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _drop_one(self) -> None:
        items = self._items
        for i, it in enumerate(items):
            if isinstance(it, AudioFrame):
                del items[i]
                break
        else:
            items.popleft()
        self._counters.dropped_in += 1

    async def get(self) -> BusItem:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> BusItem | None:
        return self._items.popleft() if self._items else None


class CallBus:
    """Moves frames between a carrier leg at `carrier_rate` and an engine at `engine_rate`."""

    def __init__(self, carrier_rate: int, engine_rate: int, inbound_max: int = 50, outbound_max: int = 500) -> None:
        self.carrier_rate = carrier_rate
        self.engine_rate = engine_rate
        self.counters = BusCounters()
        self.inbound = DropOldestQueue(inbound_max, self.counters)
        self.outbound: asyncio.Queue[BusItem] = asyncio.Queue(outbound_max)
        self._outbound_max = outbound_max     # (`outbound.maxsize` is a property: once per frame in play_nowait)
        self._in_frame = Reframer(frame_bytes(carrier_rate))
        self._out_frame = Reframer(frame_bytes(engine_rate))
        self._up = StreamResampler(carrier_rate, engine_rate)
        self._down = StreamResampler(engine_rate, carrier_rate)
        self._out_carrier_frame = Reframer(frame_bytes(carrier_rate))
        self._engine_frame = frame_bytes(engine_rate)
        #: set by clear() until the carrier's sender has carried the Clear out: a sender holding audio (pacing
        #: before a large chunk) drops it at once instead of sending it first (Exotel's clear was ~100 ms late)
        self.clear_pending = asyncio.Event()
        #: called with ("in" | "out", seconds) for the sampled frames (Call.attach sets it to the histogram)
        self.on_turnaround: Callable[[str, float], None] | None = None
        self._probe_in: tuple[AudioFrame, float] | None = None
        self._probe_out: tuple[AudioFrame, float] | None = None
        #: set while the carrier's sender waits in next_outbound() on an empty queue and can write a frame
        #: synchronously: engine audio is handed to it at once instead of through the queue and a task switch
        self._direct: Callable[[AudioFrame], bool] | None = None
        #: the same the other way: set while the engine waits in next_inbound() on an empty queue and takes
        #: caller audio synchronously (EngineSession.receive(on_audio=…))
        self._engine_direct: Callable[[AudioFrame], bool] | None = None
        #: an engine frame `play_nowait` took while plays are deferred (`defer_plays`), not yet carried out
        self._deferred: bytes | None = None

    def inbound_job(self, pcm: bytes) -> tuple[StreamResampler, bytes] | None:
        """The resampling `feed_audio(pcm)` will do, when it is one whole frame (for `resample_many`)."""
        if len(pcm) == self._in_frame.size and not self._in_frame.pending:
            return self._up, pcm
        return None

    # carrier → engine -------------------------------------------------------------------------------------
    def feed_audio(self, pcm: bytes) -> None:
        """Carrier-rate PCM16 of any length; never blocks."""
        rf = self._in_frame       # (a whole frame with nothing held back is its own frame: no call, voicecodecs)
        for chunk in (pcm,) if len(pcm) == rf.size and not rf.held and type(pcm) is bytes else rf.push(pcm):
            self.counters.frames_in += 1
            self.counters.last_in = chunk
            frame = AudioFrame(self._up.process(chunk), self.engine_rate)
            sampled = self.counters.frames_in % TURNAROUND_SAMPLE == 0 and self.on_turnaround is not None
            direct = self._engine_direct
            if direct is not None and not self.inbound._items and self._engine_takes(direct, frame, sampled):
                continue
            if sampled:
                self._probe_in = (frame, time.perf_counter())
            self.inbound.put_nowait(frame)

    def _engine_takes(self, direct: Callable[[AudioFrame], bool], frame: AudioFrame, sampled: bool) -> bool:
        """Give a caller frame straight to the waiting engine; False (queue it) when it declines or fails. An
        engine's exception must not reach the carrier's socket reader: it is logged and the engine gets its
        frames through the queue from then on."""
        try:
            if not direct(frame):
                return False
        except Exception:
            log.exception("engine audio callback failed; frames go through the queue")
            self._engine_direct = None
            return False
        if sampled and self.on_turnaround is not None:
            self.on_turnaround("in", 0.0)     # it waited in no queue
        return True

    def feed_event(self, event: BusItem) -> None:
        self.inbound.put_nowait(event)

    async def next_inbound(self, direct: Callable[[AudioFrame], bool] | None = None) -> BusItem:
        """The engine's next item (waits); a sampled frame's time in the queue is reported as turnaround "in".
        `direct`: while this waits on an empty queue, caller audio frames are given to `direct` (which must not
        block, and returns False to have the frame queued instead); events, and audio behind them, are queued."""
        if direct is not None and not len(self.inbound):
            self._engine_direct = direct
            try:
                item = await self.inbound.get()
            finally:
                self._engine_direct = None
        else:
            item = await self.inbound.get()
        probe = self._probe_in
        if probe is not None and probe[0] is item:
            self._probe_in = None
            self._turnaround("in", probe[1])
        return item

    def _turnaround(self, direction: str, since: float) -> None:
        if self.on_turnaround is not None:
            self.on_turnaround(direction, time.perf_counter() - since)

    # engine → carrier -------------------------------------------------------------------------------------
    async def play(self, pcm: bytes) -> None:
        """Engine-rate PCM16 of any length; waits while the outbound queue is full."""
        if self._deferred is not None:
            self.settle()
        chunks = self._out_frame.push(pcm)
        for chunk in chunks:
            await self._put_out_audio(chunk, len(chunks) == 1)

    def play_nowait(self, pcm: bytes) -> bool:
        """`play()` when the outbound queue has room for all of `pcm` (never waits); False: nothing was taken."""
        cap = self._outbound_max
        # (engine frames in `pcm` and the re-framers' partial frames, each at most two carrier frames)
        if cap and self.outbound.qsize() + 2 * (len(pcm) // self._engine_frame + 2) > cap:
            return False
        if self._deferred is not None:
            self.settle()
        deferring = _deferring
        if deferring is not None and len(pcm) == self._engine_frame and not self._out_frame.pending:
            self._deferred = pcm            # carried out by settle_plays, in this same callback
            deferring.append(self)
            return True
        self._play_now(pcm)
        return True

    def _play_now(self, pcm: bytes) -> None:
        rf = self._out_frame
        chunks = (pcm,) if len(pcm) == rf.size and not rf.held and type(pcm) is bytes else rf.push(pcm)
        for chunk in chunks:
            for item in self._out_items(chunk, len(chunks) == 1):
                self.outbound.put_nowait(item)

    def settle(self) -> None:
        """Carry out a deferred `play_nowait` (there was room for it then, and only settled plays add to the queue
        since). Everything else that touches the outbound side settles first, so the order stays the engine's."""
        pcm, self._deferred = self._deferred, None
        if pcm is not None:
            self._play_now(pcm)

    async def flush_play(self) -> None:
        """Push out a partial trailing frame padded with silence (end of an utterance)."""
        if self._deferred is not None:
            self.settle()
        tail = self._out_frame.flush(pad=True)
        if tail:
            await self._put_out_audio(tail, True)

    async def _put_out_audio(self, chunk: bytes, single: bool) -> None:
        for item in self._out_items(chunk, single):
            await self.outbound.put(item)

    def _out_items(self, chunk: bytes, single: bool) -> list[AudioFrame]:
        """The carrier frames of an engine-rate chunk that are to be queued. `single`: the chunk is all the engine
        gave this time; only then may its frame go straight to a waiting sender (`_direct`) instead: a longer
        burst is queued, so a clear() right behind it still drops it unsent."""
        rf, out = self._out_carrier_frame, self._down.process(chunk)
        frames = (out,) if len(out) == rf.size and not rf.held else rf.push(out)
        items: list[AudioFrame] = []
        for frame in frames:
            self.counters.last_out = frame
            item = AudioFrame(frame, self.carrier_rate)
            direct = self._direct
            if (direct is not None and single and len(frames) == 1 and self.outbound.empty()
                    and self._hand_over(direct, item)):
                continue
            # only a frame with nothing queued ahead measures the gateway; one behind queued speech measures
            # how much speech the engine sent ahead of time
            if (not items and self.outbound.empty() and self.on_turnaround is not None
                    and self.counters.frames_out % TURNAROUND_SAMPLE == 0):
                self._probe_out = (item, time.perf_counter())
            items.append(item)
        return items

    async def send_control(self, item: BusItem) -> None:
        """Queue a control item (mark, DTMF, hangup, transfer) in order behind the audio already queued."""
        if self._deferred is not None:
            self.settle()
        await self.outbound.put(item)

    def clear(self) -> int:
        """Barge-in: drop queued outbound audio now and tell the carrier to flush its own buffer."""
        if self._deferred is not None:
            self.settle()
        dropped = 0
        kept: list[BusItem] = []
        q = self.outbound
        while not q.empty():
            item = q.get_nowait()
            if isinstance(item, AudioFrame):
                dropped += 1
            else:
                kept.append(item)
        self._out_frame.reset()
        self._out_carrier_frame.reset()
        self._probe_out = None
        self.counters.dropped_out += dropped
        for item in kept:
            q.put_nowait(item)
        if not q.full():
            q.put_nowait(Clear())
            self.clear_pending.set()
        return dropped

    def _hand_over(self, direct: Callable[[AudioFrame], bool], item: AudioFrame) -> bool:
        """Give a frame straight to the waiting sender (nothing is queued ahead of it); False if it declined (the
        socket is closing or its peer reads slowly: the frame is queued instead)."""
        if not direct(item):
            return False
        n = self.counters.frames_out
        if n % TURNAROUND_SAMPLE == 0 and self.on_turnaround is not None:
            self.on_turnaround("out", 0.0)     # it waited in no queue
        self.counters.frames_out = n + 1
        return True

    async def next_outbound(self, direct: Callable[[AudioFrame], bool] | None = None) -> BusItem:
        """The carrier's next item (waits). `direct`: while this waits on an empty queue, engine audio frames are
        given to `direct` (which writes one synchronously and says whether it did) instead of being queued; items
        other than audio, and audio behind them, still come through the queue in order."""
        q = self.outbound
        if direct is not None and q.empty():
            self._direct = direct
            try:
                item = await q.get()
            finally:
                self._direct = None
        else:
            item = await q.get()
        if isinstance(item, AudioFrame):
            self.counters.frames_out += 1
            self._sent(item)
        return item

    def _sent(self, item: AudioFrame) -> None:
        probe = self._probe_out
        if probe is not None and probe[0] is item:
            self._probe_out = None
            self._turnaround("out", probe[1])

    def next_outbound_nowait(self) -> BusItem | None:
        """For clock-driven senders (RTP): the next item or None when nothing is queued."""
        try:
            item = self.outbound.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if isinstance(item, AudioFrame):
            self.counters.frames_out += 1
            self._sent(item)
        return item

