"""What a carrier derives from stored numbers (a SIP carrier's trunk list, a Twilio account's tokens, Telnyx's public
keys), kept while the store's own cached rows are valid.

A carrier that scans its numbers on a hot path (every unknown-number INVITE and REGISTER, every signed webhook)
keeps the result. Before, each kept it for a TTL of its own and only its own API writes reset it, so an operator who
changed a trunk's allow-list or rotated an auth token through one process of a cluster saw the others use the old
value for up to a minute. `DerivedCache` instead follows `Store.cache_epoch`, which moves with every invalidation
of the store's cache: a local write, and (in a cluster) another process's write announced by control op
`store:changed` (gateway/cluster/cachesync.py). The TTL remains the bound when a notification was missed.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .store import Store

T = TypeVar("T")


class DerivedCache(Generic[T]):
    def __init__(self, load: Callable[[], Awaitable[T]], ttl: float) -> None:
        self._load = load
        #: seconds a value is kept when no invalidation comes (a missed cluster notification)
        self.ttl = ttl
        self._entry: tuple[int, float, T] | None = None    # (store epoch when the read began, expiry, value)

    async def get(self, store: Store) -> T:
        """The kept value, or a fresh one when the store's cache was invalidated since it was read, or it expired.
        The epoch is taken before the read: a write committed while it runs makes the next call read again."""
        epoch, now = store.cache_epoch, time.monotonic()
        entry = self._entry
        if entry is not None and entry[0] == epoch and now < entry[1]:
            return entry[2]
        value = await self._load()
        self._entry = (epoch, now + self.ttl, value)
        return value

    def clear(self) -> None:
        """Read again on the next `get` (e.g. a lookup missed: the row may be newer than any notification)."""
        self._entry = None
