"""Async store over SQLAlchemy 2: one code path for the embedded SQLite file and for PostgreSQL.

Methods return plain dicts so callers (API, carriers) never hold ORM objects across awaits. Phone numbers come
back without secrets unless `with_secrets=True` is asked for explicitly by carrier code.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .models import Agent, Base, CallEvent, CallLog, PhoneNumber

# aiosqlite logs every statement with its parameters at DEBUG, trunk passwords and carrier tokens included:
# keep it above DEBUG so `--log-level debug` never writes secrets to the log.
logging.getLogger("aiosqlite").setLevel(logging.INFO)


class NotFoundError(LookupError):
    pass


class DuplicateError(ValueError):
    pass


def database_url(db: str) -> str:
    """A bare path means an SQLite file; anything with a scheme is a SQLAlchemy URL (postgresql:// → asyncpg)."""
    if "://" not in db:
        return f"sqlite+aiosqlite:///{os.path.abspath(os.path.expanduser(db))}"
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+asyncpg://" + db.split("://", 1)[1]
    if db.startswith("sqlite://"):
        return db.replace("sqlite://", "sqlite+aiosqlite://", 1)
    return db


def _row(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for col in obj.__table__.columns:
        if col.key in exclude:
            continue
        v = getattr(obj, col.key)
        if isinstance(v, datetime):
            v = (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()
        out[col.key] = v
    return out


class Store:
    def __init__(self, db: str) -> None:
        self.url = database_url(db)
        self.engine: AsyncEngine | None = None
        self._session: async_sessionmaker | None = None

    async def open(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[-1]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.engine = create_async_engine(self.url)
        if self.url.startswith("sqlite"):
            @event.listens_for(self.engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # foreign keys + concurrent readers
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: no corruption risk, far fewer fsyncs
                cur.close()
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        self._session = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    # agents ---------------------------------------------------------------------------------------------------
    async def create_agent(self, data: dict[str, Any]) -> dict[str, Any]:
        async with self._session.begin() as s:
            a = Agent(**data)
            s.add(a)
            await s.flush()
            return _row(a)

    async def get_agent(self, agent_id: int) -> dict[str, Any] | None:
        async with self._session() as s:
            a = await s.get(Agent, agent_id)
            return _row(a) if a else None

    async def list_agents(self) -> list[dict[str, Any]]:
        async with self._session() as s:
            return [_row(a) for a in (await s.scalars(select(Agent).order_by(Agent.id))).all()]

    async def update_agent(self, agent_id: int, data: dict[str, Any]) -> dict[str, Any]:
        async with self._session.begin() as s:
            a = await s.get(Agent, agent_id)
            if a is None:
                raise NotFoundError(f"agent {agent_id} not found")
            for k, v in data.items():
                setattr(a, k, v)
            await s.flush()
            return _row(a)

    async def delete_agent(self, agent_id: int) -> None:
        async with self._session.begin() as s:
            a = await s.get(Agent, agent_id)
            if a is None:
                raise NotFoundError(f"agent {agent_id} not found")
            await s.delete(a)

    # phone numbers / trunks -----------------------------------------------------------------------------------
    async def create_number(self, data: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._session.begin() as s:
                if data.get("sip_trunk_name"):
                    dup = await s.scalar(select(PhoneNumber.id).where(
                        PhoneNumber.sip_trunk_name == data["sip_trunk_name"]))
                    if dup is not None:
                        raise DuplicateError(f"sip_trunk_name {data['sip_trunk_name']!r} is already used")
                n = PhoneNumber(**data, secrets=secrets)
                s.add(n)
                await s.flush()
                return _row(n, exclude=("secrets",))
        except IntegrityError as e:
            raise DuplicateError("a phone number with these unique fields already exists") from e

    async def get_number(self, number_id: int, with_secrets: bool = False) -> dict[str, Any] | None:
        async with self._session() as s:
            n = await s.get(PhoneNumber, number_id)
            return _row(n, exclude=() if with_secrets else ("secrets",)) if n else None

    async def find_number(self, e164: str, provider: str | None = None,
                          with_secrets: bool = False) -> dict[str, Any] | None:
        q = select(PhoneNumber).where(PhoneNumber.phone_number == e164)
        if provider:
            q = q.where(PhoneNumber.provider == provider)
        async with self._session() as s:
            n = (await s.scalars(q.order_by(PhoneNumber.id).limit(1))).first()
            return _row(n, exclude=() if with_secrets else ("secrets",)) if n else None

    async def list_numbers(self, pageno: int = 1, pagesize: int = 20, provider: str | None = None,
                           with_secrets: bool = False) -> tuple[list[dict[str, Any]], int]:
        q = select(PhoneNumber)
        cq = select(func.count(PhoneNumber.id))
        if provider:
            q, cq = q.where(PhoneNumber.provider == provider), cq.where(PhoneNumber.provider == provider)
        async with self._session() as s:
            total = await s.scalar(cq)
            rows = (await s.scalars(q.order_by(PhoneNumber.id).offset((pageno - 1) * pagesize).limit(pagesize))).all()
            excl = () if with_secrets else ("secrets",)
            return [_row(n, exclude=excl) for n in rows], int(total or 0)

    async def update_number(self, number_id: int, **fields: Any) -> dict[str, Any]:
        async with self._session.begin() as s:
            n = await s.get(PhoneNumber, number_id)
            if n is None:
                raise NotFoundError(f"phone number {number_id} not found")
            for k, v in fields.items():
                setattr(n, k, v)
            await s.flush()
            return _row(n, exclude=("secrets",))

    async def delete_number(self, number_id: int) -> dict[str, Any]:
        async with self._session.begin() as s:
            n = await s.get(PhoneNumber, number_id)
            if n is None:
                raise NotFoundError(f"phone number {number_id} not found")
            row = _row(n, exclude=("secrets",))
            await s.delete(n)
            return row

    # call log -------------------------------------------------------------------------------------------------
    async def create_call(self, fields: dict[str, Any]) -> dict[str, Any]:
        async with self._session.begin() as s:
            c = CallLog(**fields)
            s.add(c)
            await s.flush()
            return _row(c)

    async def update_call(self, call_id: int, **fields: Any) -> dict[str, Any]:
        async with self._session.begin() as s:
            c = await s.get(CallLog, call_id)
            if c is None:
                raise NotFoundError(f"call {call_id} not found")
            for k, v in fields.items():
                if k == "extra":
                    v = {**(c.extra or {}), **v}
                setattr(c, k, v)
            await s.flush()
            return _row(c)

    async def get_call(self, call_id: int) -> dict[str, Any] | None:
        async with self._session() as s:
            c = await s.get(CallLog, call_id)
            return _row(c) if c else None

    async def find_call(self, *, call_uuid: str | None = None, carrier_sid: str | None = None) -> dict[str, Any] | None:
        q = select(CallLog)
        if call_uuid is not None:
            q = q.where(CallLog.call_uuid == call_uuid)
        elif carrier_sid is not None:
            q = q.where(CallLog.carrier_sid == carrier_sid)
        else:
            return None
        async with self._session() as s:
            c = (await s.scalars(q.order_by(CallLog.id.desc()).limit(1))).first()
            return _row(c) if c else None

    async def list_calls(self, pageno: int = 1, pagesize: int = 20, agent_id: int | None = None,
                         call_status: str | None = None) -> tuple[list[dict[str, Any]], int]:
        q = select(CallLog)
        cq = select(func.count(CallLog.id))
        if agent_id is not None:
            q, cq = q.where(CallLog.agent_id == agent_id), cq.where(CallLog.agent_id == agent_id)
        if call_status:
            q, cq = q.where(CallLog.call_status == call_status), cq.where(CallLog.call_status == call_status)
        async with self._session() as s:
            total = await s.scalar(cq)
            rows = (await s.scalars(q.order_by(CallLog.id.desc()).offset((pageno - 1) * pagesize).limit(pagesize))).all()
            return [_row(c) for c in rows], int(total or 0)

    async def add_call_event(self, call_id: int, kind: str, data: dict[str, Any] | None = None) -> None:
        async with self._session.begin() as s:
            s.add(CallEvent(call_id=call_id, kind=kind, data=data or {}))

    async def list_call_events(self, call_id: int) -> list[dict[str, Any]]:
        async with self._session() as s:
            rows = (await s.scalars(select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id))).all()
            return [_row(e) for e in rows]
