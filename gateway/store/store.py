"""Async store over SQLAlchemy 2: one code path for the embedded SQLite file and for PostgreSQL.

Methods return plain dicts so callers (API, carriers) never hold ORM objects across awaits. Phone numbers come
back without secrets unless `with_secrets=True` is asked for explicitly by carrier code. Secrets are encrypted in
the database (gateway/secretbox.py) and decrypted only on that explicit request; an SQLite file is created 0600.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import logging as _logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, event, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ..secretbox import SecretBox, SecretKeyError
from .channels import ChannelStore
from .dispatchq import FINISH_ITEM, QueueStore
from .durable import StoreUnavailableError, backoff, is_transient, reason
from .health import HealthStore
from .models import Agent, Base, CallEvent, CallLog, PhoneNumber, WebhookOutbox, utcnow
from .models import row_dict as _row
from .upgrade import never_reuse_ids

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


_T = TypeVar("_T")
_I = TypeVar("_I")
_log = _logging.getLogger("gateway.store")

#: first key of the advisory lock `pg_advisory_xact_lock(SCHEMA_LOCK, 0)` held while a process creates or upgrades
#: the schema (channels.py's CHANNEL_LOCK is the other key of this database)
SCHEMA_LOCK = 0x67770002


async def _schema_turn(conn: AsyncConnection) -> None:
    """Make this transaction the only one creating or upgrading the schema until it commits. The workers of
    `gateway serve --workers N` (and several nodes) open a new database at the same moment: their `create_all`s
    each saw no table and all but one failed on CREATE TABLE (PostgreSQL: a duplicate pg_type row; SQLite: "table
    already exists"), so those workers died at start-up and were restarted. The one after waits here, then finds
    every table made."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK, 0)))
    elif conn.dialect.name == "sqlite":
        # pysqlite starts no transaction for DDL: begin one that takes the write lock now (busy_timeout waits)
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


def _private_sqlite_file(path: str) -> None:
    """Create the database file 0600 before SQLite opens it (its -wal and -shm files take the database file's
    mode), and take group/other access away from files an older release created 0644."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def _add_missing_columns(sync_conn: Any) -> None:
    """Bring a database made by an older release up to the models: `create_all` makes missing tables but never
    changes existing ones, so every column (nullable or with its server default) and index added since is added
    here.
    Additive only: nothing is dropped or retyped, so an older release can still read the database."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateColumn, CreateIndex

    inspector = inspect(sync_conn)
    for table in Base.metadata.sorted_tables:
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name in existing:
                continue
            ddl = CreateColumn(col).compile(dialect=sync_conn.dialect)
            # the workers of `serve --workers N` open the store at the same moment: on PostgreSQL the second
            # ALTER waits for the first one's lock, then finds the column and does nothing (SQLite: one process)
            guard = "IF NOT EXISTS " if sync_conn.dialect.name == "postgresql" else ""
            sync_conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {guard}{ddl}")
            _log.warning("database upgraded", extra={"table": table.name, "column": col.name})
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                # IF NOT EXISTS for the same race as the columns above: a worker that found the index missing
                # may lose to another that creates it first (both dialects accept it)
                sync_conn.execute(CreateIndex(index, if_not_exists=True))
                _log.warning("database upgraded", extra={"table": table.name, "index": index.name})

#: column defaults for a new call-log row (the batch INSERT sets every column explicitly)
_CALL_DEFAULTS: dict[str, Any] = {
    "carrier_sid": None, "agent_id": None, "phone_number_id": None, "from_number": None, "to_number": None,
    "call_status": "queued", "answered_at": None, "ended_at": None, "call_duration_in_seconds": None,
    "is_call_transfer": False, "transfer_target": None, "transfer_outcome": None, "amd_detected": False,
    "amd_answered_by": None, "amd_duration": None, "is_voicemail": False, "voicemail_type": None, "is_fax": False,
    "hangup_source": None, "hangup_reason": None, "recording_url": None, "recording_status": None, "recording": None,
    "call_context": {}, "extra": {},
    "owner": None,
    "timing": None, "queue_item_id": None, "bulk_call_id": None, "attempt": None,
}


# Statements the batch writer runs for every batch, built once with expanding IN parameters: building them per
# batch (`.in_(list)`) left reference cycles of bind parameters for the collector, which `gateway serve` runs
# rarely (cli.py), so they piled up per call until a full collection.
_SELECT_EXTRA = select(CallLog.id, CallLog.extra).where(CallLog.id.in_(bindparam("ids", expanding=True)))
_DELETE_OUTBOX = delete(WebhookOutbox).where(WebhookOutbox.delivery_id.in_(bindparam("ids", expanding=True)))
# A batch's call events on PostgreSQL: ONE statement whatever their number, the columns passed as arrays. An
# executemany (what SQLite gets) runs one INSERT per event: a zero-length SIP call writes 5 events, so 5 of the ~12
# statements PostgreSQL ran per call (pg_stat_statements, BENCHMARKS.md "What o costs"). Rows are inserted in the
# batch's order (WITH ORDINALITY … ORDER BY), so event ids keep the order the events were added in.
_INSERT_EVENTS_PG = text(
    "INSERT INTO call_events (call_id, at, kind, data) SELECT c, a, k, d FROM unnest(CAST(:call_ids AS INTEGER[]), "
    "CAST(:ats AS TIMESTAMPTZ[]), CAST(:kinds AS VARCHAR[]), CAST(:datas AS JSON[])) "
    "WITH ORDINALITY AS u(c, a, k, d, n) ORDER BY n")


class _Lane(asyncio.Queue[_T]):
    """A write lane's queue whose flush waits for the items put so far, not for those put after it began: under a
    steady load the queue is never empty, and `join()` (what a flush awaited) returned only in a lull — seconds
    at a few hundred calls a second, during which the lanes stopped letting their batches fill (a flush was
    waiting), so every write went in a batch of its own. Items are done in the order they were put (one consumer,
    batches in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.put_count = 0
        self.done_count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def put_nowait(self, item: _T) -> None:
        super().put_nowait(item)
        self.put_count += 1

    def task_done(self) -> None:
        super().task_done()
        self.done_count += 1
        if self._waiters and self._waiters[0][0] <= self.done_count:
            ready = [fut for target, fut in self._waiters if target <= self.done_count]
            self._waiters = [(target, fut) for target, fut in self._waiters if target > self.done_count]
            for fut in ready:
                _wake(fut)

    async def settled(self) -> None:
        """Wait until every item put before this call is done."""
        target = self.put_count
        if self.done_count >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        await fut


def _write_ref(item: tuple[str, int, Any]) -> str:
    """A write-behind item named for a log line (which call, webhook or queue item), without its data."""
    kind, call_id, payload = item
    if kind == "outbox_add":
        return f"outbox_add:{payload.get('delivery_id')}(call {payload.get('call_id')})"
    if kind == "outbox_del":
        return f"outbox_del:{payload}"
    if kind == "event":
        return f"event:{call_id}:{payload[0]}"
    return f"{kind}:{call_id}"


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


def _utc(at: datetime | None) -> datetime | None:
    """`at` as an aware UTC datetime (naive means UTC already)."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _clone(value: Any) -> Any:
    """A private copy of a cached row for a caller that may change it. Rows are JSON-shaped (dicts, lists, strings,
    numbers), which this copies about 4x faster than `copy.deepcopy` (no memo, no reduce protocol): two rows per
    INVITE (number and agent) were 1.6 % of a worker's CPU at 300 calls/s. Anything else goes to deepcopy."""
    kind = type(value)
    if kind is dict:
        return {k: _clone(v) for k, v in value.items()}
    if kind is list:
        return [_clone(v) for v in value]
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def _quiet(fut: asyncio.Future[Any]) -> None:
    """A background cache refresh that failed: the entry stays (stale, within its grace) and the next caller
    past the grace reads again; logged, never raised into the loop's exception handler."""
    if not fut.cancelled() and fut.exception() is not None:
        _log.warning("cache refresh failed: %s", type(fut.exception()).__name__)


class Store(ChannelStore, QueueStore, HealthStore):
    """Agents and numbers are written synchronously (the API waits for them). Call-log updates and call events
    from live calls go through one write-behind queue, committed in batches by a single writer task: a live call
    never waits on the database, and SQLite (one writer at a time) is never asked for concurrent writes, which
    under load meant "database is locked" errors and pool exhaustion (measured: 500 simultaneous calls).
    Reads of the call log flush the queue first, so the API always reads its own writes.

    New call-log rows have a lane of their own (`_insert_loop`): call set-up waits for its row's id (the row is
    committed before the call is answered, so a crash never leaves an answered call without a row, and the
    dispatch queue's "a row exists, so the call was placed" holds), and behind the write-behind batches that wait
    grew with the load (one worker at 400 CPS on the shared box: 30–90 ms p50 with the single writer busy all the
    time with updates and events; 8–20 ms with the lanes). The lanes need no ordering between them: an update or
    event names a row's id, which exists only once its insert is committed."""

    BATCH = 500
    #: how long the write-behind lane lets a batch fill after its first item (a flush cuts it short). Each batch
    #: costs a transaction and a statement per kind of write whatever its size: one worker at 400 CPS wrote ~60
    #: batches a second of ~7 items per call; waiting one media tick makes them fewer and fuller
    WINDOW = 0.02
    #: the insert lane starts at most one INSERT per this many seconds: rows that arrive meanwhile wait for it and
    #: share it. A row arriving after a quiet spell goes at once; under load, set-up waits at most this long. Without
    #: it, a worker that is not saturated ran one INSERT (a transaction, ~0.6 ms of the worker's CPU through
    #: SQLAlchemy and asyncpg) per call: two workers at 200 calls/s each ran 0.9 commits per call against one worker
    #: at 400 calls/s 0.35, the largest part of why two workers cost more CPU per call than one (BENCHMARKS.md,
    #: "Why two workers cost more CPU per call than one")
    INSERT_PACE = 0.01
    #: seconds the write-behind lane keeps retrying while the database is away, counted from the first failure of
    #: the outage (`--store-retry-seconds`; docs/operations.md "When the database blips" says why 120)
    RETRY_SECONDS = 120.0
    #: seconds the insert lane retries a transient failure: an INVITE (or an API request) is waiting for the row,
    #: and a carrier retries a refused call sooner than a caller waits on silence
    INSERT_RETRY_SECONDS = 0.4

    def __init__(self, db: str, box: SecretBox | None = None) -> None:
        self.url = database_url(db)
        #: encrypts `phone_numbers.secrets`. A store opened without one (a tool or test reading the call log)
        #: leaves stored secrets alone and refuses to read or write any.
        self.box = box
        self.engine: AsyncEngine | None = None
        self._maker: async_sessionmaker[AsyncSession] | None = None
        self._queue: _Lane[tuple[str, int, Any]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._new_rows: _Lane[tuple[dict[str, Any], asyncio.Future[int]]] | None = None
        self._inserter: asyncio.Task[None] | None = None
        self._naps: set[asyncio.Future[None]] = set()   # the lanes' waits for their batches to fill
        self._hurry = 0                                  # flushes waiting: the lanes do not wait then
        self.write_errors = 0
        self.retry_seconds = self.RETRY_SECONDS
        #: attempts repeated after a transient failure, per lane ("write": updates, events, outbox; "insert": rows)
        self.write_retries = {"write": 0, "insert": 0}
        #: write-behind items given up: "transient" (the database stayed away past `retry_seconds`) or "permanent"
        #: (the item itself was refused: a data or constraint error)
        self.writes_dropped = {"transient": 0, "permanent": 0}
        self._failing_since: float | None = None   # loop time the write lane's current outage began
        self._in_flight = 0                        # items of the batch the write lane is writing
        # SQLite has one writer at a time and answers a second one "database is locked" (no busy wait when a
        # read snapshot would have to upgrade), so writes queue here; PostgreSQL needs no such lock.
        self._sqlite_write_lock = asyncio.Lock() if self.url.startswith("sqlite") else None
        # Numbers and agents are read on every call set-up and change only through the API: a short read-through
        # cache keeps the database off the INVITE path (`_cached`). Local writes invalidate at once; the TTL bounds
        # staleness when several gateway processes share one PostgreSQL database.
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._loading: dict[tuple[Any, ...], asyncio.Future[Any]] = {}   # one read in flight per key
        self._cache_epoch = 0     # bumped by every invalidation: a read begun before it is not cached
        self.cache_loads = 0      # reads the cache sent to the database (bench/setup_lookups.py)
        self._updates: dict[tuple[str, ...], Any] = {}
        #: awaited after a committed write to agents or numbers, with its kind (the cluster's cache sync)
        self.on_change: Callable[[str], Awaitable[None]] | None = None
        #: called with the kind ("agent", "number", "registration") whenever this process or, announced over the
        #: cache sync, another one changed such rows: what acts on stored rows (the SIP carrier's registrations)
        #: looks again. Synchronous and cheap: a watcher only wakes its own task.
        self.watchers: list[Callable[[str], None]] = []

    CACHE_TTL = 5.0
    #: how long past its TTL an entry is still served while one background read refreshes it
    CACHE_GRACE = 25.0

    @property
    def _session(self) -> async_sessionmaker[AsyncSession]:
        if self._maker is None:
            raise RuntimeError("the store is not open")
        return self._maker

    @property
    def degraded(self) -> bool:
        """Is the write-behind lane holding writes for a database that is away (retrying)? /healthz says so. Not
        once what it held was written or given up (a quiet process after an outage past the bound holds nothing:
        the drops are in the log and gateway_store_writes_dropped_total)."""
        return self._failing_since is not None and self.writes_pending > 0

    @property
    def writes_pending(self) -> int:
        """Write-behind items not yet committed: queued, or in the batch being written (or retried)."""
        return self._in_flight + (self._queue.qsize() if self._queue is not None else 0)

    @property
    def _writes(self) -> asyncio.Queue[tuple[str, int, Any]]:
        """The write-behind queue of the batch writer."""
        if self._queue is None:
            raise RuntimeError("the store is not open")
        return self._queue

    async def _cached(self, key: tuple[Any, ...], load: Callable[[], Awaitable[_T]]) -> _T:
        """`load()`'s value for `key`, read through the cache. Call set-up must not queue on the connection pool
        for rows that hardly ever change: a CPS run on a starved box had 111 INVITEs time out (30 s) waiting for a
        pool connection for their number, because every INVITE in flight when an entry was missing or had just
        expired read the same row itself (a cold start at 400 CPS: hundreds of identical reads at once, 15
        connections). So concurrent misses share one read (single flight), and an entry past its TTL is still
        served, for `CACHE_GRACE` seconds, while one background read refreshes it: a warm number costs set-up no
        database round trip at all, and at most one read per key and TTL reaches the database."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            age = now - hit[0]
            if age < self.CACHE_TTL + self.CACHE_GRACE:
                if age >= self.CACHE_TTL and key not in self._loading:
                    self._load_once(key, load).add_done_callback(_quiet)   # refresh in the background
                cached: _T = _clone(hit[1])
                return cached
        value: _T = await asyncio.shield(self._load_once(key, load))
        cloned: _T = _clone(value)
        return cloned

    def _load_once(self, key: tuple[Any, ...], load: Callable[[], Awaitable[_T]]) -> asyncio.Future[_T]:
        """The read of `key` in flight, or a new one; its value is cached unless an invalidation came meanwhile
        (it may then predate the write)."""
        pending = self._loading.get(key)
        if pending is not None:
            return pending

        async def read() -> _T:
            epoch = self._cache_epoch
            try:
                self.cache_loads += 1
                value = await load()
            finally:
                if self._loading.get(key) is fut:
                    del self._loading[key]
            if epoch == self._cache_epoch:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[key] = (time.monotonic(), value)
            return value
        fut = asyncio.ensure_future(read())
        self._loading[key] = fut
        return fut

    def _invalidate(self, kind: str) -> None:
        self._cache_epoch += 1
        kinds = ("agent", "number") if kind == "agent" else (kind,)   # an agent write may change its numbers too
        for entries in (self._cache, self._loading):    # a read begun before the write: later callers start anew
            for key in [k for k in entries if k[0] in kinds]:
                del entries[key]
        self._wake_watchers(kind)

    def _wake_watchers(self, kind: str) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(kind)
            except Exception:
                _log.exception("store watcher failed")

    @contextlib.asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        """Wait for SQLite's single writer slot (no-op on PostgreSQL)."""
        if self._sqlite_write_lock is None:
            yield
        else:
            async with self._sqlite_write_lock:
                yield

    @contextlib.asynccontextmanager
    async def _writing_core(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in one write transaction: the batch writer needs no ORM session machinery."""
        if self.engine is None:
            raise RuntimeError("the store is not open")
        async with self._write_turn(), self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _autocommit_core(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection whose every statement commits by itself: one statement, one round trip (no BEGIN and
        COMMIT around it)."""
        if self.engine is None:
            raise RuntimeError("the store is not open")
        async with self._write_turn(), self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.asynccontextmanager
    async def _changing(self, kind: str) -> AsyncIterator[AsyncSession]:
        """One write transaction to agents or numbers (`kind`): cached copies are dropped before it and again
        after its commit (a read begun meanwhile may hold the old row), then `on_change` tells the other processes
        of the cluster (gateway/cluster/cachesync.py)."""
        self._invalidate(kind)
        try:
            async with self._writing() as s:
                yield s
        finally:
            self._invalidate(kind)
        if self.on_change is not None:
            await self.on_change(kind)

    @property
    def cache_epoch(self) -> int:
        """Moves with every invalidation of the cache (a write here, or one another process announced): what
        carriers derive from numbers is read again after it moved (gateway/store/derived.py)."""
        return self._cache_epoch

    def forget_cached(self, kind: str) -> None:
        """Another process of the cluster changed `kind` rows: drop the cached ones ("agent", "number"), and wake
        the watchers. "registration" (who REGISTERs a trunk) is cached nowhere: it only wakes them."""
        if kind == "registration":
            self._wake_watchers(kind)
        else:
            self._invalidate(kind)

    async def announce(self, kind: str) -> None:
        """Tell the other processes of the cluster that `kind` rows changed without a write through `_changing`
        (a trunk's registration handed over): awaited like a write's notification; nothing to do alone."""
        if self.on_change is not None:
            await self.on_change(kind)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """One ORM write transaction (serialised on SQLite)."""
        async with self._write_turn(), self._session.begin() as s:
            yield s

    async def open(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[-1]
            if path and path != ":memory:":
                _private_sqlite_file(path)
        self.engine = create_async_engine(self.url)
        if self.url.startswith("sqlite"):
            @event.listens_for(self.engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # foreign keys + concurrent readers
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: no corruption risk, far fewer fsyncs
                cur.close()
        async with self.engine.begin() as conn:
            await _schema_turn(conn)
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(_add_missing_columns)
        async with self.engine.connect() as conn:  # its own connection: it manages its transaction itself
            await conn.run_sync(never_reuse_ids)
        await self._seal_secrets()
        self._maker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._queue = _Lane()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._new_rows = _Lane()
        self._inserter = asyncio.create_task(self._insert_loop(self._new_rows), name="store-inserter")

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            self._writer = None
        if self._inserter is not None:
            self._inserter.cancel()
            self._inserter = None
        loading, self._loading = list(self._loading.values()), {}
        for fut in loading:                 # cache reads in flight (a background refresh): not after the engine
            fut.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    # agents ---------------------------------------------------------------------------------------------------
    async def create_agent(self, data: dict[str, Any]) -> dict[str, Any]:
        async with self._changing("agent") as s:
            a = Agent(**data)
            s.add(a)
            await s.flush()
            return _row(a)

    async def get_agent(self, agent_id: int) -> dict[str, Any] | None:
        async def load() -> dict[str, Any] | None:
            async with self._session() as s:
                a = await s.get(Agent, agent_id)
                return _row(a) if a else None
        return await self._cached(("agent", agent_id), load)

    async def list_agents(self) -> list[dict[str, Any]]:
        async with self._session() as s:
            return [_row(a) for a in (await s.scalars(select(Agent).order_by(Agent.id))).all()]

    async def update_agent(self, agent_id: int, data: dict[str, Any]) -> dict[str, Any]:
        async with self._changing("agent") as s:
            a = await s.get(Agent, agent_id)
            if a is None:
                raise NotFoundError(f"agent {agent_id} not found")
            for k, v in data.items():
                setattr(a, k, v)
            await s.flush()
            return _row(a)

    async def delete_agent(self, agent_id: int) -> None:
        async with self._changing("agent") as s:
            a = await s.get(Agent, agent_id)
            if a is None:
                raise NotFoundError(f"agent {agent_id} not found")
            await s.delete(a)

    # phone numbers / trunks -----------------------------------------------------------------------------------
    def _number_row(self, n: PhoneNumber, with_secrets: bool) -> dict[str, Any]:
        if not with_secrets:
            return _row(n, exclude=("secrets",))
        row = _row(n)
        row["secrets"] = self._box().open(row["secrets"])
        return row

    def _seal(self, secrets: dict[str, Any] | None) -> dict[str, Any]:
        """Secrets as stored; a keyless store may only write none (sealed by the next start with the key)."""
        return {} if not secrets and self.box is None else self._box().seal(secrets)

    def _box(self) -> SecretBox:
        if self.box is None:
            raise SecretKeyError("this store was opened without the secret key: secrets cannot be read or written")
        return self.box

    async def _seal_secrets(self) -> None:
        """Encrypt rows an older release stored in plaintext and re-encrypt rows sealed with an older key, so the
        database only ever holds secrets under the newest key. Raises SecretKeyError when a row cannot be
        decrypted with any configured key (the gateway then refuses to start instead of losing credentials)."""
        if self.box is None:
            return
        changed = 0
        async with self._writing_core() as conn:
            for id_, stored in (await conn.execute(select(PhoneNumber.id, PhoneNumber.secrets))).all():
                if self.box.current(stored):
                    continue
                await conn.execute(update(PhoneNumber).where(PhoneNumber.id == id_)
                                   .values(secrets=self.box.reseal(stored)))
                changed += 1
        if changed:
            _log.warning("stored secrets encrypted with the current key", extra={"rows": changed})

    async def create_number(self, data: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._changing("number") as s:
                if data.get("sip_trunk_name"):
                    dup = await s.scalar(select(PhoneNumber.id).where(
                        PhoneNumber.sip_trunk_name == data["sip_trunk_name"]))
                    if dup is not None:
                        raise DuplicateError(f"sip_trunk_name {data['sip_trunk_name']!r} is already used")
                n = PhoneNumber(**data, secrets=self._seal(secrets))
                s.add(n)
                await s.flush()
                return _row(n, exclude=("secrets",))
        except IntegrityError as e:
            raise DuplicateError("a phone number with these unique fields already exists") from e

    async def get_number(self, number_id: int, with_secrets: bool = False,
                         fresh: bool = False) -> dict[str, Any] | None:
        """The number's row, through the cache; `fresh` reads the database (the API shows the current `status`,
        which other processes change without a notification: `patch_number_status`)."""
        async def load() -> dict[str, Any] | None:
            async with self._session() as s:
                n = await s.get(PhoneNumber, number_id)
                return self._number_row(n, with_secrets) if n else None
        if fresh:
            return await load()
        return await self._cached(("number", "id", number_id, with_secrets), load)

    async def find_number(self, e164: str, provider: str | None = None,
                          with_secrets: bool = False) -> dict[str, Any] | None:
        async def load() -> dict[str, Any] | None:
            # built on a cache miss only: building it (SQLAlchemy's operator overloading) on every INVITE was 4 %
            # of a worker's CPU at 200 CPS (py-spy), the cache hit it serves ~1 %
            q = select(PhoneNumber).where(PhoneNumber.phone_number == e164)
            if provider:
                q = q.where(PhoneNumber.provider == provider)
            async with self._session() as s:
                n = (await s.scalars(q.order_by(PhoneNumber.id).limit(1))).first()
                return self._number_row(n, with_secrets) if n else None
        return await self._cached(("number", "e164", e164, provider, with_secrets), load)

    async def list_numbers(self, pageno: int = 1, pagesize: int = 20, provider: str | None = None,
                           with_secrets: bool = False) -> tuple[list[dict[str, Any]], int]:
        q = select(PhoneNumber)
        cq = select(func.count(PhoneNumber.id))
        if provider:
            q, cq = q.where(PhoneNumber.provider == provider), cq.where(PhoneNumber.provider == provider)
        async with self._session() as s:
            total = await s.scalar(cq)
            rows = (await s.scalars(q.order_by(PhoneNumber.id).offset((pageno - 1) * pagesize).limit(pagesize))).all()
            return [self._number_row(n, with_secrets) for n in rows], int(total or 0)

    async def numbers_of_agent(self, agent_id: int) -> list[dict[str, Any]]:
        """The numbers attached to an agent, oldest first (without secrets)."""
        async with self._session() as s:
            rows = (await s.scalars(select(PhoneNumber).where(PhoneNumber.agent_id == agent_id)
                                    .order_by(PhoneNumber.id))).all()
            return [_row(n, exclude=("secrets",)) for n in rows]

    async def update_number(self, number_id: int, **fields: Any) -> dict[str, Any]:
        async with self._changing("number") as s:
            n = await s.get(PhoneNumber, number_id)
            if n is None:
                raise NotFoundError(f"phone number {number_id} not found")
            for k, v in fields.items():
                setattr(n, k, self._seal(v) if k == "secrets" else v)
            await s.flush()
            return _row(n, exclude=("secrets",))

    async def patch_number_status(self, number_id: int, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge `patch` into a number's `status` (what its registrations look like: shown by the API, read by no
        call) and return the new status; None when the number is gone. Not a change other processes must hear
        of: a REGISTER refresh every expiry/2 of every trunk used to announce `store:changed` (twice: registering,
        registered), and every process of the cluster dropped all its cached numbers and agents each time. So no
        notification and no cache epoch move; this process's cached copies take the new status in place. The
        merge happens in the row (read under a row lock, then written), so writers of different keys — the outbound
        registration of one process, a trunk's own REGISTER to another — do not undo each other's."""
        async with self._writing() as s:
            n = await s.get(PhoneNumber, number_id, with_for_update=True)
            if n is None:
                return None
            status = {**(n.status or {}), **patch}
            n.status = status
        for key, (_, value) in self._cache.items():
            if key[0] == "number" and isinstance(value, dict) and value.get("id") == number_id:
                value["status"] = copy.deepcopy(status)
        return status

    async def delete_number(self, number_id: int) -> dict[str, Any]:
        async with self._changing("number") as s:
            n = await s.get(PhoneNumber, number_id)
            if n is None:
                raise NotFoundError(f"phone number {number_id} not found")
            row = _row(n, exclude=("secrets",))
            await s.delete(n)
            return row

    # call log -------------------------------------------------------------------------------------------------
    async def create_call(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Insert a call-log row through the insert lane (one INSERT … RETURNING for a whole burst of calls)."""
        if self._new_rows is None:
            raise RuntimeError("the store is not open")
        row = self._call_row(fields)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._new_rows.put_nowait((row, fut))
        row["id"] = await fut
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}

    @staticmethod
    def _call_row(fields: dict[str, Any]) -> dict[str, Any]:
        """A new call-log row: every column set (the batch INSERT needs them all)."""
        return {**_CALL_DEFAULTS, "created_at": utcnow(), **fields}

    async def update_call(self, call_id: int, **fields: Any) -> None:
        """Queue a call-log update (merged with others of the same batch); `extra` is merged key by key."""
        self._writes.put_nowait(("update", call_id, fields))

    async def add_call_event(self, call_id: int, kind: str, data: dict[str, Any] | None = None) -> None:
        # stamped now, not when written: a batch retried through a database restart keeps its events' times
        self._writes.put_nowait(("event", call_id, (kind, data or {}, utcnow())))

    # webhook outbox (gateway/webhooks.py) -----------------------------------------------------------------------
    def outbox_add(self, row: dict[str, Any]) -> None:
        """Persist a queued webhook (write-behind: the caller, maybe a media path, never waits)."""
        self._writes.put_nowait(("outbox_add", 0, {**row, "created_at": utcnow()}))

    def outbox_remove(self, delivery_id: str) -> None:
        """Forget a webhook that was delivered, given up or dropped (write-behind)."""
        self._writes.put_nowait(("outbox_del", 0, delivery_id))

    async def outbox_load(self, owner: str) -> list[dict[str, Any]]:
        """The outbox of process `owner`, oldest first."""
        await self.flush()
        async with self._session() as s:
            rows = (await s.scalars(select(WebhookOutbox).where(WebhookOutbox.owner == owner)
                                    .order_by(WebhookOutbox.id))).all()
            return [_row(r) for r in rows]

    async def flush(self) -> None:
        """Wait until every call-log write queued so far is committed (not those queued meanwhile)."""
        self._hurry += 1
        try:
            for nap in self._naps:
                _wake(nap)
            if self._new_rows is not None and self._inserter is not None:
                await self._new_rows.settled()
            if self._queue is not None and self._writer is not None:
                await self._queue.settled()
        finally:
            self._hurry -= 1

    async def _fill(self, delay: float) -> None:
        """Let a lane's batch fill for `delay` seconds; a flush (or one waiting already) cuts it short."""
        if delay <= 0 or self._hurry:
            return
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[None] = loop.create_future()
        self._naps.add(nap)
        timer = loop.call_later(delay, _wake, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._naps.discard(nap)

    async def _insert_loop(self, q: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[int]]]) -> None:
        """New call-log rows, every one queued meanwhile in one INSERT … RETURNING, at most one INSERT per
        `INSERT_PACE`; each waiter gets its id or the error (a failed batch fails its calls' set-up: no call runs
        without its row)."""
        loop = asyncio.get_running_loop()
        began = -self.INSERT_PACE
        while True:
            batch = [await q.get()]
            if q.qsize() < self.BATCH:
                await self._fill(began + self.INSERT_PACE - loop.time())
            began = loop.time()
            while len(batch) < self.BATCH and not q.empty():
                batch.append(q.get_nowait())
            end = began + self.INSERT_RETRY_SECONDS
            try:
                for piece, e in await self._settle(batch, self._insert_rows, functools.partial(float, end), "insert"):
                    self._insert_failed(piece, e)
            except Exception as e:      # a fault of the lane itself, not of the database: fail its calls, go on
                _log.exception("call-log insert lane failed")
                self._insert_failed(batch, e)
            finally:
                for _ in batch:
                    q.task_done()

    async def _insert_rows(self, piece: list[tuple[dict[str, Any], asyncio.Future[int]]]) -> None:
        """Insert `piece`'s rows and hand each waiter its id."""
        # one statement, atomic by itself: committed without a transaction around it (BEGIN and COMMIT were two
        # of the lane's three round trips)
        async with self._autocommit_core() as conn:
            result = await conn.execute(insert(CallLog).returning(CallLog.id, CallLog.call_uuid),
                                        [row for row, _ in piece])
            ids = {uuid: id_ for id_, uuid in result.all()}
        for row, fut in piece:
            if not fut.done():
                fut.set_result(ids[row["call_uuid"]])

    def _insert_failed(self, piece: list[tuple[dict[str, Any], asyncio.Future[int]]], error: Exception) -> None:
        """Fail the set-up of `piece`'s calls: a database still away after the lane's short retries is a
        StoreUnavailableError (the carriers refuse the call as unavailable, SIP 503), a bad row its own error."""
        self.write_errors += 1
        why = reason(error)
        _log.error("call-log insert failed", extra={"rows": len(piece), "reason": why,
                                                    "call_uuids": [row.get("call_uuid") for row, _ in piece][:50]})
        failure: Exception = (StoreUnavailableError(f"the call log is unavailable ({why})") if is_transient(error)
                              else error)
        for _, fut in piece:
            if not fut.done():
                fut.set_exception(failure)

    async def _settle(self, batch: list[_I], write: Callable[[list[_I]], Awaitable[None]],
                      deadline: Callable[[], float], lane: str) -> list[tuple[list[_I], Exception]]:
        """Write `batch` with `write`, in order, and return what was given up (each piece with its error).

        A piece refused for good (durable.py: a data or constraint error, or one nobody knows to be passing) is
        halved until its bad items stand alone, so one poison item costs only itself: a batch of n with one bad
        item takes about 2·log2(n) more attempts. A piece that failed transiently is tried again, whole, after a
        backoff, and nothing behind it goes first (an update must not overtake its row's earlier one) until the
        loop time `deadline()` (asked after each failure), when it is given up."""
        loop = asyncio.get_running_loop()
        given_up: list[tuple[list[_I], Exception]] = []
        pieces = [batch]        # a stack: the next piece to write is the last one
        attempt = 0
        while pieces:
            piece = pieces.pop()
            try:
                await write(piece)
                attempt = 0
            except Exception as e:
                if is_transient(e):
                    left = deadline() - loop.time()
                    if left <= 0:
                        given_up.append((piece, e))
                        continue
                    attempt += 1
                    self.write_retries[lane] += 1
                    pieces.append(piece)
                    await asyncio.sleep(min(left, backoff(attempt)))
                elif len(piece) == 1:
                    given_up.append((piece, e))
                else:
                    half = len(piece) // 2
                    pieces += [piece[half:], piece[:half]]
        return given_up

    async def _write_loop(self) -> None:
        """The write-behind lane: batches written in order; a database that is away holds them (retried, `flush()`
        and drain wait) for up to `retry_seconds` from the outage's first failure, past which each batch gets one
        attempt and is dropped if it fails (counted and logged with its call ids), so a long outage does not grow
        the queue without end."""
        q = self._writes
        while True:
            batch = [await q.get()]
            if q.qsize() < self.BATCH:
                await self._fill(self.WINDOW)
            while len(batch) < self.BATCH and not q.empty():
                batch.append(q.get_nowait())
            self._in_flight = len(batch)
            try:
                for piece, e in await self._settle(batch, self._write_piece, self._outage_deadline, "write"):
                    self._writes_dropped(piece, e)
            except Exception as e:      # a fault of the lane itself, not of the database: count it, go on
                _log.exception("call-log write lane failed")
                self._writes_dropped(batch, e)
            finally:
                self._in_flight = 0
                for _ in batch:
                    q.task_done()

    async def _write_piece(self, piece: list[tuple[str, int, Any]]) -> None:
        await self._write_batch(piece)
        self._failing_since = None      # the database answers: any outage is over

    def _outage_deadline(self) -> float:
        """When the write lane stops retrying: `retry_seconds` after the outage's first failure."""
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
            _log.warning("call-log writes held: the database is away; retrying",
                         extra={"retry_seconds": self.retry_seconds})
        return self._failing_since + self.retry_seconds

    def _writes_dropped(self, piece: list[tuple[str, int, Any]], error: Exception) -> None:
        why = "transient" if is_transient(error) else "permanent"
        self.writes_dropped[why] += len(piece)
        self.write_errors += 1
        _log.error("call-log writes dropped", extra={
            "items": len(piece), "failure": why, "reason": reason(error),
            "call_ids": sorted({call_id for kind, call_id, _ in piece if kind in ("update", "event")})[:100],
            "writes": [_write_ref(item) for item in piece[:20]]})

    async def _write_batch(self, batch: list[tuple[str, int, Any]]) -> None:
        updates: dict[int, dict[str, Any]] = {}
        events: list[dict[str, Any]] = []
        outbox_add: list[dict[str, Any]] = []
        outbox_del: set[str] = set()
        placed: list[dict[str, Any]] = []
        for kind, call_id, payload in batch:
            if kind == "queue_done":
                placed.append({"_id": call_id, **payload})
            elif kind == "outbox_add":
                outbox_add.append(payload)
            elif kind == "outbox_del":
                outbox_del.add(payload)
            elif kind == "update":
                cur = updates.setdefault(call_id, {})
                for k, v in payload.items():
                    cur[k] = {**cur.get("extra", {}), **v} if k == "extra" else v
            else:
                events.append({"call_id": call_id, "kind": payload[0], "data": payload[1], "at": payload[2]})
        # a webhook queued and delivered within one batch never needs its row
        added = {r["delivery_id"] for r in outbox_add}
        outbox_add = [r for r in outbox_add if r["delivery_id"] not in outbox_del]
        outbox_del -= added
        if not updates and not events and not outbox_add and not outbox_del and not placed:
            return
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        async with self._writing_core() as conn:
            with_extra = [cid for cid, f in updates.items() if "extra" in f]
            if with_extra:  # merge `extra` key by key with what is stored: one read for the whole batch
                stored: dict[int, Any] = dict((await conn.execute(_SELECT_EXTRA, {"ids": with_extra})).all())
                for cid in with_extra:
                    updates[cid]["extra"] = {**(stored.get(cid) or {}), **updates[cid]["extra"]}
            for call_id, fields in updates.items():
                groups.setdefault(tuple(sorted(fields)), []).append({"_id": call_id, **fields})
            for keys, rows in groups.items():  # one compiled statement per column set, executemany
                await conn.execute(self._update_statement(keys), rows)
            if events and conn.dialect.name == "postgresql":
                await conn.execute(_INSERT_EVENTS_PG, {
                    "call_ids": [e["call_id"] for e in events], "ats": [e["at"] for e in events],
                    "kinds": [e["kind"] for e in events], "datas": [json.dumps(e["data"]) for e in events]})
            elif events:
                await conn.execute(insert(CallEvent), events)
            if outbox_add:
                await conn.execute(insert(WebhookOutbox), outbox_add)
            if outbox_del:
                await conn.execute(_DELETE_OUTBOX, {"ids": list(outbox_del)})
            if placed:
                await conn.execute(FINISH_ITEM, placed)

    def _update_statement(self, keys: tuple[str, ...]) -> Any:
        """The call-log UPDATE for one set of columns, built once (see _SELECT_EXTRA)."""
        stmt = self._updates.get(keys)
        if stmt is None:
            if len(self._updates) >= 256:  # column sets are few; never let odd ones grow this for ever
                self._updates.clear()
            stmt = self._updates[keys] = update(CallLog).where(CallLog.id == bindparam("_id")).values(
                {k: bindparam(k) for k in keys})
        return stmt

    async def get_call(self, call_id: int) -> dict[str, Any] | None:
        await self.flush()
        async with self._session() as s:
            c = await s.get(CallLog, call_id)
            return _row(c) if c else None

    async def find_call(self, *, call_uuid: str | None = None, carrier_sid: str | None = None,
                        flush: bool = True) -> dict[str, Any] | None:
        """The newest call-log row with this call id or carrier sid. `flush=False` skips waiting for this process's
        queued writes (a row another process wrote, read on a media path: adoption). An id no row can have (a NUL
        character, from a URL or a carrier's message) finds nothing: PostgreSQL refuses such a string outright, which
        made `GET /api/v1/calls/logs/%00` a 500 in cluster mode."""
        if "\x00" in (call_uuid or "") + (carrier_sid or ""):
            return None
        if flush:
            await self.flush()
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

    async def find_open_call_by_extra(self, channel_type: str, key: str, value: str,
                                      owners: list[str]) -> dict[str, Any] | None:
        """The newest open call of `channel_type` held by one of `owners` whose `extra[key]` is `value`: a call known
        by an id of the carrier that is not its own (an attended transfer's consultation call), found by another
        process of the cluster. Only open calls of live owners are read (the owner/ended_at index)."""
        if not owners or not value or "\x00" in value:
            return None
        q = (select(CallLog).where(CallLog.owner.in_(owners), CallLog.ended_at.is_(None),
                                   CallLog.channel_type == channel_type, CallLog.extra[key].as_string() == value)
             .order_by(CallLog.id.desc()).limit(1))
        async with self._session() as s:
            c = (await s.scalars(q)).first()
            return _row(c) if c else None

    async def list_calls(self, pageno: int = 1, pagesize: int = 20, agent_id: int | None = None,
                         call_status: str | None = None, carrier_sid: str | None = None,
                         bulk_call_id: int | None = None, carrier: str | None = None,
                         since: datetime | None = None, until: datetime | None = None
                         ) -> tuple[list[dict[str, Any]], int]:
        """Newest first. `carrier` is the call's channel_type; `since` (inclusive) and `until` (exclusive) bound
        created_at (SQLite compares the stored text, so both are turned into UTC first, as every time is stored)."""
        await self.flush()
        since, until = _utc(since), _utc(until)
        q = select(CallLog)
        cq = select(func.count(CallLog.id))
        for cond in ((CallLog.channel_type == carrier) if carrier else None,
                     (CallLog.created_at >= since) if since is not None else None,
                     (CallLog.created_at < until) if until is not None else None):
            if cond is not None:
                q, cq = q.where(cond), cq.where(cond)
        if bulk_call_id is not None:   # a bulk call's calls; or dispatched with call_context.bulk_call_id = N
            tag = or_(CallLog.bulk_call_id == bulk_call_id,
                      CallLog.call_context["bulk_call_id"].as_string() == str(bulk_call_id))
            q, cq = q.where(tag), cq.where(tag)
        if carrier_sid is not None:
            q, cq = q.where(CallLog.carrier_sid == carrier_sid), cq.where(CallLog.carrier_sid == carrier_sid)
        if agent_id is not None:
            q, cq = q.where(CallLog.agent_id == agent_id), cq.where(CallLog.agent_id == agent_id)
        if call_status:
            q, cq = q.where(CallLog.call_status == call_status), cq.where(CallLog.call_status == call_status)
        async with self._session() as s:
            total = await s.scalar(cq)
            page = q.order_by(CallLog.id.desc()).offset((pageno - 1) * pagesize).limit(pagesize)
            rows = (await s.scalars(page)).all()
            return [_row(c) for c in rows], int(total or 0)

    async def recordings_in(self, statuses: tuple[str, ...], *, ended: bool = True,
                            created_before: datetime | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Call-log rows whose recording is in one of `statuses` (of ended calls only, unless `ended` is False;
        created before `created_before` when given), oldest first: what the recording sweep works on."""
        await self.flush()
        q = select(CallLog).where(CallLog.recording_status.in_(statuses))
        if ended:
            q = q.where(CallLog.ended_at.is_not(None))
        if created_before is not None:
            q = q.where(CallLog.created_at < created_before)
        async with self._session() as s:
            rows = (await s.scalars(q.order_by(CallLog.id).limit(limit))).all()
            return [_row(c) for c in rows]

    async def list_call_events(self, call_id: int) -> list[dict[str, Any]]:
        await self.flush()
        async with self._session() as s:
            rows = (await s.scalars(select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id))).all()
            return [_row(e) for e in rows]
