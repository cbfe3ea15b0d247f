"""The call log never loses a write when the database blips (issue #12): a PostgreSQL restart, killed backends or a
refused connection hold the write-behind lane's batches, retried whole and in order until the database is back; a
bad item loses only itself; the insert lane retries briefly, then refuses the call (503); /healthz and /metrics say
`degraded` meanwhile, and API reads of the call log answer 503 at once instead of waiting for the held writes; a
database that answers nothing at all (a black hole: tests/blackhole.py) costs call set-up and each statement or
connect only their bounds. Against a real throwaway PostgreSQL server each test stops and starts
(tests/pg_cluster.py), the shared test server (killing backends with pg_terminate_backend), and SQLite where the
behaviour applies."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine

from blackhole import BlackHoleRelay
from cluster_env import create_database, db_url, drop_database, require_pg  # noqa: F401 (db_url: a fixture)
from conftest import API_KEY
from gateway.callmanager import CallLogUnavailableError
from gateway.frames import HangupSource
from gateway.secretbox import SecretBox
from gateway.store import Store, StoreUnavailableError
from gateway.store.connect import CLOSE_SECONDS, DbTimeouts, bounded_close_class, engine_options
from gateway.store.durable import BACKOFF_CAP, BACKOFF_FIRST, backoff, is_transient, reason, sqlstate
from gateway.store.store import database_url
from pg_cluster import ThrowawayCluster
from sipp import metrics_text, wait_for


# -- the classifier ---------------------------------------------------------------------------------------------
class _ServerError(Exception):
    """What a driver raises for an error the server answered, with its SQLSTATE (asyncpg: `sqlstate`)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"server said {code}")
        self.sqlstate = code


def _wrapped(code: str) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("UPDATE calls SET call_status=$1", {"call_status": "secret-ish"}, _ServerError(code))


@pytest.mark.parametrize("code", ["08000", "08003", "08006", "40001", "40P01", "53300", "53100", "57P01", "57P02",
                                  "57P03"])
def test_connection_rollback_resource_and_shutdown_sqlstates_are_transient(code: str) -> None:
    assert sqlstate(_wrapped(code)) == code
    assert is_transient(_wrapped(code))


@pytest.mark.parametrize("code", ["22001", "22P02", "23503", "23505", "42P01", "57014"])
def test_data_integrity_and_other_sqlstates_are_permanent(code: str) -> None:
    assert not is_transient(_wrapped(code))


def test_errors_without_a_sqlstate_are_classed_by_kind() -> None:
    assert is_transient(sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert is_transient(ConnectionRefusedError(111, "Connect call failed"))
    assert is_transient(TimeoutError())
    dropped = sa_exc.DBAPIError("SELECT 1", None, Exception("closed"), connection_invalidated=True)
    assert is_transient(dropped)
    try:                                 # the refusal as a cause of another error (a wrapper raised `from` it)
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as e:
            raise RuntimeError("write failed") from e
    except RuntimeError as e:
        assert is_transient(e)
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5          # SQLITE_BUSY, as sqlite3 sets it
    assert is_transient(sa_exc.OperationalError("UPDATE", {}, locked))
    assert not is_transient(sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not is_transient(sa_exc.DBAPIError("SELECT 1", None, Exception("closed")))
    assert not is_transient(ValueError("a bug, not the database"))


def test_reason_names_the_error_without_the_statement_parameters() -> None:
    why = reason(_wrapped("22001"))
    assert why == "_ServerError [22001]: server said 22001"
    assert "secret-ish" not in why and "UPDATE" not in why


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    for attempt in range(1, 30):
        full = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1))
        assert full / 2 <= backoff(attempt) <= full
    assert backoff(30) > BACKOFF_CAP / 4


# -- against a real PostgreSQL server that goes away --------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    server = ThrowawayCluster()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest_asyncio.fixture
async def pg_store(cluster: ThrowawayCluster) -> AsyncIterator[Store]:
    if not cluster.running:                 # a test that failed while the server was stopped
        await asyncio.to_thread(cluster.start)
    conn = await asyncpg.connect(cluster.url)
    try:   # a clean database per test
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    store = Store(cluster.url, SecretBox.generate())
    await store.open()
    yield store
    if not cluster.running:
        await asyncio.to_thread(cluster.start)
    await store.close()


