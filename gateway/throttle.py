"""Per-source-IP back-off after repeated authentication failures (SIP digest, REST API key).

Without it a password guesser (svcrack, a script against `/api/v1`) may try as fast as the network allows: a
4-digit trunk password fell in 2.7 s. `FailureThrottle` counts failures per source address in a sliding window;
at `max_failures` the address is banned for `ban_seconds`, and the caller refuses it (SIP: 403 or silence; API:
429 with Retry-After) without even looking at the credentials. A success does not reset the count: a guesser that
also knows one valid account must not be able to launder its failures.

Every failure and every ban is logged with the source address (`source_ip=…`, `ban_seconds=…`), so fail2ban-style
tooling can act at the firewall as well. Memory stays bounded: at most `max_tracked` addresses are remembered,
the least recently failing forgotten first.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)   # monotonic times of recent failures
    banned_until: float = 0.0


class FailureThrottle:
    """`failure(ip)` after each failed attempt; `banned(ip)` (seconds left, 0 if free) before each attempt."""

    def __init__(self, what: str, logger: logging.Logger, max_failures: int = 10, window: float = 60.0,
                 ban_seconds: float = 300.0, max_tracked: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.log = logger
        self.max_failures = max_failures
        self.window = window
        self.ban_seconds = ban_seconds
        self.max_tracked = max_tracked
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: counters for /metrics
        self.failures_total = 0
        self.bans_total = 0
        self.refused_total = 0

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0 and self.ban_seconds > 0

    def banned(self, ip: str) -> float:
        """Seconds left of `ip`'s ban (0.0 when it may try); counts the refusal when banned."""
        e = self._entries.get(ip)
        if e is None or not self.enabled:
            return 0.0
        left = e.banned_until - self.clock()
        if left <= 0:
            return 0.0
        self.refused_total += 1
        return left

    def failure(self, ip: str, **fields: object) -> bool:
        """Record a failed attempt from `ip`; True when this failure starts a ban."""
        self.failures_total += 1
        self.log.warning(f"{self.what} authentication failed", extra={"source_ip": ip, **fields})
        if not self.enabled:
            return False
        now = self.clock()
        e = self._entries.pop(ip, None) or _Entry()
        self._entries[ip] = e                      # most recently seen last
        while len(self._entries) > self.max_tracked:
            self._entries.popitem(last=False)
        if e.banned_until > now:
            return False
        while e.failures and e.failures[0] <= now - self.window:
            e.failures.popleft()
        e.failures.append(now)
        if len(e.failures) < self.max_failures:
            return False
        e.failures.clear()
        e.banned_until = now + self.ban_seconds
        self.bans_total += 1
        self.log.warning(f"{self.what} source banned after repeated authentication failures",
                         extra={"source_ip": ip, "failures": self.max_failures, "window_seconds": self.window,
                                "ban_seconds": self.ban_seconds})
        return True

    def banned_count(self) -> int:
        now = self.clock()
        return sum(1 for e in self._entries.values() if e.banned_until > now)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Prometheus series named `<prefix>_…` (e.g. gateway_sip_auth_failures_total)."""
        return {f"{prefix}_auth_failures_total": self.failures_total, f"{prefix}_auth_bans_total": self.bans_total,
                f"{prefix}_banned_requests_total": self.refused_total,
                f"{prefix}_banned_sources": self.banned_count()}
