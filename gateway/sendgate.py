"""The last gate before a queued call's INVITE (or carrier REST request) leaves: the number's `max_cps` held on an
absolute timeline, with a small burst allowance so calls that became ready late catch up.

The dispatch queue hands each call a slot on the number's shared timeline (gateway/store/dispatchq.py: slot i of
a turn starts at `start + i / cps`, whichever process took it). A call should leave at its slot; when this
process was slow for a moment (a busy event loop, a batch of call-log writes committing together), several calls
are ready at once and late. Leaving them at `cps` from "now" would lose the time they were late for good — on a
busy box the trunk then runs below its limit (the 265-of-300 CPS in BENCHMARKS.md). Letting them all go at once
would break the trunk's limit. The middle way is the generic cell rate algorithm (GCRA, ITU-T I.371; the
"virtual scheduling" form of a token bucket): each send moves a theoretical arrival time `tat` one emission
interval `T = 1/cps` on, and a call may leave once `now >= tat - tau`. With `tau = (burst - 1) * T`:

* late calls go at once while they are at most `tau` behind the pace, then the pace goes on at `cps`: a stall of
  up to `tau` seconds costs nothing over the window;
* in any window of `w` seconds at most `floor(w * cps) + burst` calls leave (so a second holds at most
  `cps + burst`), however late or bunched the calls were;
* a call never leaves before its slot (`at`), so a process that is on time sends exactly on the timeline.

`Gcra` is the pure arithmetic (times in, times out: tests/test_sendgate.py drives it with a fake clock);
`SendGate` applies it on the event loop's clock. A starved event loop may wake several sleepers late and at
once, so the gate also checks the times calls really leave: never more than `cps + burst` in any second.
"""
from __future__ import annotations

import asyncio
import collections
import math


class Gcra:
    """The pace of one number: `reserve(now, at)` says when a call ready at `now` for slot `at` may leave, and
    counts it as sent then. Reservations must be made when the call is ready (not ahead), in the order the calls
    are sent."""

    def __init__(self, cps: float, burst: int = 1) -> None:
        if cps <= 0:
            raise ValueError("cps must be positive")
        self.cps = cps
        self.burst = max(1, int(burst))
        self.interval = 1.0 / cps
        self.tolerance = (self.burst - 1) * self.interval
        self.tat: float | None = None       # theoretical arrival time of the next call; None before the first

    def reserve(self, now: float, at: float | None = None) -> float:
        ready = now if at is None else max(now, at)
        send = ready if self.tat is None else max(ready, self.tat - self.tolerance)
        self.tat = max(self.tat if self.tat is not None else send, send) + self.interval
        return send


class SendGate:
    #: the burst allowance, in seconds of the pace: how far behind its slots a late process may catch up at once
    #: (and how many calls above `max_cps` any one second may hold: `cps × BURST_S`)
    BURST_S = 0.1

    def __init__(self, cps: float, burst_s: float = BURST_S) -> None:
        self.cps = cps
        self.burst = max(1, math.floor(cps * burst_s))
        self.pace = Gcra(cps, self.burst)
        #: when the last `cps + burst` calls really left (loop clock)
        self.sent: collections.deque[float] = collections.deque(maxlen=math.floor(cps) + self.burst)

    async def wait(self, at: float | None = None) -> None:
        """Return when the next call (slot `at` on the event loop's clock, or none) may be sent."""
        loop = asyncio.get_running_loop()
        delay = self.pace.reserve(loop.time(), at) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while len(self.sent) == self.sent.maxlen and (delay := self.sent[0] + 1.0 - loop.time()) > 0:
            await asyncio.sleep(delay)      # woken late together with others: the second is full already
        self.sent.append(loop.time())
