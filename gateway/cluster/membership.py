"""This process in the `nodes` table: heartbeat, liveness of the others, and closing the calls of dead processes.

On start the process registers (state `running`) and closes what a previous run of it left open
(`gateway_restart`): with SQLite there is only ever one process, so every open call is such an orphan; with
PostgreSQL only the calls owned by this process id (and calls with no owner, from before ownership existed, when
no other process is alive). Every `heartbeat_interval` it refreshes its heartbeat and closes the calls of every
process whose heartbeat is older than `stale_after` (`node_lost`), after taking over that process's undelivered
webhooks (its rows of the persistent outbox, delivered first). The store's conditional UPDATE makes exactly
one survivor close each call, and that survivor sends the call's closing webhooks: `conversation:ended` (if it
was answered), `hang_up` and `post_call`, the same sequence a live call ends with.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime import Gateway
    from ..store import Store

log = logging.getLogger("gateway.cluster")


def _set_event() -> asyncio.Event:
    ended = asyncio.Event()
    ended.set()
    return ended


@dataclass
class ClosedCall:
    """A call-log row closed on behalf of its dead owner, as the webhook dispatcher sees a call (already ended)."""
    id: str
    log_id: int
    agent: dict[str, Any] | None
    ended: asyncio.Event = field(default_factory=_set_event)


class Membership:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.proc = gateway.settings.proc_id
        self.closed_orphans = 0
        self._task: asyncio.Task[None] | None = None
        #: open rows of this process that its memory did not hold at the last heartbeat (closed at the next)
        self._unheld: set[int] = set()
        #: this run has its row in `nodes`: only then is there a state to record at stop (a start stopped by a
        #: signal before it got here may not even have the table yet)
        self._registered = False
        #: this process's last heartbeat failed (the database, or the way to it, was away)
        self._beat_failed = False
        #: loop time before which no other process is declared lost (`tick`), and how many ticks looked since
        self._judge_after = 0.0
        self.lost_checks = 0

    @property
    def store(self) -> Store:
        return self.gateway.store

    async def start(self) -> None:
        """Register this process and close what its previous run left open; then heartbeat in the background."""
        s = self.settings
        last_seen = await self.store.register_node(self.proc, node_id=s.node_id, public_url=s.public_url or None,
                                                   sip_uri=None)
        self._registered = True
        if self.store.is_postgres:
            await self.close_calls("gateway_restart", owner=self.proc, last_seen=last_seen)
            others = [n for n in await self.store.list_nodes(s.stale_after) if n["alive"] and n["proc"] != self.proc]
            if not others:  # rows from before calls had owners: nobody else can be holding them
                await self.close_calls("gateway_restart", owner=None, last_seen=last_seen)
        else:
            await self.close_calls("gateway_restart", any_owner=True, last_seen=last_seen)
        self._task = asyncio.create_task(self._beat(), name="heartbeat")

    async def announce(self) -> None:
        """Once listening: record where carriers and peers reach this process (its URL and SIP address)."""
        s = self.settings
        sip_uri = (f"sip:{s.advertised_ip or s.sip_host}:{s.sip_port}"
                   if s.enable_sip and s.sip_port and "sip" in self.gateway.carriers else None)
        await self.store.update_node(self.proc, public_url=s.public_base, sip_uri=sip_uri,
                                     direct_url=self.gateway.direct_url)

    async def stop(self) -> None:
        """Stop heartbeating and record that this process ended its calls itself (`stopped`). The ends of its calls
        are committed first: no survivor closes the open calls of a `stopped` process, so a process killed between
        that state and its queued call-log writes (systemd's SIGKILL at the end of TimeoutStopSec) would leave them
        `in-progress` for good."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if not self._registered:
            return
        try:
            await self.store.flush()
            await self.store.update_node(self.proc, state="stopped")
        except Exception:
            log.exception("could not mark this process stopped")

    async def set_state(self, state: str) -> None:
        """`running` → `draining` (drain) → `stopped`; other processes read it from the `nodes` table."""
        await self.store.update_node(self.proc, state=state)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed")

    async def tick(self) -> None:
        """One heartbeat, then close the calls of every process found lost.

        Not right after this process's own heartbeat failed: the database (or the way to it) was away, so every
        other process's heartbeat is as old as ours for the same reason, and the first process back would declare
        all the others lost and close their live calls (`node_lost`) after any outage longer than `stale_after` —
        a PostgreSQL failover of a minute did exactly that. The others get `stale_after` to beat again first; a
        process that really died meanwhile is found that much later."""
        try:
            state = await self.store.heartbeat(self.proc)
        except Exception:
            self._beat_failed = True
            raise
        now = asyncio.get_running_loop().time()
        if self._beat_failed:
            self._beat_failed = False
            self._judge_after = now + self.settings.stale_after
            log.warning("heartbeat back after failing: no other process is declared lost for %s s",
                        self.settings.stale_after, extra={"proc": self.proc})
        if state == "lost":
            log.error("this process was declared lost (heartbeat older than %s s); its calls were closed by "
                      "another process", self.settings.stale_after, extra={"proc": self.proc})
        if now < self._judge_after:
            await self.sweep_own()
            return
        self.lost_checks += 1
        for proc, heartbeat_at in await self.store.lost_procs(self.proc, self.settings.stale_after):
            # what it could not deliver goes first, then the closing webhooks of its calls
            await self.gateway.webhooks.take_over(proc)
            closed = await self.close_calls("node_lost", owner=proc, last_seen=heartbeat_at)
            await self.store.mark_lost(proc, heartbeat_at)
            log.warning("process lost", extra={"proc": proc, "calls_closed": len(closed)})
        await self.sweep_own()

    async def sweep_own(self) -> None:
        """Close this process's open rows that no live call of it holds any more, seen so at two heartbeats in a
        row (`call_lost`). Orphan closing covers a dead owner; this covers a live one whose call ended but whose
        end never reached the database (a call-log batch that failed while PostgreSQL was away, a bug on some end
        path): such a row stayed `in-progress`, listed live on every node, for as long as the process ran, and
        when it stopped cleanly (`stopped`) nobody closed it at all. Rows younger than `stale_after` are left
        alone (a call being set up or adopted is in the row before it is in memory)."""
        held = {c.log_id for c in self.gateway.calls.active.values()}
        unheld = {i for i, _ in await self.store.open_call_ids(self.proc, self.settings.stale_after) if i not in held}
        for row_id in unheld & self._unheld:
            await self.close_calls("call_lost", owner=self.proc, call_id=row_id)
        self._unheld = unheld - self._unheld

    async def alive(self, proc: str | None) -> bool:
        """Does `proc` still own its calls (owning state and a fresh heartbeat)? This process always does."""
        if proc == self.proc:
            return True
        if proc is None:
            return False
        return any(n["proc"] == proc and n["alive"] for n in await self.store.list_nodes(self.settings.stale_after))

    async def direct_url(self, proc: str) -> str | None:
        """The URL that reaches live process `proc` and no other (`Gateway.direct_url`, in the nodes table); None
        when it is not alive or did not record one."""
        return next((n.get("direct_url") for n in await self.store.list_nodes(self.settings.stale_after)
                     if n["proc"] == proc and n["alive"]), None)

    async def alive_procs(self) -> list[str]:
        return [n["proc"] for n in await self.store.list_nodes(self.settings.stale_after) if n["alive"]]

    async def close_calls(self, reason: str, *, owner: str | None = None, any_owner: bool = False,
                          call_id: int | None = None, last_seen: datetime | None = None) -> list[dict[str, Any]]:
        """Close open calls of a dead owner in the call log and send their closing webhooks; returns the rows this
        process closed."""
        rows = await self.store.close_orphans(reason, owner=owner, any_owner=any_owner, call_id=call_id,
                                              last_seen=last_seen)
        for row in rows:
            await self._closing_webhooks(row)
        if rows:
            self.closed_orphans += len(rows)
            log.warning("orphaned calls closed", extra={"reason": reason, "owner": owner, "count": len(rows)})
        return rows

    async def _closing_webhooks(self, row: dict[str, Any]) -> None:
        agent = await self.store.get_agent(row["agent_id"]) if row.get("agent_id") else None
        subject = ClosedCall(row["call_uuid"], row["id"], agent)
        hooks = self.gateway.webhooks
        hooks.resume_sequence(subject, await self.store.count_call_events(row["id"]))
        events: list[tuple[str, dict[str, Any]]] = []
        if row.get("answered_at"):
            events.append(("conversation:ended", {}))
        events.append(("hang_up", {"source": row["hangup_source"], "reason": row["hangup_reason"]}))
        for event, data in events:
            await self.store.add_call_event(row["id"], event, data)
            hooks.emit(subject, event, data)
        hooks.emit(subject, "post_call", {"call_log": row})