def call_fields(uuid: str) -> dict[str, Any]:
    return {"call_uuid": uuid, "channel_type": "sip", "call_direction": "inbound", "from_number": "+15550000001",
            "to_number": "+15550000002", "call_status": "ringing"}


def outbox_row(delivery_id: str, call_uuid: str) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "owner": "gw-test", "call_id": call_uuid, "event": "call.updated",
            "url": "http://127.0.0.1:9/hook", "agent_id": None, "body": "{}"}


class Stream:
    """Writes for `calls` calls, step after step, as live calls make them: per call and step an update (status and
    an `extra` key), an event, and a webhook outbox row that replaces the previous step's (added, then the older
    one removed). What must be in the database afterwards is known from `steps`."""

    def __init__(self, store: Store, calls: list[dict[str, Any]]) -> None:
        self.store, self.calls, self.steps = store, calls, 0

    async def step(self) -> None:
        n = self.steps
        for call in self.calls:
            cid, uuid = int(call["id"]), str(call["call_uuid"])
            await self.store.update_call(cid, call_status=f"s{n}", extra={f"k{n}": n})
            await self.store.add_call_event(cid, "step", {"n": n})
            self.store.outbox_add(outbox_row(f"{uuid}-{n}", uuid))
            if n:
                self.store.outbox_remove(f"{uuid}-{n - 1}")
        self.steps += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(0.005)      # pacing, not a wait: the next step's writes come a little later

    async def check(self) -> None:
        """Every write arrived, in order: all events of every call in step order, the last step's status, every
        step's `extra` key merged, and exactly the last step's outbox row of each call."""
        assert self.steps > 0
        for call in self.calls:
            cid = int(call["id"])
            events = await self.store.list_call_events(cid)
            assert [e["data"]["n"] for e in events] == list(range(self.steps))
            ats = [e["at"] for e in events]
            assert ats == sorted(ats)
            row = await self.store.get_call(cid)
            assert row is not None and row["call_status"] == f"s{self.steps - 1}"
            assert row["extra"] == {f"k{n}": n for n in range(self.steps)}
        outbox = await self.store.outbox_load("gw-test")
        assert sorted(r["delivery_id"] for r in outbox) == sorted(f"{c['call_uuid']}-{self.steps - 1}"
                                                                   for c in self.calls)

    async def check_all_written(self) -> None:
        """Once the held writes are flushed: `check`, and nothing was dropped."""
        await asyncio.wait_for(self.store.flush(), 120)
        await self.check()
        assert self.store.writes_dropped == {"transient": 0, "permanent": 0}


async def stop_producer(stop: asyncio.Event, producer: asyncio.Task[None]) -> None:
    """End a `Stream.run` and wait for its last step, bounded: a step stuck on a store that never answers fails
    the test instead of holding the whole run."""
    stop.set()
    await asyncio.wait_for(producer, 60)


async def _calls(store: Store, prefix: str, n: int) -> list[dict[str, Any]]:
    return [await store.create_call(call_fields(f"{prefix}-{k}")) for k in range(n)]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_restart_mid_stream_loses_no_update_event_or_outbox_row(
        cluster: ThrowawayCluster, pg_store: Store, mode: str) -> None:
    """The server stops (`fast`: every backend told admin_shutdown; `immediate`: a crash) while calls keep writing,
    stays away while more writes queue behind the held batch, and comes back: everything arrives, in order, and
    nothing was dropped. Meanwhile the store says it is degraded; once written, it no longer does."""
    store = pg_store
    stream = Stream(store, await _calls(store, f"restart-{mode}", 8))
    stop = asyncio.Event()
    producer = asyncio.create_task(stream.run(stop))
    try:
        await wait_for(lambda: store._writes.done_count > 100, 60, what="writes committed before the outage")
        await asyncio.to_thread(cluster.stop, mode)
        await wait_for(lambda: store.degraded, 60, what="the store to notice the outage")
        await wait_for(lambda: store.write_retries["write"] >= 2, 60, what="retries while the server is away")
        held = store.writes_pending
        await wait_for(lambda: store.writes_pending > held, 60, what="writes queueing behind the held batch")
        with pytest.raises(StoreUnavailableError):   # set-up is refused, after the insert lane's short retries
            await asyncio.wait_for(store.create_call(call_fields(f"refused-{mode}")), 60)
        assert store.write_retries["insert"] >= 1
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: not store.degraded, 60, what="the held writes to be written")
    finally:
        await stop_producer(stop, producer)
    await stream.check_all_written()
    assert store.write_errors == 1      # the refused set-up's row, and nothing else
    assert (await store.create_call(call_fields(f"after-{mode}")))["id"]    # set-up works again


