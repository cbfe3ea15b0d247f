"""The store's dispatch-queue half: queued calls, bulk calls, and the shared outbound pace of each number.

Every statement is written for several processes on one PostgreSQL database: a process hands out the slots of a
number while holding that number's `dispatch_pace` row (`FOR UPDATE SKIP LOCKED`: a second process skips the
number instead of waiting), and claims queue rows the same way, so each queued call is placed by exactly one
process and the number's calls-per-second limit holds for the cluster as a whole. Slot times come from the
database clock on PostgreSQL (`clock_timestamp()`), so clock skew between machines cannot break the pace. SQLite
serves one process; `FOR UPDATE` compiles to nothing there and its single writer serialises the same statements.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ..retries import RetryPolicy, settle
from .models import BulkCall, CallLog, DispatchPace, QueuedCall, row_dict, utcnow
from .nodes import ClusterStore

#: a bulk call's progress counts: queued (first attempt not placed yet), dialing (being placed, or its call is
#: live), retrying (waiting for another attempt), completed (answered), failed, cancelled
PROGRESS = ("queued", "dialing", "retrying", "completed", "failed", "cancelled")


#: the batch writer's statement for `finish_item` (executemany: one row per finished item)
FINISH_ITEM = update(QueuedCall).where(QueuedCall.id == bindparam("_id"), QueuedCall.status == "dispatching").values(
    status=bindparam("status"), error=bindparam("error"), call_log_id=bindparam("call_log_id"),
    dispatched_at=bindparam("dispatched_at"))


@dataclass
class Slots:
    """What one turn at a number's pace row gave out: the database clock then (epoch s), one start time per slot
    (epoch s, `1/cps` apart), and the queue items claimed for them (in slot order)."""
    now: float
    times: list[float] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    #: seconds until the next free slot when none was free (what a refused direct dispatch says in Retry-After)
    wait: float = 0.0


def progress(status: str, tried: bool) -> str:
    """The progress count an item of `status` falls in (`tried`: a call was placed for it before)."""
    if status == "queued":
        return "retrying" if tried else "queued"
    if status in ("dispatching", "dispatched"):
        return "dialing"
    return status


class QueueStore(ClusterStore):
    """Mixed into `Store`; uses its engine, sessions and write turn."""

    async def _db_now(self, conn: AsyncConnection) -> float:
        if self.is_postgres:
            return float(await conn.scalar(select(func.extract("epoch", func.clock_timestamp()))) or 0.0)
        return time.time()

    # enqueue ------------------------------------------------------------------------------------------------
    async def enqueue_calls(self, items: list[dict[str, Any]], bulk: dict[str, Any] | None = None
                            ) -> tuple[dict[str, Any] | None, list[int]]:
        """Queue calls (`agent_id`, `from_number_id`, `to_number`, `call_context`, optionally `recording`: the
        per-call recording override), optionally as a new bulk call
        whose id goes into every item's `bulk_call_id` and `call_context.bulk_call_id`; one transaction. A bulk
        call's `scheduled_at` (aware datetime) is its items' `not_before`."""
        bulk_row = None
        not_before = 0.0
        async with self._writing_core() as conn:
            bulk_id = None
            if bulk is not None:
                if bulk.get("scheduled_at") is not None:
                    not_before = bulk["scheduled_at"].timestamp()
                bulk_id = (await conn.execute(insert(BulkCall).values(**bulk, created_at=utcnow())
                                              .returning(BulkCall.id))).scalar_one()
                items = [{**it, "call_context": {**(it.get("call_context") or {}), "bulk_call_id": bulk_id}}
                         for it in items]
            rows = [{"agent_id": it["agent_id"], "from_number_id": it["from_number_id"],
                     "to_number": it["to_number"], "call_context": it.get("call_context") or {},
                     "recording": it.get("recording"),
                     "bulk_call_id": bulk_id, "status": "queued", "attempts": 0, "not_before": not_before,
                     "created_at": utcnow()} for it in items]
            ids = [r[0] for r in (await conn.execute(insert(QueuedCall).returning(QueuedCall.id), rows)).all()]
            if bulk_id is not None:
                got = (await conn.execute(select(BulkCall).where(BulkCall.id == bulk_id))).mappings().one()
                bulk_row = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in got.items()}
        return bulk_row, sorted(ids)

    # the pace of a number, and claiming ---------------------------------------------------------------------
    async def _pace_row(self, conn: AsyncConnection, number_id: int) -> float | None:
        """Lock `number_id`'s pace row (created on first use) and return its next free slot; None when another
        process holds it right now."""
        ins = (postgresql.insert(DispatchPace) if self.is_postgres else sqlite.insert(DispatchPace))
        await conn.execute(ins.values(number_id=number_id, next_at=0.0).on_conflict_do_nothing())
        got = (await conn.execute(select(DispatchPace.next_at).where(DispatchPace.number_id == number_id)
                                  .with_for_update(skip_locked=True))).first()
        return None if got is None else float(got[0])

    async def take_slots(self, number_id: int, *, cps: float | None, want: int, horizon: float,
                         me: str | None = None, free: int | None = None, catch_up: float = 0.0) -> Slots | None:
        """Hand out up to `want` slots of `number_id` starting within `horizon` s from now at `cps` (no limit:
        all now), capped by `free` channels. When the number's next slot went by less than `catch_up` s ago (a turn
        that came late) the slots go on from it; a number idle for longer starts afresh at now, never with a
        burst. With `me`, claim
        that many due queue items of the number for them (status `dispatching`, owner `me`); without, the slots
        are for direct dispatches. None when another process is handing out this number's slots right now."""
        async with self._writing_core() as conn:
            next_at = await self._pace_row(conn, number_id)
            if next_at is None:
                return None
            now = await self._db_now(conn)
            start = next_at if next_at >= now - catch_up else now
            if cps:
                n = max(0, math.floor((now + horizon - start) * cps + 1e-9) + 1) if start <= now + horizon else 0
            else:
                n = want
            n = min(n, want, free if free is not None else want)
            slots = Slots(now)
            if n <= 0:
                slots.wait = max(0.0, start - now)
                return slots
            if me is not None:
                ids = list((await conn.execute(
                    select(QueuedCall.id).where(*self._due(number_id, now)).order_by(QueuedCall.id).limit(n)
                    .with_for_update(skip_locked=True))).scalars())
                if ids:
                    await conn.execute(update(QueuedCall).where(QueuedCall.id.in_(ids)).values(
                        status="dispatching", owner=me, attempts=QueuedCall.attempts + 1))
                    rows = (await conn.execute(select(QueuedCall).where(QueuedCall.id.in_(ids))
                                               .order_by(QueuedCall.id))).mappings().all()
                    slots.items = [dict(r) for r in rows]
                n = len(ids)
            slots.times = [start + i / cps if cps else now for i in range(n)]
            if cps and n:
                await conn.execute(update(DispatchPace).where(DispatchPace.number_id == number_id)
                                   .values(next_at=start + n / cps))
        return slots

    @staticmethod
    def _due(number_id: int | None, now: float) -> list[Any]:
        running = select(BulkCall.id).where(BulkCall.status == "in_progress")
        where = [QueuedCall.status == "queued", QueuedCall.not_before <= now,
                 or_(QueuedCall.bulk_call_id.is_(None), QueuedCall.bulk_call_id.in_(running))]
        if number_id is not None:
            where.append(QueuedCall.from_number_id == number_id)
        return where

    async def due_numbers(self) -> list[int]:
        """Numbers with queue items due now (in an active bulk call or none)."""
        if self.engine is None:
            raise RuntimeError("the store is not open")
        async with self.engine.connect() as conn:
            now = await self._db_now(conn)
            rows = (await conn.execute(select(QueuedCall.from_number_id).where(*self._due(None, now))
                                       .distinct())).scalars().all()
        return sorted(int(r) for r in rows)

    async def dispatching_on(self, number_id: int) -> int:
        """Items of `number_id` claimed but not yet placed, by any process: they hold a channel already."""
        async with self._session() as s:
            return int(await s.scalar(select(func.count(QueuedCall.id)).where(
                QueuedCall.from_number_id == number_id, QueuedCall.status == "dispatching")) or 0)

    # outcome of an item -------------------------------------------------------------------------------------
    def finish_item(self, item_id: int, status: str, *, call_log_id: int | None = None,
                    error: str | None = None) -> None:
        """Record what became of a claimed item: written behind, in the call log's batches (at hundreds of calls
        per second one transaction per call would queue behind them). Until then the item still counts as
        `dispatching`; a crash meanwhile is recovered from its call-log row (`recover_items`)."""
        self._writes.put_nowait(("queue_done", item_id, {
            "status": status, "error": error[:300] if error else None, "call_log_id": call_log_id,
            "dispatched_at": utcnow() if call_log_id is not None else None}))

    async def requeue_item(self, item_id: int, not_before: float, error: str | None = None) -> None:
        """Back to `queued` (the number or the gateway was full when its slot came): tried again after
        `not_before` (epoch s). No call was placed, so the claim's attempt is given back."""
        async with self._writing_core() as conn:
            await conn.execute(update(QueuedCall).where(QueuedCall.id == item_id,
                                                        QueuedCall.status == "dispatching").values(
                status="queued", owner=None, not_before=not_before, error=error[:300] if error else None,
                attempts=QueuedCall.attempts - 1))

    async def fail_queued(self, number_id: int, error: str) -> int:
        """Fail every queued item of a number that cannot dial any more (deleted, no carrier)."""
        async with self._writing_core() as conn:
            result = await conn.execute(update(QueuedCall).where(
                QueuedCall.from_number_id == number_id, QueuedCall.status == "queued").values(
                status="failed", error=error[:300]))
            return int(result.rowcount or 0)

    async def recover_items(self, stale_after: float, *, mine: str | None = None,
                            ids: list[int] | None = None) -> tuple[int, int]:
        """Items left `dispatching` by a process that is gone (crash), by `mine` (this process's previous run), or
        the items `ids` this process gives back when it stops: the ones whose call row exists were placed
        (→ dispatched), the others never reached a carrier (→ queued again). Returns (dispatched, requeued)."""
        await self.flush()
        if ids is not None:
            who: Any = QueuedCall.id.in_(ids)
        else:
            who = or_(QueuedCall.owner.is_(None), QueuedCall.owner.not_in(self._alive_owners(stale_after)),
                      *([QueuedCall.owner == mine] if mine else []))
        orphaned = [QueuedCall.status == "dispatching", who]
        # the row of this attempt (a retried item has one row per attempt; rows of older releases have none)
        this_attempt = or_(CallLog.attempt == QueuedCall.attempts, CallLog.attempt.is_(None))
        async with self._writing_core() as conn:
            placed = (await conn.execute(select(QueuedCall.id, CallLog.id).join(
                CallLog, (CallLog.queue_item_id == QueuedCall.id) & this_attempt).where(*orphaned))).all()
            for item_id, call_id in placed:
                await conn.execute(update(QueuedCall).where(QueuedCall.id == item_id).values(
                    status="dispatched", call_log_id=call_id, dispatched_at=utcnow()))
            result = await conn.execute(update(QueuedCall).where(*orphaned).values(
                status="queued", owner=None, attempts=QueuedCall.attempts - 1))
        return len(placed), int(result.rowcount or 0)

    async def settle_items(self, limit: int = 2000) -> dict[str, int]:
        """Settle placed items whose call ended (gateway/retries.py): completed, failed, or queued again for a
        retry `delay_seconds` after the call ended. Any process may run it: each item is settled once (its
        update is conditional on `dispatched`; PostgreSQL skips rows another process is settling). Returns how
        many items went each way."""
        done: dict[str, int] = {"completed": 0, "failed": 0, "retry": 0}
        ended = [QueuedCall.status == "dispatched", CallLog.ended_at.is_not(None)]
        async with self._session() as s:       # most turns find nothing: no write turn for them
            if await s.scalar(select(QueuedCall.id).join(CallLog, CallLog.id == QueuedCall.call_log_id)
                              .where(*ended).limit(1)) is None:
                return done
        async with self._writing_core() as conn:
            rows = (await conn.execute(
                select(QueuedCall.id, QueuedCall.attempts, QueuedCall.bulk_call_id, CallLog.call_status,
                       CallLog.ended_at)
                .join(CallLog, CallLog.id == QueuedCall.call_log_id).where(*ended)
                .order_by(QueuedCall.id).limit(limit).with_for_update(of=QueuedCall, skip_locked=True))).all()
            if not rows:
                return done
            bulk_ids = sorted({r.bulk_call_id for r in rows if r.bulk_call_id is not None})
            bulks = {b.id: (RetryPolicy.of(b.retry), b.status != "cancelled") for b in (await conn.execute(
                select(BulkCall.id, BulkCall.retry, BulkCall.status).where(BulkCall.id.in_(bulk_ids)))).all()}
            final: list[dict[str, Any]] = []
            again: list[dict[str, Any]] = []
            for r in rows:
                policy, may_retry = bulks.get(r.bulk_call_id, (None, False))
                fate = settle(r.call_status, r.attempts, policy, may_retry=may_retry)
                done[fate] += 1
                if fate == "retry":
                    assert policy is not None
                    at = r.ended_at if r.ended_at.tzinfo else r.ended_at.replace(tzinfo=UTC)
                    again.append({"_id": r.id, "outcome": r.call_status,
                                  "not_before": at.timestamp() + policy.delay_seconds})
                else:
                    final.append({"_id": r.id, "status": fate, "outcome": r.call_status})
            if final:
                await conn.execute(update(QueuedCall).where(
                    QueuedCall.id == bindparam("_id"), QueuedCall.status == "dispatched").values(
                    status=bindparam("status"), outcome=bindparam("outcome")), final)
            if again:
                await conn.execute(update(QueuedCall).where(
                    QueuedCall.id == bindparam("_id"), QueuedCall.status == "dispatched").values(
                    status="queued", owner=None, outcome=bindparam("outcome"),
                    not_before=bindparam("not_before")), again)
        return done

    # reading and cancelling -----------------------------------------------------------------------------------
    async def list_queue(self, pageno: int = 1, pagesize: int = 20, *, status: str | None = None,
                         bulk_call_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
        where = []
        if status:
            where.append(QueuedCall.status == status)
        if bulk_call_id is not None:
            where.append(QueuedCall.bulk_call_id == bulk_call_id)
        await self.flush()      # outcomes are written behind (finish_item): the API reads its own writes
        async with self._session() as s:
            total = await s.scalar(select(func.count(QueuedCall.id)).where(*where))
            rows = (await s.scalars(select(QueuedCall).where(*where).order_by(QueuedCall.id)
                                    .offset((pageno - 1) * pagesize).limit(pagesize))).all()
            return [row_dict(r) for r in rows], int(total or 0)

    async def get_item(self, item_id: int) -> dict[str, Any] | None:
        await self.flush()
        async with self._session() as s:
            r = await s.get(QueuedCall, item_id)
            return row_dict(r) if r else None

    async def cancel_item(self, item_id: int) -> bool:
        """Cancel a call still waiting (`queued`); False when it is already being placed or done."""
        async with self._writing_core() as conn:
            result = await conn.execute(update(QueuedCall).where(QueuedCall.id == item_id,
                                                                 QueuedCall.status == "queued")
                                        .values(status="cancelled"))
            return bool(result.rowcount == 1)

    async def queue_depth(self) -> dict[str, int]:
        """Items per status (for /metrics)."""
        async with self._session() as s:
            rows = (await s.execute(select(QueuedCall.status, func.count(QueuedCall.id))
                                    .group_by(QueuedCall.status))).all()
        return {str(k): int(v) for k, v in rows}

    # bulk calls -----------------------------------------------------------------------------------------------
    async def get_bulk(self, bulk_id: int) -> dict[str, Any] | None:
        """A bulk call with its progress `counts` (PROGRESS) and `outcomes`: how its contacts' last calls ended
        (call_status → contacts), for those whose calls ended."""
        await self.flush()
        async with self._session() as s:
            b = await s.get(BulkCall, bulk_id)
            if b is None:
                return None
            rows = (await s.execute(
                select(QueuedCall.status, QueuedCall.attempts, QueuedCall.outcome, func.count(QueuedCall.id))
                .where(QueuedCall.bulk_call_id == bulk_id)
                .group_by(QueuedCall.status, QueuedCall.attempts, QueuedCall.outcome))).all()
        counts = dict.fromkeys(PROGRESS, 0)
        outcomes: dict[str, int] = {}
        for status, attempts, outcome, n in rows:
            counts[progress(status, attempts > 0)] += int(n)
            if status in ("completed", "failed") and outcome:
                outcomes[outcome] = outcomes.get(outcome, 0) + int(n)
        return {**row_dict(b), "counts": counts, "outcomes": outcomes}

    async def list_bulks(self, pageno: int = 1, pagesize: int = 20) -> tuple[list[dict[str, Any]], int]:
        async with self._session() as s:
            total = await s.scalar(select(func.count(BulkCall.id)))
            ids = list((await s.scalars(select(BulkCall.id).order_by(BulkCall.id.desc())
                                        .offset((pageno - 1) * pagesize).limit(pagesize))).all())
        out = [await self.get_bulk(i) for i in ids]
        return [b for b in out if b is not None], int(total or 0)

    async def reschedule_bulk(self, bulk_id: int, when: datetime, zone: str | None) -> bool:
        """Move a bulk call's start: its calls not tried yet wait until `when` (calls already placed or waiting
        for a retry are not moved). False when it is cancelled or gone."""
        async with self._writing_core() as conn:
            result = await conn.execute(update(BulkCall).where(BulkCall.id == bulk_id,
                                                               BulkCall.status != "cancelled")
                                        .values(scheduled_at=when, timezone=zone))
            if result.rowcount != 1:
                return False
            await conn.execute(update(QueuedCall).where(QueuedCall.bulk_call_id == bulk_id,
                                                        QueuedCall.status == "queued", QueuedCall.attempts == 0)
                               .values(not_before=when.timestamp()))
        return True

    async def stopped_bulks(self, bulk_ids: list[int]) -> dict[int, str]:
        """Of `bulk_ids`, those paused or cancelled (id → status): their claimed calls are given back."""
        if not bulk_ids:
            return {}
        async with self._session() as s:
            rows = (await s.execute(select(BulkCall.id, BulkCall.status).where(
                BulkCall.id.in_(bulk_ids), BulkCall.status != "in_progress"))).all()
        return {int(i): str(st) for i, st in rows}

    async def cancel_queued_of_bulk(self, bulk_id: int) -> int:
        """Cancel the calls of a bulk call still waiting (queued, or waiting for a retry)."""
        async with self._writing_core() as conn:
            result = await conn.execute(update(QueuedCall).where(QueuedCall.bulk_call_id == bulk_id,
                                                                 QueuedCall.status == "queued")
                                        .values(status="cancelled"))
            return int(result.rowcount or 0)

    async def set_bulk_status(self, bulk_id: int, status: str, *, only_from: tuple[str, ...]) -> bool:
        """Move a bulk call to `status` if it is in one of `only_from`; cancelling also cancels its queued
        items (calls already placed go on)."""
        async with self._writing_core() as conn:
            result = await conn.execute(update(BulkCall).where(BulkCall.id == bulk_id,
                                                               BulkCall.status.in_(only_from))
                                        .values(status=status))
            if result.rowcount != 1:
                return False
            if status == "cancelled":
                await conn.execute(update(QueuedCall).where(QueuedCall.bulk_call_id == bulk_id,
                                                            QueuedCall.status == "queued")
                                   .values(status="cancelled"))
        return True
