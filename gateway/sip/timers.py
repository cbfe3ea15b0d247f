"""Clocks for SIP timers: the event loop in production, a manually advanced fake clock in tests.

API::

    clock.now() -> float seconds;  clock.call_later(delay, fn, *args) -> handle with .cancel()
    LoopClock()        wraps asyncio's loop.time()/call_later (bound lazily to the running loop)
    FakeClock(start=0) .advance(seconds) runs due callbacks in time order (callbacks may schedule more);
                       .pending() -> sorted list of due times; usable by any layer's tests (dialogs too).
    RFC 3261 defaults: T1 = 0.5 s, T2 = 4 s, T4 = 5 s (Table 4).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Clock", "LoopClock", "FakeClock", "T1", "T2", "T4"]

T1 = 0.5
T2 = 4.0
T4 = 5.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle: ...


class LoopClock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, fn, *args)


class _FakeHandle:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 0.0):
        self._now = start
        self._heap: list[tuple[float, int, _FakeHandle]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _FakeHandle:
        h = _FakeHandle(self._now + max(0.0, delay), fn, args)
        heapq.heappush(self._heap, (h.when, next(self._seq), h))
        return h

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer due on the way at its own due time."""
        target = self._now + seconds
        while self._heap and self._heap[0][0] <= target + 1e-9:
            when, _, h = heapq.heappop(self._heap)
            if h.cancelled:
                continue
            self._now = max(self._now, when)
            h.fn(*h.args)
        self._now = target

    def pending(self) -> list[float]:
        return sorted(h.when for _, _, h in self._heap if not h.cancelled)
