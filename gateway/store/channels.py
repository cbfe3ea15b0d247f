"""Live calls per phone number, counted the same way by every process of a cluster (docs/api.md, "Channels").

A number's channel limit is checked against the call log itself, never against a counter: a call counts while
its row is open (`ended_at` null) and its owner is a live process (owning state, fresh heartbeat in `nodes`). A
process that crashes stops counting once its heartbeat is stale, and its rows are then closed as `node_lost`
(gateway/cluster/membership.py), so a crash cannot leak channels. The check and the insert of the new call's row
are one transaction; on PostgreSQL a transaction-scoped advisory lock per number serialises them across
processes (SQLite has one writer at a time already). Call ends are written behind (store.py's batch writer, which
lets a batch fill for up to `Store.WINDOW`): the check flushes this process's own queued writes first, so a channel
one of its calls freed counts free at once; one freed by another process a few milliseconds ago may still count —
the limit errs on the safe side, never over it.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select

from .durable import SETUP_SECONDS, StoreUnavailableError
from .models import CallLog
from .nodes import ClusterStore

#: first key of the advisory lock `pg_advisory_xact_lock(CHANNEL_LOCK, number_id)` (any constant int4 that no
#: other code of the database uses)
CHANNEL_LOCK = 0x67770001


class ChannelStore(ClusterStore):
    """Mixed into `Store` (uses its engine, write turn, clock and `_call_row`)."""

    def _live_calls(self, stale_after: float) -> list[Any]:
        return [CallLog.ended_at.is_(None), CallLog.owner.in_(self._alive_owners(stale_after))]

    async def create_call_within(self, fields: dict[str, Any], number_id: int, limit: int,
                                 stale_after: float) -> dict[str, Any] | None:
        """Insert a call-log row for a call on `number_id` unless `limit` calls on it are live already (then
        None). The count and the insert are atomic across every process sharing the database. Like the insert
        lane, waits at most SETUP_SECONDS (TimeoutError, transient: the call is refused as unavailable) for a
        database that does not answer."""
        row = self._call_row(fields)
        if self.degraded:   # the flush below would wait for the database to come back while the INVITE waits
            raise StoreUnavailableError("the call log is unavailable (writes held for the database)")
        async with asyncio.timeout(SETUP_SECONDS):
            return await self._insert_within_limit(row, number_id, limit, stale_after)

    async def _insert_within_limit(self, row: dict[str, Any], number_id: int, limit: int,
                                   stale_after: float) -> dict[str, Any] | None:
        await self.flush()
        async with self._writing_core() as conn:
            if self.is_postgres:
                await conn.execute(select(func.pg_advisory_xact_lock(CHANNEL_LOCK, number_id)))
            live = await conn.scalar(select(func.count(CallLog.id)).where(
                CallLog.phone_number_id == number_id, *self._live_calls(stale_after)))
            if int(live or 0) >= limit:
                return None
            row["id"] = (await conn.execute(insert(CallLog).values(**row).returning(CallLog.id))).scalar_one()
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}

    async def live_calls_by_number(self, stale_after: float, number_ids: list[int] | None = None) -> dict[int, int]:
        """Live calls per phone-number id, the count the channel limit is checked against."""
        q = select(CallLog.phone_number_id, func.count(CallLog.id)).where(
            CallLog.phone_number_id.is_not(None), *self._live_calls(stale_after))
        if number_ids is not None:
            q = q.where(CallLog.phone_number_id.in_(number_ids))
        async with self._session() as s:
            rows = (await s.execute(q.group_by(CallLog.phone_number_id))).all()
        return {n: int(c) for n, c in rows if n is not None}
