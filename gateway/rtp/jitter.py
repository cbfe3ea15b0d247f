"""Receive-side jitter buffer, played out one 20 ms frame per shared-clock tick.

It reorders by (extended) sequence number, holds `target` frames before starting play-out (40 ms by default:
loopback and good trunks need little; raise it for lossy links), reports a lost frame for each gap it plays
through (the session plays silence there, so the engine's timeline stays continuous), drops late and duplicate
packets, and keeps added latency bounded even when the far end's clock runs fast or our own loop ran late.
When the far end stops sending (silence suppression, DTMF, hold) it re-primes instead of inventing
audio. Priming waits for `target` packets or for `target` ticks, whichever comes first: a lone packet that ends a
talk spurt (or the call) is played after the target delay, not held until the next packet that may never come.

Depth above `max_depth` is played out early, not dropped (`excess`: the session plays up to `catch_up` extra
frames a tick until the buffer is back at `max_depth`). A starved box runs the event loop late: the packets of the
late stretch were sent and reached our socket in time, and are read in one burst when the loop runs again; they
are the caller's speech, so they are played, faster than real time for a few ticks, rather than discarded as an
overflow. This is what adaptive jitter buffers do with excess delay (WebRTC's NetEq shrinks it with its
"accelerate" operation instead of discarding packets:
https://webrtchacks.com/how-webrtcs-neteq-jitter-buffer-provides-smooth-audio/); the engine behind the call takes
audio faster than real time, so playing a frame early needs no time-stretching here. Only a backlog beyond
`max_backlog` (a sender flooding us, or a stall of seconds) drops its oldest frames, counted as `overflow`, so
memory stays bounded whatever the far end sends.

Each packet keeps the time it arrived: after `pop()`, `arrived` is when the frame just played reached us (for a
lost frame, one frame after the previous), so the call's turn timeline dates caller speech by its real arrival
however the packets bunched, not by an estimate from the buffer's depth.
"""
from __future__ import annotations

import enum


class _Lost(enum.Enum):
    """The type of LOST, so that `frame is LOST` narrows `pop()`'s result for the type checker."""
    LOST = "lost"


LOST = _Lost.LOST
#: what one tick of play-out yields: a packet's payload, or LOST (play concealment)
Played = bytes | _Lost


class JitterBuffer:
    __slots__ = ("target", "max_depth", "max_backlog", "catch_up", "_packets", "_next", "_highest", "_primed",
                 "_held", "lost", "late", "duplicate", "overflow", "drained", "arrived")

    def __init__(self, target: int = 2, max_depth: int = 10, max_backlog: int = 150, catch_up: int = 4) -> None:
        self.target = target
        self.max_depth = max_depth      # latency bound: frames beyond it are played early (`excess`)
        self.max_backlog = max(max_backlog, max_depth)   # memory bound: frames beyond it are dropped (`overflow`)
        self.catch_up = catch_up        # extra frames a tick while above max_depth (5× real time by default)
        self._packets: dict[int, tuple[bytes, float]] = {}
        self._next: int | None = None
        self._highest: int | None = None
        self._primed = False
        self._held = 0   # ticks the packets waiting for priming have been held
        self.lost = self.late = self.duplicate = self.overflow = 0
        self.drained = 0     # frames played early (above max_depth) to bring the latency back down
        self.arrived = 0.0   # arrival time of the frame the last pop() returned

    def __len__(self) -> int:
        return len(self._packets)

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        ext = self._highest + delta
        if ext > self._highest:
            self._highest = ext
        return ext

    def put(self, seq: int, payload: bytes, at: float = 0.0) -> None:
        """A packet that arrived at `at` (loop time)."""
        ext = self._extend(seq)
        if self._next is not None and ext < self._next:
            self.late += 1
            return
        packets = self._packets
        if ext in packets:
            self.duplicate += 1
            return
        packets[ext] = (payload, at)
        if len(packets) > self.max_backlog:
            oldest = min(packets)
            del packets[oldest]
            self.overflow += 1
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1

    def extra(self) -> int:
        """How many frames to play early this tick, on top of the tick's own: the depth above `max_depth`, at most
        `catch_up` (so a burst reaches the call over a few ticks and its bounded inbound queue keeps up)."""
        over = len(self._packets) - self.max_depth
        if over <= 0 or not self._primed:
            return 0
        n = min(over, self.catch_up)
        self.drained += n
        return n

    def pop(self, frame_s: float = 0.02) -> Played | None:
        """One tick's frame: payload bytes, LOST (play concealment, `frame_s` after the previous frame's arrival),
        or None (nothing to play)."""
        packets = self._packets
        if not self._primed:
            if not packets:
                self._held = 0
                return None
            self._held += 1
            if len(packets) < self.target and self._held < self.target:
                return None
            self._primed = True
            self._held = 0
            self._next = min(packets)
        if not packets:
            self._primed = False
            return None
        nxt = self._next
        assert nxt is not None   # set when priming
        got = packets.pop(nxt, None)
        if got is None:
            first = min(packets)
            if first - nxt > self.max_depth:  # the sender jumped (restart, new stream): resynchronise, no loss
                nxt = first
                got = packets.pop(first)
            else:
                self.lost += 1
                self._next = nxt + 1
                self.arrived += frame_s
                return LOST
        self._next = nxt + 1
        self.arrived = got[1]
        return got[0]
