"""Receive-side jitter buffer, played out one 20 ms frame per shared-clock tick.

It reorders by (extended) sequence number, holds `target` frames before starting play-out (40 ms by default:
loopback and good trunks need little; raise it for lossy links), reports a lost frame for each gap it plays
through (the session plays silence there, so the engine's timeline stays continuous), drops late and duplicate
packets, and never holds more than `max_depth` frames, so added latency is bounded even when the far end's clock
runs fast. When the far end stops sending (silence suppression, DTMF, hold) it re-primes instead of inventing
audio. Priming waits for `target` packets or for `target` ticks, whichever comes first: a lone packet that ends a
talk spurt (or the call) is played after the target delay, not held until the next packet that may never come.
"""
from __future__ import annotations

import enum


class _Lost(enum.Enum):
    """The type of LOST, so that `frame is LOST` narrows `pop()`'s result for the type checker."""
    LOST = "lost"


LOST = _Lost.LOST


class JitterBuffer:
    __slots__ = ("target", "max_depth", "_packets", "_next", "_highest", "_primed", "_held", "lost", "late",
                 "duplicate", "overflow")

    def __init__(self, target: int = 2, max_depth: int = 10) -> None:
        self.target = target
        self.max_depth = max_depth
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self._highest: int | None = None
        self._primed = False
        self._held = 0   # ticks the packets waiting for priming have been held
        self.lost = self.late = self.duplicate = self.overflow = 0

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

    def put(self, seq: int, payload: bytes) -> None:
        ext = self._extend(seq)
        if self._next is not None and ext < self._next:
            self.late += 1
            return
        packets = self._packets
        if ext in packets:
            self.duplicate += 1
            return
        packets[ext] = payload
        if len(packets) > self.max_depth:
            oldest = min(packets)
            del packets[oldest]
            self.overflow += 1
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1

    def pop(self) -> bytes | _Lost | None:
        """One tick's frame: payload bytes, LOST (play concealment), or None (nothing to play)."""
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
        payload = packets.pop(nxt, None)
        if payload is not None:
            self._next = nxt + 1
            return payload
        first = min(packets)
        if first - nxt > self.max_depth:  # the sender jumped (restart, new stream): resynchronise, no loss
            self._next = first + 1
            return packets.pop(first)
        self.lost += 1
        self._next = nxt + 1
        return LOST
