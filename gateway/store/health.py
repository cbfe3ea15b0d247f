"""The store's number-health half: call outcomes per number over a window, and the latest health record of each
number (`number_health`), shared by every process of a cluster (gateway/health.py)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from .models import CallLog, NumberHealth, row_dict, utcnow
from .nodes import ClusterStore

#: call statuses that mean an outbound call was not answered for a reason worth naming
UNANSWERED = ("busy", "no-answer", "failed", "rejected", "canceled")


class HealthStore(ClusterStore):
    """Mixed into `Store`; uses its engine, sessions and write turn."""

    async def call_outcomes(self, number_id: int, since: datetime, top: int = 5) -> dict[str, Any]:
        """Outbound calls of `number_id` that ended since `since`: how many, how many were answered, and the most
        frequent reasons of the unanswered ones (`hangup_reason`: SIP status lines, carrier errors…)."""
        ended = [CallLog.phone_number_id == number_id, CallLog.call_direction == "outbound",
                 CallLog.created_at >= since, CallLog.ended_at.is_not(None)]
        async with self._session() as s:
            attempts = int(await s.scalar(select(func.count(CallLog.id)).where(*ended)) or 0)
            answered = int(await s.scalar(select(func.count(CallLog.id)).where(
                *ended, CallLog.answered_at.is_not(None))) or 0)
            reasons = (await s.execute(
                select(CallLog.call_status, CallLog.hangup_reason, func.count(CallLog.id).label("n"))
                .where(*ended, CallLog.answered_at.is_(None), CallLog.call_status.in_(UNANSWERED))
                .group_by(CallLog.call_status, CallLog.hangup_reason)
                .order_by(func.count(CallLog.id).desc()).limit(top))).all()
        return {"attempts": attempts, "answered": answered,
                "top_failures": [{"status": st, "reason": reason or st, "count": int(n)} for st, reason, n in reasons]}

    async def save_health(self, number_id: int, score: int, status: str, data: dict[str, Any]) -> None:
        async with self._writing() as s:
            row = await s.get(NumberHealth, number_id)
            if row is None:
                row = NumberHealth(number_id=number_id)
                s.add(row)
            row.health_score, row.health_status, row.data = score, status, data
            row.health_score_updated_at = utcnow()

    async def health_records(self, number_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        q = select(NumberHealth)
        if number_ids is not None:
            q = q.where(NumberHealth.number_id.in_(number_ids))
        async with self._session() as s:
            return {r.number_id: row_dict(r) for r in (await s.scalars(q)).all()}

    async def health_fresh(self, number_id: int, within: float) -> bool:
        """Did some process record this number's health within `within` seconds (then this one skips it)?"""
        async with self._session() as s:
            at = await s.scalar(select(NumberHealth.health_score_updated_at).where(
                NumberHealth.number_id == number_id))
        if at is None:
            return False
        at = at if at.tzinfo else at.replace(tzinfo=utcnow().tzinfo)
        return bool(utcnow() - at < timedelta(seconds=within))
