"""Carrier audio of one event-loop iteration delivered together, so the calls share the resampler's numpy calls.

A media websocket's reader handles each message in `data_received` (carriers/wsdirect.py). With hundreds of
streams one epoll wake-up reads dozens of sockets, and for each frame the 8 → 16 kHz resampling in and the
16 → 8 kHz resampling of the engine's answer (a synchronous engine such as the built-in echo) are several numpy
calls each around a tiny product: call overhead, not arithmetic (BENCHMARKS.md, "What each step costs per 20 ms
frame"). A reader that has a batch hands its frames (and its digits, to keep their order) to `feed_audio` /
`feed_event` instead of the call; the first of an iteration schedules one `call_soon` (no timer: it runs right
after this iteration's I/O callbacks, before the loop waits again), which then

1. computes every call's inbound resampling in a few numpy calls (`voicecodecs.resample.resample_many`: the
   results are kept in the resamplers and taken by `process()`, bit for bit what it would compute),
2. delivers the frames and events to each stream's inlet (the call, or its hold / bridge port) in arrival order,
   while `CallBus.play_nowait` only records the whole engine frames it is given (gateway/bus.py, `defer_plays`),
3. resamples those together and carries them out (`settle_plays`): a waiting sender writes them as before.

Order per stream is kept (audio and digits go through the same list); what a delivery raises is reported to its
stream (`batch_failed`), as the reader would have seen it.

A pause after a small batch (`set_pause`; `gateway serve --media-coalesce-ms`, default 2): when the loop is not
saturated, each frame arrives on its own wake-up and the frames of an iteration are too few to batch, and that
costs more per frame than the media work itself — a steady 100-stream run used 80–95 µs of CPU per frame, a run
whose frames came in bursts 38–50 µs (BENCHMARKS.md, "What each step costs per 20 ms frame"). While the loop
delivers at least `PAUSE_FROM` frames a second (about 80 streams: below that the CPU is not worth a frame's
latency), after delivering fewer than `PAUSE_BELOW` frames it sleeps `pause` seconds, so the next poll returns the
frames of many sockets at once (one wake-up, one batch). A saturated loop's batches are larger and never pause; a
pause adds at most `pause` to a frame's turnaround (and to anything else the loop does then: no RTP clock tick is
late by it, a tick counts as late past a whole 20 ms period).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from voicecodecs import StreamResampler
from voicecodecs.resample import BATCH_MIN, resample_many

from .bus import defer_plays, settle_plays
from .frames import BusItem

log = logging.getLogger("gateway.mediabatch")


class BatchedStream(Protocol):
    """A carrier's media stream that feeds through a batch."""

    @property
    def inlet(self) -> Any:
        """Where its audio and events go now: the call, or a hold / bridge port."""

    def batch_failed(self, error: Exception) -> None:
        """What delivering its audio or event raised: the stream ends as if its reader had raised it."""


#: a batch of fewer frames and events than this is followed by the pause (`set_pause`) ...
PAUSE_BELOW = 16
#: ... while the loop delivered at least this many a second over its last whole second (80 streams' inbound)
PAUSE_FROM = 4000


class MediaBatch:
    """The pending frames and events of one event loop (`for_loop`)."""

    __slots__ = ("_loop", "_items", "pause", "_since", "_count", "_busy")

    def __init__(self, loop: asyncio.AbstractEventLoop, pause: float = 0.0) -> None:
        self._loop = loop
        self._items: list[tuple[BatchedStream, bytes | BusItem]] = []
        #: seconds the loop sleeps after delivering a small batch (module docstring); 0: never
        self.pause = pause
        #: the rate window: its start (monotonic seconds), what was delivered since, and whether the last whole
        #: window reached PAUSE_FROM a second
        self._since = time.monotonic()
        self._count = 0
        self._busy = False

    def feed_audio(self, stream: BatchedStream, pcm: bytes) -> None:
        """Carrier-rate PCM16 for `stream`'s inlet, delivered at the end of this loop iteration."""
        self._add(stream, pcm)

    def feed_event(self, stream: BatchedStream, event: BusItem) -> None:
        """An event (DTMF) for `stream`'s inlet, delivered after the audio that came before it."""
        self._add(stream, event)

    def _add(self, stream: BatchedStream, item: bytes | BusItem) -> None:
        items = self._items
        if not items:
            self._loop.call_soon(self._flush)
        items.append((stream, item))

    def _flush(self) -> None:
        items, self._items = self._items, []
        # each stream's inlet (a property) looked up once: deliveries only queue for the engine, so none of them
        # moves a stream to another inlet within this callback
        inlets = [stream.inlet for stream, _ in items]
        if len(items) >= BATCH_MIN:
            jobs: list[tuple[StreamResampler, bytes]] = []
            for (_, x), inlet in zip(items, inlets, strict=True):
                if type(x) is bytes:
                    job_of = getattr(inlet, "resample_job", None)   # a call (ports resample on their own)
                    job = job_of(x) if job_of is not None else None
                    if job is not None:
                        jobs.append(job)
            resample_many(jobs)
            plays = defer_plays()
        else:
            plays = None
        try:
            for (stream, x), inlet in zip(items, inlets, strict=True):
                try:
                    if type(x) is bytes:
                        inlet.feed_audio(x)
                    else:
                        inlet.feed_event(x)
                except Exception as e:
                    stream.batch_failed(e)
        finally:
            if plays is not None:
                settle_plays(plays)
        if self.pause:
            self._pace(len(items))

    def _pace(self, n: int) -> None:
        """Count `n` deliveries into the rate window; sleep the pause after a small batch of a busy loop."""
        self._count += n
        now = time.monotonic()
        if now - self._since >= 1.0:
            self._busy = self._count >= PAUSE_FROM * (now - self._since)
            self._since, self._count = now, 0
        if self._busy and n < PAUSE_BELOW:
            time.sleep(self.pause)      # on purpose: frames gather in the sockets for the next poll (docstring)


_batches: dict[asyncio.AbstractEventLoop, MediaBatch] = {}
_pause = 0.0


def set_pause(seconds: float) -> None:
    """Pause this long after each small batch from now on (module docstring), in every loop; 0: never. Set by
    `gateway serve`, so that tests and in-process benchmarks, whose clients share the loop, run without it."""
    global _pause
    if seconds < 0:
        raise ValueError("a media batch pause cannot be negative")
    _pause = seconds
    for batch in _batches.values():
        batch.pause = seconds


def for_loop(loop: asyncio.AbstractEventLoop) -> MediaBatch:
    """The batch of `loop` (one per loop; those of closed loops are forgotten here)."""
    batch = _batches.get(loop)
    if batch is None:
        for old in [x for x in _batches if x.is_closed()]:
            del _batches[old]
        batch = _batches[loop] = MediaBatch(loop, _pause)
    return batch
