"""The store's cluster half: the `nodes` table (who is alive), call ownership, and closing orphaned calls.

Every statement here is written to be correct with several processes on one PostgreSQL database at once:
ownership moves and orphan closing are conditional UPDATEs, so when two survivors race for the same call exactly
one of them wins it (the other's UPDATE matches no row). Times that decide liveness come from the database
clock on PostgreSQL (`now()`), so clock skew between machines cannot make a healthy node look lost; SQLite
(one process) uses this process's clock.
"""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, bindparam, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from .models import CallEvent, CallLog, Node, PhoneNumber, WebhookOutbox, row_dict, utcnow

if TYPE_CHECKING:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

#: states in which a process owns calls; `stopped` ended its calls itself, `lost` had them closed by a survivor
OWNING_STATES = ("running", "draining")


def _aware(v: datetime | None) -> datetime | None:
    return v if v is None or v.tzinfo else v.replace(tzinfo=UTC)


class ClusterStore:
    """Mixed into `Store`; uses its engine, sessions and write turn."""

    url: str
    if TYPE_CHECKING:   # provided by `Store` (store.py); declared here so each half of the store type-checks alone
        engine: AsyncEngine | None

        @property
        def _session(self) -> async_sessionmaker[AsyncSession]: ...
        def _writing_core(self) -> AbstractAsyncContextManager[AsyncConnection]: ...
        def _writing(self) -> AbstractAsyncContextManager[AsyncSession]: ...
        @property
        def _writes(self) -> asyncio.Queue[tuple[str, int, Any]]: ...

        async def flush(self) -> None: ...
        @property
        def degraded(self) -> bool: ...
        def _call_row(self, fields: dict[str, Any]) -> dict[str, Any]: ...

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def _now(self) -> Any:
        """The clock liveness is measured with: the database's on PostgreSQL, ours on SQLite."""
        return func.now() if self.is_postgres else utcnow()

    def _cutoff(self, seconds: float) -> Any:
        return func.now() - timedelta(seconds=seconds) if self.is_postgres else utcnow() - timedelta(seconds=seconds)

    def _alive_owners(self, stale_after: float) -> Any:
        """The processes that own calls right now (owning state, heartbeat younger than `stale_after`), as a
        subquery for `owner IN (…)`: what channel counts and queue recovery trust (a crashed process drops out)."""
        return select(Node.proc).where(Node.state.in_(OWNING_STATES),
                                       Node.heartbeat_at >= self._cutoff(stale_after)).scalar_subquery()

    # nodes ----------------------------------------------------------------------------------------------------
    async def register_node(self, proc: str, *, node_id: str, public_url: str | None,
                            sip_uri: str | None) -> datetime | None:
        """Mark `proc` running (insert or update its row); returns its previous heartbeat, i.e. when the previous
        run of this process was last known alive (None on a first start)."""
        async with self._writing_core() as conn:
            prev = (await conn.execute(select(Node.heartbeat_at).where(Node.proc == proc))).scalar()
            fields = {"node_id": node_id, "public_url": public_url, "sip_uri": sip_uri, "state": "running",
                      "started_at": self._now(), "heartbeat_at": self._now()}
            if prev is None:
                await conn.execute(insert(Node).values(proc=proc, **fields))
            else:
                await conn.execute(update(Node).where(Node.proc == proc).values(**fields))
        return _aware(prev)

    async def heartbeat(self, proc: str) -> str | None:
        """Refresh `proc`'s heartbeat; returns the state it had (`lost` means survivors closed its calls)."""
        async with self._writing_core() as conn:
            state: str | None = (await conn.execute(select(Node.state).where(Node.proc == proc))).scalar()
            await conn.execute(update(Node).where(Node.proc == proc).values(
                heartbeat_at=self._now(), state=case((Node.state == "lost", "running"), else_=Node.state)))
        return state

    async def update_node(self, proc: str, **fields: Any) -> None:
        """Change `proc`'s row (state, public_url, sip_uri); counts as a heartbeat."""
        async with self._writing_core() as conn:
            await conn.execute(update(Node).where(Node.proc == proc).values(**fields, heartbeat_at=self._now()))

    async def mark_lost(self, proc: str, heartbeat_at: datetime) -> None:
        """After its calls are closed: unless it came back meanwhile (heartbeat moved), `proc` is lost."""
        async with self._writing_core() as conn:
            await conn.execute(update(Node).where(Node.proc == proc, Node.heartbeat_at == heartbeat_at,
                                                  Node.state.in_(OWNING_STATES)).values(state="lost"))

    async def list_nodes(self, stale_after: float) -> list[dict[str, Any]]:
        """Every process with an `alive` verdict: owning state and a heartbeat younger than `stale_after`."""
        fresh = Node.heartbeat_at >= self._cutoff(stale_after)
        alive = case((Node.state.in_(OWNING_STATES) & fresh, True), else_=False)
        async with self._session() as s:
            rows = (await s.execute(select(Node, alive.label("alive")).order_by(Node.proc))).all()
        out = []
        for node, is_alive in rows:
            row = {c.key: getattr(node, c.key) for c in Node.__table__.columns}
            row["started_at"], row["heartbeat_at"] = _aware(row["started_at"]), _aware(row["heartbeat_at"])
            row["alive"] = bool(is_alive)
            out.append(row)
        return out

    async def lost_procs(self, me: str, stale_after: float) -> list[tuple[str, datetime]]:
        """Processes still in an owning state whose heartbeat is older than `stale_after` (never `me`)."""
        async with self._session() as s:
            rows = (await s.execute(select(Node.proc, Node.heartbeat_at).where(
                Node.proc != me, Node.state.in_(OWNING_STATES),
                Node.heartbeat_at < self._cutoff(stale_after)))).all()
        return [(p, hb) for p, hb in rows]

    # call ownership -------------------------------------------------------------------------------------------
    async def claim_call(self, call_id: int, old_owner: str | None, new_owner: str, *, flush: bool = True) -> bool:
        """Move a live call to `new_owner` if `old_owner` still holds it; False when someone else moved or closed
        it first. `flush=False` does not wait for this process's queued writes first: adoption, on the media path,
        claims a row another process wrote, which nothing queued here ends."""
        if flush:
            await self.flush()
        held = CallLog.owner.is_(None) if old_owner is None else CallLog.owner == old_owner
        async with self._writing_core() as conn:
            result = await conn.execute(update(CallLog).where(CallLog.id == call_id, held,
                                                              CallLog.ended_at.is_(None)).values(owner=new_owner))
            return bool(result.rowcount == 1)

    async def claim_end(self, call_id: int, owner: str, source: str, reason: str) -> bool:
        """Before process `owner` ends a call it may have lost to an adopter: mark the row ended (time, status,
        hangup source and reason, each only where not set yet) if `owner` still holds it; False when it moved to
        another process. With `claim_call` (whose condition includes `ended_at IS NULL`) this makes the end and
        the adoption exclusive: PostgreSQL serialises the two UPDATEs on the row and re-checks the second one's
        condition, so either the adopter takes the call and the old owner's end matches nothing, or the old owner
        ends it and the adopter's claim matches nothing (docs/deploy.md, "Ownership of a call"). A row already
        ended by a survivor (this process was declared lost meanwhile) is still this owner's: True, and the call
        is hung up as before. Not through the write-behind queue: the answer decides whether to hang up."""
        ended = CallLog.ended_at.is_(None)
        claim = (update(CallLog).where(CallLog.id == call_id, CallLog.owner == owner).values(
            ended_at=func.coalesce(CallLog.ended_at, utcnow()),
            call_status=case((ended, case((CallLog.answered_at.is_not(None), "completed"), else_="failed")),
                             else_=CallLog.call_status),
            hangup_source=func.coalesce(CallLog.hangup_source, source),
            hangup_reason=func.coalesce(CallLog.hangup_reason, reason)))
        async with self._writing_core() as conn:
            return bool((await conn.execute(claim)).rowcount == 1)

    async def open_calls(self, owners: list[str]) -> list[dict[str, Any]]:
        """Call-log rows not yet ended whose owner is one of `owners`."""
        if not owners:
            return []
        await self.flush()
        async with self._session() as s:
            rows = (await s.scalars(select(CallLog).where(CallLog.owner.in_(owners), CallLog.ended_at.is_(None))
                                    .order_by(CallLog.id))).all()
            return [row_dict(c) for c in rows]

    async def open_call_ids(self, owner: str, older_than: float) -> list[tuple[int, str]]:
        """(row id, call id) of the open calls of `owner` created more than `older_than` seconds ago: the owner's
        own check that each still exists in its memory (`Membership.sweep_own`). Two columns over the owner/ended_at
        index, not whole rows, and no flush: it runs every heartbeat."""
        async with self._session() as s:
            rows = (await s.execute(select(CallLog.id, CallLog.call_uuid).where(
                CallLog.owner == owner, CallLog.ended_at.is_(None),
                CallLog.created_at < utcnow() - timedelta(seconds=older_than)))).all()
        return [(int(i), str(u)) for i, u in rows]

    async def count_call_events(self, call_id: int) -> int:
        await self.flush()
        async with self._session() as s:
            return int(await s.scalar(select(func.count(CallEvent.id)).where(CallEvent.call_id == call_id)) or 0)

    async def close_orphans(self, reason: str, *, owner: str | None = None, any_owner: bool = False,
                            call_id: int | None = None, last_seen: datetime | None = None) -> list[dict[str, Any]]:
        """Close the open calls of a dead owner (or of any owner: `any_owner`, SQLite's single process) and return
        the rows this call closed, nobody else's.

        `call_status` becomes completed (it was answered) or failed, `hangup_source` system. `ended_at` is when
        the owner was last seen alive (its last heartbeat; never before the call began), else now: that is the
        latest moment the call is known to have been up, so durations are not inflated by however long it took to
        notice."""
        await self.flush()
        now = utcnow()
        where: list[ColumnElement[bool]] = [CallLog.ended_at.is_(None)]
        if not any_owner:
            where.append(CallLog.owner.is_(None) if owner is None else CallLog.owner == owner)
        if call_id is not None:
            where.append(CallLog.id == call_id)
        claim = (update(CallLog).where(*where).values(
            ended_at=now, hangup_source="system", hangup_reason=reason,
            call_status=case((CallLog.answered_at.is_not(None), "completed"), else_="failed"))
            .returning(CallLog.id, CallLog.created_at, CallLog.answered_at))
        seen = _aware(last_seen) or now
        async with self._writing_core() as conn:
            closed = (await conn.execute(claim)).all()
            if not closed:
                return []
            fixes = []
            for cid, created_at, answered_at in closed:
                created, answered = _aware(created_at), _aware(answered_at)
                ended = min(now, max(seen, answered or created or seen))
                duration = max(0.0, (ended - answered).total_seconds()) if answered else 0.0
                fixes.append({"_id": cid, "ended_at": ended, "call_duration_in_seconds": round(duration, 3)})
            await conn.execute(update(CallLog).where(CallLog.id == bindparam("_id")).values(
                ended_at=bindparam("ended_at"), call_duration_in_seconds=bindparam("call_duration_in_seconds")),
                fixes)
        async with self._session() as s:
            rows = (await s.scalars(select(CallLog).where(CallLog.id.in_([c[0] for c in closed]))
                                    .order_by(CallLog.id))).all()
            return [row_dict(r) for r in rows]

    # who registers a registration-based SIP trunk (docs/deploy.md) -----------------------------------------------
    async def claim_registration(self, number_id: int, me: str, stale_after: float) -> bool:
        """Become the process that REGISTERs trunk `number_id`, unless another running process with a fresh
        heartbeat is it (one conditional UPDATE: of two processes claiming at once, one wins). A draining, stopped
        or lost holder loses it. Written without a cache notification: only the SIP carriers read it, each on its
        own sync (carriers/sip.py)."""
        running = select(Node.proc).where(Node.state == "running",
                                          Node.heartbeat_at >= self._cutoff(stale_after)).scalar_subquery()
        free = (PhoneNumber.registered_by.is_(None) | (PhoneNumber.registered_by == me)
                | PhoneNumber.registered_by.not_in(running))
        async with self._writing_core() as conn:
            result = await conn.execute(update(PhoneNumber).where(PhoneNumber.id == number_id, free)
                                        .values(registered_by=me))
            return bool(result.rowcount == 1)

    async def release_registration(self, number_id: int, me: str) -> None:
        """`me` no longer REGISTERs trunk `number_id` (draining, stopped, or the trunk stopped registering)."""
        async with self._writing_core() as conn:
            await conn.execute(update(PhoneNumber).where(PhoneNumber.id == number_id,
                                                         PhoneNumber.registered_by == me).values(registered_by=None))

    # webhook outbox of a lost process -------------------------------------------------------------------------
    async def outbox_take(self, lost: str, me: str) -> list[dict[str, Any]]:
        """Move the undelivered webhooks of process `lost` to `me` (conditional UPDATE: one survivor gets each
        row) and return them oldest first."""
        await self.flush()
        async with self._writing_core() as conn:
            ids = [r[0] for r in (await conn.execute(
                update(WebhookOutbox).where(WebhookOutbox.owner == lost).values(owner=me)
                .returning(WebhookOutbox.id))).all()]
        if not ids:
            return []
        async with self._session() as s:
            rows = (await s.scalars(select(WebhookOutbox).where(WebhookOutbox.id.in_(ids))
                                    .order_by(WebhookOutbox.id))).all()
            return [row_dict(r) for r in rows]
