"""Agents and numbers changed in one process are dropped from every other live process's cache at once.

Each process keeps the agents and numbers that call set-up reads in a short read-through cache (`Store._cached`,
5 s TTL). A write through this process's API drops its own copies; without a word to the others they would go on
serving the old row (an agent detached, a trunk's password changed) until the TTL ran out. After each committed
write the store awaits `CacheSync.changed`, which sends control op `store:changed` {"kind": "agent"|"number"} to
every other live process (docs/deploy.md, "Numbers and agents on the call set-up path"); each drops its cached
rows of that kind and reads them again on the next call. NOTIFY is not stored, so a process whose control-bus
connection was down at that moment misses it: the TTL stays the bound on staleness then.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .control import Reply

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.cluster")

OP = "store:changed"
#: "registration": who REGISTERs a trunk changed hands (carriers/sip.py); nothing cached, the SIP carrier looks again
KINDS = ("agent", "number", "registration")
#: seconds a write waits for each other process to confirm (a live process answers in milliseconds)
CONFIRM_TIMEOUT = 2.0


class CacheSync:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def register(self) -> None:
        """Handle the op (before the bus starts) and, in a cluster, have the store announce its writes."""
        self.gateway.control.handle(OP, self._on_changed)
        if self.gateway.control.clustered:
            self.gateway.store.on_change = self.changed

    async def changed(self, kind: str) -> None:
        """This process wrote `kind` rows: every other live process drops its cached ones (awaited, so an API
        write is answered once the others have forgotten the old row; a process that does not confirm within
        CONFIRM_TIMEOUT is left to its TTL)."""
        gw = self.gateway
        try:
            procs = [p for p in await gw.membership.alive_procs() if p != gw.settings.proc_id]
        except Exception as e:
            log.warning("cache sync: live processes unknown: %s", type(e).__name__, extra={"kind": kind})
            return
        replies = await asyncio.gather(*(gw.control.request(p, OP, {"kind": kind}, timeout=CONFIRM_TIMEOUT)
                                         for p in procs), return_exceptions=True)
        missed = [p for p, r in zip(procs, replies, strict=True) if not isinstance(r, Reply) or not r.ok]
        if missed:
            log.warning("cache sync: not confirmed (their cache expires within its TTL)",
                        extra={"kind": kind, "procs": missed[:10]})

    async def _on_changed(self, args: dict[str, Any]) -> Reply:
        kind = str(args.get("kind") or "")
        if kind not in KINDS:
            return Reply(400, {"success": False, "error": f"unknown kind {kind[:40]!r} ({', '.join(KINDS)})",
                               "field": "kind"})
        self.gateway.store.forget_cached(kind)
        return Reply(200, {})