async def test_writes_still_failing_at_the_bound_are_dropped_logged_and_counted(
        cluster: ThrowawayCluster, pg_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A database that stays away past `retry_seconds`: the held writes are dropped (so a flush, and a drain, end),
    logged with their call ids and counted; writes after the database is back go through."""
    store = pg_store
    store.retry_seconds = 1.0
    call = (await _calls(store, "bound", 1))[0]
    await asyncio.to_thread(cluster.stop, "fast")
    with caplog.at_level(logging.ERROR, logger="gateway.store"):
        await store.update_call(int(call["id"]), call_status="lost")
        await store.add_call_event(int(call["id"]), "lost")
        await asyncio.wait_for(store.flush(), 60)
    assert store.writes_dropped["transient"] == 2
    assert not store.degraded           # nothing is held any more (the server is still away)
    dropped = [r for r in caplog.records if r.getMessage() == "call-log writes dropped"]
    assert dropped and all(getattr(r, "call_ids", None) == [call["id"]] for r in dropped)
    assert all(getattr(r, "failure", None) == "transient" for r in dropped)
    await asyncio.to_thread(cluster.start)
    await store.update_call(int(call["id"]), call_status="back")
    await asyncio.wait_for(store.flush(), 60)
    assert not store.degraded
    got = await store.get_call(int(call["id"]))
    assert got is not None and got["call_status"] == "back"


async def test_healthz_metrics_and_call_setup_while_the_database_is_away(
        cluster: ThrowawayCluster, pg_store: Store, make_gateway) -> None:
    """A gateway on the server: while it is stopped, /healthz says `store: degraded`, /metrics counts the retries
    and the held writes, and a new call is refused as unavailable (CapacityError → SIP 503), not left waiting."""
    await pg_store.close()          # the gateway opens its own store on the clean database
    gw = await make_gateway(db=cluster.url)
    try:
        row = await gw.store.create_call(call_fields("gw-1"))
        await asyncio.to_thread(cluster.stop, "fast")
        await gw.store.update_call(row["id"], call_status="in-progress")

        async def health() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http, http.get(gw.url("/healthz")) as r:
                return dict(await r.json())

        await wait_for(lambda: gw.store.degraded, 60, what="the store to notice the outage")
        assert (await health())["store"] == "degraded"
        text = await metrics_text(gw)
        assert "gateway_store_degraded 1.0" in text
        pending = [line for line in text.splitlines() if line.startswith("gateway_store_writes_pending ")]
        assert pending and float(pending[0].split()[1]) >= 1
        assert 'gateway_store_write_retries_total{lane="write"}' in text
        with pytest.raises(CallLogUnavailableError) as refused:
            await asyncio.wait_for(gw.calls.create(carrier="sip", direction="inbound", from_number="+15550000001",
                                                   to_number="+15550000002"), 60)
        assert refused.value.sip_status == 503 and "call log is unavailable" in str(refused.value)
        assert 'gateway_calls_refused_total{carrier="sip",reason="call_log"} 1.0' in await metrics_text(gw)
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: not gw.store.degraded, 60, what="the held write to be written")
        assert (await health())["store"] == "ok"
        got = await gw.store.get_call(row["id"])
        assert got is not None and got["call_status"] == "in-progress"
    finally:
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
        await gw.stop()


async def test_killed_backends_mid_stream_lose_nothing() -> None:
    """Every backend of the database killed (pg_terminate_backend), again and again, while calls write: the pool's
    dead connections fail their batch, which is retried on a new one; nothing lost, nothing out of order."""
    url = await create_database("gw_durable")
    store = Store(url, SecretBox.generate())
    await store.open()
    stop = asyncio.Event()
    killer = await asyncpg.connect(require_pg())
    try:
        stream = Stream(store, await _calls(store, "killed", 8))
        producer = asyncio.create_task(stream.run(stop))
        name = url.rpartition("/")[2]
        try:
            for round_ in range(5):
                target = 50 * (round_ + 1)
                await wait_for(lambda t=target: store._writes.done_count > t, 60, what="writes between kills")
                # the store's backends (all ours; an autovacuum worker in the database is a superuser's)
                await killer.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                                   "AND pid <> pg_backend_pid() AND usename = current_user", name)
            await wait_for(lambda: store.write_retries["write"] >= 1, 60, what="a batch hitting a killed backend")
        finally:
            await stop_producer(stop, producer)
        await stream.check_all_written()
    finally:
        await killer.close()
        await store.close()
        await drop_database(url)


# -- a bad item loses only itself (SQLite and PostgreSQL) ---------------------------------------------------------
async def test_a_poison_item_loses_only_itself(db_url: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """One batch with two bad items among many good ones (an event for a call that does not exist: a foreign key
    violation; a webhook outbox row whose delivery id is taken: a unique violation): every good item is written,
    in order, and only the bad ones are dropped, counted and logged with what they were."""
    store = Store(db_url, SecretBox.generate())
    await store.open()
    try:
        calls = await _calls(store, "poison", 4)
        store.outbox_add(outbox_row("taken", "poison-0"))
        await store.flush()
        store.WINDOW = 3600.0            # everything below goes in one batch (the flush at the end cuts it)
        with caplog.at_level(logging.ERROR, logger="gateway.store"):
            for n in range(30):
                for call in calls:
                    cid = int(call["id"])
                    await store.update_call(cid, call_status=f"s{n}")
                    await store.add_call_event(cid, "step", {"n": n})
                if n == 10:
                    await store.add_call_event(999_999, "orphan")
                if n == 20:
                    store.outbox_add(outbox_row("taken", "poison-1"))
                store.outbox_add(outbox_row(f"good-{n}", "poison-2"))
            await asyncio.wait_for(store.flush(), 120)
        assert store.writes_dropped == {"transient": 0, "permanent": 2}
        for call in calls:
            cid = int(call["id"])
            assert [e["data"]["n"] for e in await store.list_call_events(cid)] == list(range(30))
            got = await store.get_call(cid)
            assert got is not None and got["call_status"] == "s29"
        outbox = await store.outbox_load("gw-test")
        assert [r["delivery_id"] for r in outbox] == ["taken"] + [f"good-{n}" for n in range(30)]
        assert [r["call_id"] for r in outbox][0] == "poison-0"
        logged = [r for r in caplog.records if r.getMessage() == "call-log writes dropped"]
        assert sorted(str(getattr(r, "writes", "")) for r in logged) == [
            "['event:999999:orphan']", "['outbox_add:taken(call poison-1)']"]
        assert all(getattr(r, "failure", None) == "permanent" for r in logged)
    finally:
        await store.close()


async def test_a_duplicate_row_fails_only_its_own_call_setup(db_url: str) -> None:  # noqa: F811
    """The insert lane writes a burst of new calls in one statement: one bad row (a call id already used) fails
    only its own set-up, with its own error; the others get their rows."""
    store = Store(db_url, SecretBox.generate())
    await store.open()
    try:
        await store.create_call(call_fields("dup"))
        got = await asyncio.gather(*(store.create_call(call_fields("dup" if k == 5 else f"burst-{k}"))
                                     for k in range(12)), return_exceptions=True)
        failed = [k for k, r in enumerate(got) if isinstance(r, BaseException)]
        assert failed == [5]
        assert isinstance(got[5], sa_exc.IntegrityError)
        assert len({r["id"] for r in got if isinstance(r, dict)}) == 11
    finally:
        await store.close()


async def test_an_outage_longer_than_stale_after_declares_no_process_lost(
        cluster: ThrowawayCluster, pg_store: Store, make_gateway, tmp_path) -> None:
    """Two processes on the server, one with a live call; the database is away for longer than `stale_after`, so
    when it is back both heartbeats are stale. Neither process may declare the other lost (closing its live
    calls as `node_lost`): the first one back used to. Once both have beaten again and looked for lost processes
    after their hold-off, the live call is still open and both processes are still running."""
    await pg_store.close()
    loop = asyncio.get_running_loop()
    stale = 3.0
    # a beats often, b (with the call) seldom: once the server is back, a looks for lost processes before b beats
    gws = [await make_gateway(db=cluster.url, node_id=f"gw-{n}", data_dir=str(tmp_path / n), heartbeat_interval=beat,
                              stale_after=stale) for n, beat in (("a", 0.1), ("b", 1.0))]
    try:
        call = await gws[1].calls.create(carrier="sip", direction="inbound", from_number="+15550000001",
                                         to_number="+15550000002")
        await asyncio.to_thread(cluster.stop, "fast")
        away = loop.time()
        await wait_for(lambda: all(gw.membership._beat_failed for gw in gws), 60, what="both heartbeats failing")
        await wait_for(lambda: loop.time() - away > 2 * stale, 60, what="an outage longer than stale_after")
        await asyncio.to_thread(cluster.start)
        checks = [gw.membership.lost_checks for gw in gws]
        await wait_for(lambda: all(gw.membership.lost_checks >= n + 3 for gw, n in zip(gws, checks, strict=True)),
                       120, what="both processes looking for lost processes again after the outage")
        row = await gws[0].store.get_call(call.log_id)
        assert row is not None and row["ended_at"] is None and row["hangup_reason"] is None
        nodes = {n["proc"]: n for n in await gws[0].store.list_nodes(stale)}
        assert nodes["gw-a"]["state"] == nodes["gw-b"]["state"] == "running"
        await call.end(HangupSource.SYSTEM, "test over")
    finally:
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
        for gw in gws:
            await gw.stop()


# -- a database that does not answer at all (no refusal: its host gone, packets dropped) ---------------------------
@pytest_asyncio.fixture
async def relay(cluster: ThrowawayCluster, pg_store: Store) -> AsyncIterator[BlackHoleRelay]:
    """The throwaway server behind a relay the test can turn into a black hole (tests/blackhole.py)."""
    await pg_store.close()          # the test opens its own store through the relay, on the clean database
    hole = BlackHoleRelay(cluster.port)
    await hole.start()
    yield hole
    await hole.close()
    await _end_leftover_tasks()


async def _end_leftover_tasks() -> None:
    """Cancel what a test through the black hole left running, bounded, and name on stderr at once whatever does
    not end: a full suite run once hung for good in the event loop's own teardown, which cancels the leftovers and
    waits for them without a bound, after a failure of a test here; this turns a repeat into a stack to read."""
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, pending = await asyncio.wait(left, timeout=15)
    for task in pending:
        print(f"\n[test_store_durable] task still running 15 s after cancel: {task!r}", file=sys.__stderr__)
        task.print_stack(file=sys.__stderr__)
    assert not pending, f"{len(pending)} task(s) ignore cancellation (stacks on stderr)"


def _through(relay: BlackHoleRelay) -> str:
    return f"postgresql://gw@127.0.0.1:{relay.port}/postgres"


async def test_call_setup_is_refused_within_its_bound_when_the_database_does_not_answer(
        relay: BlackHoleRelay, make_gateway) -> None:
    """A call set up while the database answers nothing (a pooled connection gone silent, or a new one never
    answered) is refused as unavailable (SIP 503 + Retry-After) within the set-up bound — through the insert lane,
    and a channel-limited number's row too — not after the connect or statement timeout (set long here, so only
    the set-up bound can cut it)."""
    gw = await make_gateway(db=_through(relay), db_connect_timeout=30.0, db_command_timeout=20.0)
    try:
        await gw.store.create_call(call_fields("warm"))        # the pool holds a connection that answered
        relay.silent = True
        loop = asyncio.get_running_loop()
        assert not gw.store.degraded     # so the row below waits on the silent database, not refused up front
        began = loop.time()
        with pytest.raises(Exception) as limited:    # a number with a channel limit: its row's own transaction
            await asyncio.wait_for(gw.store.create_call_within(call_fields("limited"), 1, 4, 20.0), 60)
        assert is_transient(limited.value), reason(limited.value)
        assert loop.time() - began < Store.SETUP_SECONDS + 4
        for n in range(2):
            began = loop.time()
            with pytest.raises(CallLogUnavailableError) as refused:
                await asyncio.wait_for(gw.calls.create(carrier="sip", direction="inbound", from_number="+15550000001",
                                                       to_number="+15550000002"), 60)
            took = loop.time() - began
            assert refused.value.sip_status == 503 and refused.value.retry_after == 5
            assert "call log is unavailable" in str(refused.value)
            assert took < Store.SETUP_SECONDS + 4, f"set-up {n} refused after {took:.1f} s"
        assert 'gateway_calls_refused_total{carrier="sip",reason="call_log"} 2.0' in await metrics_text(gw)
    finally:
        relay.silent = False
        await relay.cut()           # the silenced connections end; new ones reach the server again
        await gw.stop()


async def test_connect_and_statement_timeouts_bound_a_database_that_does_not_answer(relay: BlackHoleRelay) -> None:
    """The engine's bounds (gateway/store/connect.py): a statement on a pooled connection gone silent, and a new
    connection never answered, each fail transiently (what the lanes retry and set-up refuses on) after about
    their timeout instead of asyncpg's 60 s connect wait or an endless read."""
    url = _through(relay)
    bounds = DbTimeouts(connect=1.0, command=1.0, pool=1.0)
    store = Store(url, SecretBox.generate())
    store.timeouts = bounds
    await store.open()
    engine = create_async_engine(database_url(url), **engine_options(database_url(url), bounds))
    loop = asyncio.get_running_loop()
    try:
        await store.list_agents()                  # a pooled connection that answered
        relay.silent = True
        began = loop.time()
        with pytest.raises(Exception) as silent_statement:
            await asyncio.wait_for(store.list_agents(), 60)
        assert is_transient(silent_statement.value), reason(silent_statement.value)
        assert loop.time() - began < bounds.command + 4
        began = loop.time()
        with pytest.raises(Exception) as silent_connect:
            async with engine.connect():           # nothing pooled: a new connection
                pass
        assert is_transient(silent_connect.value), reason(silent_connect.value)
        assert loop.time() - began < bounds.connect + 4
    finally:
        relay.silent = False
        await relay.cut()
        await engine.dispose()
        await store.close()


