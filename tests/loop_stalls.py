"""When this test process's event loop ran late: for timing figures taken by two observers in one process.

A test that puts a gateway and its simulated caller in one event loop compares two clocks that are really one;
what can still move one observer's timestamp and not the other's is the loop not running at all between two
events (the process preempted on a starved CPU, a long callback, a garbage collection). A watcher that asks to
wake every `tick` seconds sees every such stall longer than a tick as its own wake-up coming late, so a test can
hold a figure to its bound plus the time the loop stood still in the interval it measures.

    async with LoopStalls() as stalls:
        ...                                          # the calls
    lost = stalls.total(start, end)                  # seconds; start/end in loop time, as `loop.time()` gives it
"""
from __future__ import annotations

import asyncio
from typing import Any


class LoopStalls:
    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        #: (when the watcher was due, how late it woke up) for every wake-up later than one tick
        self.late: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            late = loop.time() - due
            if late > self.tick:
                self.late.append((due, late))

    def total(self, start: float, end: float) -> float:
        """Seconds the loop stood still (beyond one tick) in stalls overlapping [start, end] of loop time."""
        return sum(late for due, late in self.late if due <= end and due + late >= start)
