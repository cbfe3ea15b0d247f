"""The last gate before a queued call's INVITE (or carrier REST request) leaves: this process sends at most
`max_cps` calls of a number in any window of max(1 s, 1/cps), spaced by a token bucket that allows only a small
burst. The dispatch queue's slots (gateway/store/dispatchq.py) share the pace between processes; this gate keeps
one process's own sends on it when its event loop or database writes were slow for a moment and several calls
became ready at once (measured: a batch of call-log inserts committing together released ~100 INVITEs in the same
millisecond without it)."""
from __future__ import annotations

import asyncio
import collections
import math


class SendGate:
    #: the token bucket's depth, in seconds of the pace: how far a late call may catch up in one go
    BURST_S = 0.1

    def __init__(self, cps: float) -> None:
        self.cps = cps
        self.span = max(1.0, 1.0 / cps)
        self.recent: collections.deque[float] = collections.deque(maxlen=max(1, math.floor(cps * self.span)))
        self.burst = max(1.0, cps * self.BURST_S)
        self.tokens = 1.0
        self.at = 0.0
        self._turn = asyncio.Lock()     # FIFO: calls leave in the order they asked

    async def wait(self) -> None:
        """Return when the next call may be sent."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            while True:
                now = loop.time()
                self.tokens = min(self.burst, self.tokens + (now - self.at) * self.cps) if self.at else self.tokens
                self.at = now
                window_free = len(self.recent) < (self.recent.maxlen or 1) or self.recent[0] + self.span <= now
                if self.tokens >= 1 and window_free:
                    self.tokens -= 1
                    self.recent.append(now)
                    return
                wait = (1 - self.tokens) / self.cps if self.tokens < 1 else 0.0
                if not window_free:
                    wait = max(wait, self.recent[0] + self.span - now)
                await asyncio.sleep(wait)