def test_sqlite_urls_get_no_driver_timeouts() -> None:
    assert engine_options(database_url("/tmp/gw.db"), DbTimeouts()) == {}
    url = database_url("postgresql://gw@127.0.0.1/gw")
    bounded = {"timeout": DbTimeouts.connect, "connection_class": bounded_close_class()}
    assert engine_options(url, DbTimeouts(), schema=True) == {"connect_args": bounded}
    assert engine_options(url, DbTimeouts(command=0, pool=0)) == {"connect_args": bounded}


async def test_closing_a_connection_to_a_silent_database_is_bounded(relay: BlackHoleRelay) -> None:
    """asyncpg's close() waits for the server's end of the connection with no bound; the store's connections
    (connect.py) give up after CLOSE_SECONDS and abort, so nothing that closes one hangs on a silent server."""
    conn = await asyncpg.connect(_through(relay), connection_class=bounded_close_class())
    assert await conn.fetchval("SELECT 1") == 1
    relay.silent = True
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.close(), 30)
    assert loop.time() - began < CLOSE_SECONDS + 3
    assert conn.is_closed()


async def test_call_log_reads_answer_503_at_once_while_writes_are_held(
        cluster: ThrowawayCluster, pg_store: Store, make_gateway) -> None:
    """`GET /api/v1/calls/logs…` waits for this process's queued writes; while those are held for a database
    that is away it answers at once, 503 with Retry-After and the reason, instead of waiting up to
    --store-retry-seconds; once the database is back, the reads answer as before, with the held write in."""
    await pg_store.close()
    gw = await make_gateway(db=cluster.url)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def get(path: str) -> tuple[int, dict[str, Any], str | None]:
        async with aiohttp.ClientSession() as http, http.get(gw.url(path), headers=headers,
                                                             timeout=aiohttp.ClientTimeout(total=60)) as r:
            return r.status, dict(await r.json()), r.headers.get("Retry-After")

    try:
        row = await gw.store.create_call(call_fields("api-1"))
        await asyncio.to_thread(cluster.stop, "fast")
        await gw.store.update_call(row["id"], call_status="in-progress")
        await wait_for(lambda: gw.store.degraded, 60, what="the store to notice the outage")
        loop = asyncio.get_running_loop()
        for path in ("/api/v1/calls/logs", f"/api/v1/calls/logs/{row['id']}", "/api/v1/calls/logs/api-1"):
            began = loop.time()
            status, body, retry_after = await get(path)
            assert loop.time() - began < 5, path
            assert status == 503 and retry_after == "5", (path, status, body)
            assert body["success"] is False and "call log is unavailable" in body["error"], body
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: not gw.store.degraded, 60, what="the held write to be written")
        status, body, _ = await get(f"/api/v1/calls/logs/{row['id']}")
        assert status == 200 and body["call_log"]["call_status"] == "in-progress", body
        status, body, _ = await get("/api/v1/calls/logs")
        assert status == 200 and body["total"] == 1, body
    finally:
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
        await gw.stop()
