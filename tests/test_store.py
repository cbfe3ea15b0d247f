"""The store on a real SQLite file, and on a real PostgreSQL when one is reachable (same code, same tests).

PostgreSQL: set GATEWAY_TEST_POSTGRES_URL (e.g. postgresql://gw:gw@127.0.0.1/gw_test); .ci/run starts a local
server and sets it. Without it the PostgreSQL half is skipped with the reason.
"""
import asyncio
import os
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from conftest import reset_postgres_schema
from gateway.secretbox import SecretBox
from gateway.store import DuplicateError, NotFoundError, Store
from sipp import wait_for

PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(str(tmp_path / "gw.db"), SecretBox.generate())
    else:
        if not PG_URL:
            pytest.skip("GATEWAY_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
        await reset_postgres_schema(PG_URL)   # a clean schema per test
        s = Store(PG_URL, SecretBox.generate())
    await s.open()
    yield s
    await s.close()


def call_fields(uuid: str, **kw):
    return {"call_uuid": uuid, "channel_type": "sip", "call_direction": "inbound", "from_number": "+15550000001",
            "to_number": "+15550000002", "call_status": "ringing", **kw}


async def test_a_batch_of_call_events_keeps_every_event_in_order(store):
    """Events queued together reach the call log in one batch (on PostgreSQL one INSERT for all of them, columns as
    arrays): every event of every call, in the order added, its data as given (nested, unicode, none → {})."""
    ids = [(await store.create_call(call_fields(f"batch-{k}")))["id"] for k in range(3)]
    await store.flush()
    for n in range(40):                       # interleaved over the calls, all queued before the writer runs
        await store.add_call_event(ids[n % 3], f"kind-{n}", {"n": n, "text": "é✓", "nested": {"list": [n, None]}}
                                   if n % 4 else None)
    await store.flush()
    for k, cid in enumerate(ids):
        events = await store.list_call_events(cid)
        assert [e["kind"] for e in events] == [f"kind-{n}" for n in range(40) if n % 3 == k]
        for e in events:
            n = int(e["kind"].split("-")[1])
            assert e["data"] == ({"n": n, "text": "é✓", "nested": {"list": [n, None]}} if n % 4 else {})
            assert datetime.fromisoformat(e["at"]) <= datetime.now(UTC)


async def test_agents_round_trip(store):
    a = await store.create_agent({"name": "a", "engine": "echo", "settings": {"transfer": {"number": "+1555"}}})
    assert (await store.get_agent(a["id"]))["settings"]["transfer"]["number"] == "+1555"
    await store.update_agent(a["id"], {"name": "b"})
    assert (await store.get_agent(a["id"]))["name"] == "b"  # the read cache saw the write
    await store.delete_agent(a["id"])
    assert await store.get_agent(a["id"]) is None
    with pytest.raises(NotFoundError):
        await store.update_agent(a["id"], {"name": "c"})


async def test_cached_rows_are_private_copies(store):
    """A caller may change the row it got (nested settings, lists, secrets) without changing what the next caller
    reads from the cache; values that are not JSON-shaped are copied too."""
    a = await store.create_agent({"name": "a", "engine": "echo",
                                  "settings": {"transfer": {"numbers": ["+1555"]}, "pair": (1, [2])}})
    first = await store.get_agent(a["id"])
    first["settings"]["transfer"]["numbers"].append("+1666")
    first["settings"]["pair"][1].append(3)
    first["name"] = "changed"
    again = await store.get_agent(a["id"])
    assert again["name"] == "a" and again["settings"]["transfer"]["numbers"] == ["+1555"]
    assert list(again["settings"]["pair"][1]) == [2]
    n = await store.create_number({"phone_number": "+15550001112", "provider": "sip", "sip_trunk_name": "t2",
                                   "config": {"allowed_ips": ["10.0.0.1"]}}, {"sip_password": "pw"})
    got = await store.find_number("+15550001112", "sip", with_secrets=True)
    got["secrets"]["sip_password"] = "leaked"
    got["config"]["allowed_ips"].append("0.0.0.0/0")
    fresh = await store.find_number("+15550001112", "sip", with_secrets=True)
    assert fresh["secrets"] == {"sip_password": "pw"} and fresh["config"]["allowed_ips"] == ["10.0.0.1"]
    assert (await store.get_number(n["id"]))["config"]["allowed_ips"] == ["10.0.0.1"]


async def test_numbers_keep_secrets_apart(store):
    n = await store.create_number({"phone_number": "+15550001111", "provider": "sip", "sip_trunk_name": "t1",
                                   "config": {"sip_host": "h"}}, {"sip_password": "pw"})
    assert "secrets" not in n
    assert "secrets" not in await store.get_number(n["id"])
    assert (await store.get_number(n["id"], with_secrets=True))["secrets"] == {"sip_password": "pw"}
    assert (await store.find_number("+15550001111", "sip"))["id"] == n["id"]
    with pytest.raises(DuplicateError):
        await store.create_number({"phone_number": "+15550002222", "provider": "sip", "sip_trunk_name": "t1"}, {})
    rows, total = await store.list_numbers(1, 10)
    assert total == 1 and rows[0]["sip_trunk_name"] == "t1"
    await store.update_number(n["id"], agent_id=None, status={"registration": "registered"})
    assert (await store.find_number("+15550001111"))["status"] == {"registration": "registered"}
    await store.delete_number(n["id"])
    assert await store.find_number("+15550001111") is None


async def test_call_log_batches_keep_order_and_merge_extra(store):
    rows = await asyncio.gather(*(store.create_call(call_fields(f"u{i}")) for i in range(50)))
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 50
    first = ids[0]
    await store.update_call(first, call_status="in-progress", extra={"a": 1})
    await store.update_call(first, extra={"b": 2})
    await store.add_call_event(first, "phone_call:accepted", {"x": 1})
    await store.add_call_event(first, "hang_up", {"source": "user"})
    await store.update_call(first, call_status="completed", hangup_source="user")
    got = await store.get_call(first)  # reads flush the write-behind queue first
    assert got["call_status"] == "completed" and got["hangup_source"] == "user"
    assert got["extra"] == {"a": 1, "b": 2}
    await store.update_call(first, extra={"c": 3})
    assert (await store.get_call(first))["extra"] == {"a": 1, "b": 2, "c": 3}
    assert [e["kind"] for e in await store.list_call_events(first)] == ["phone_call:accepted", "hang_up"]
    assert (await store.find_call(call_uuid="u7"))["id"] == ids[7]
    page, total = await store.list_calls(1, 20, call_status="ringing")
    assert total == 49 and len(page) == 20


async def test_concurrent_writers_never_lock(store):
    """Hundreds of calls writing at once (what a burst of SIP calls does) all land, with no 'database is locked'."""
    async def one(i):
        row = await store.create_call(call_fields(f"c{i}"))
        for status in ("in-progress", "completed"):
            await store.update_call(row["id"], call_status=status)
            await store.add_call_event(row["id"], status)
        return row["id"]

    ids = await asyncio.gather(*(one(i) for i in range(300)))
    await store.flush()
    assert store.write_errors == 0
    _, total = await store.list_calls(1, 1, call_status="completed")
    assert total == 300
    assert len(await store.list_call_events(ids[-1])) == 2


async def test_new_rows_do_not_wait_behind_written_behind_batches_and_flush_cuts_their_wait(store):
    """Call set-up's row has its own lane: with the write-behind lane holding its batch open (a window far longer
    than this test may take), a new call still gets its row and id; a read's flush ends the hold and sees every
    write, and the write-behind lane goes back to its window afterwards."""
    store.WINDOW = 3600.0
    first = await store.create_call(call_fields("w0"))
    await store.update_call(first["id"], call_status="in-progress")            # now held for its window
    await asyncio.sleep(0)                                                   # the write lane takes it and waits
    second = await asyncio.wait_for(store.create_call(call_fields("w1")), 30)
    assert second["id"] != first["id"]
    assert (await store.find_call(call_uuid="w1", flush=False))["call_status"] == "ringing"
    assert (await store.find_call(call_uuid="w0", flush=False))["call_status"] == "ringing"   # still held
    got = await asyncio.wait_for(store.get_call(first["id"]), 30)             # flushes: the hold ends
    assert got["call_status"] == "in-progress"
    await store.update_call(second["id"], call_status="completed")
    await asyncio.sleep(0)
    assert (await store.find_call(call_uuid="w1", flush=False))["call_status"] == "ringing"   # held again
    assert (await asyncio.wait_for(store.get_call(second["id"]), 30))["call_status"] == "completed"
    assert store.write_errors == 0


async def test_a_flush_under_a_steady_stream_of_writes_waits_only_for_what_came_before_it(store):
    """Under load the write queue is never empty: a flush (a read of the call log, the channel-limit check at call
    set-up) waited for it to drain, i.e. for a lull, and meanwhile the lanes stopped batching. It returns once the
    writes queued before it are committed, whatever keeps coming, and a row created meanwhile still gets its id."""
    row = await store.create_call(call_fields("steady"))
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            await store.add_call_event(row["id"], "tick", {"n": n})
            n += 1
            await asyncio.sleep(0)
        return n

    writer = asyncio.create_task(keep_writing())
    try:
        await wait_for(lambda: store._writes.done_count > 5)
        await store.update_call(row["id"], call_status="in-progress")
        marker = store._writes.put_count
        await asyncio.wait_for(store.flush(), 30)
        assert store._writes.done_count >= marker
        assert (await store.find_call(call_uuid="steady", flush=False))["call_status"] == "in-progress"
        second = await asyncio.wait_for(store.create_call(call_fields("steady-2")), 30)
        assert second["id"] != row["id"]
    finally:
        stop.set()
        written = await writer
    await store.flush()
    assert store.write_errors == 0
    assert len(await store.list_call_events(row["id"])) == written


async def test_ids_are_never_reused(store):
    """Regression (issue 14): deleting the newest agent or number and creating another must not hand out its id
    again (old call logs and webhooks would read as the new one's), on SQLite and PostgreSQL alike."""
    a = await store.create_agent({"name": "a", "settings": {}})
    await store.delete_agent(a["id"])
    assert (await store.create_agent({"name": "b", "settings": {}}))["id"] > a["id"]
    n = await store.create_number({"phone_number": "+15550003333", "provider": "sip"}, {})
    await store.delete_number(n["id"])
    assert (await store.create_number({"phone_number": "+15550003333", "provider": "sip"}, {}))["id"] > n["id"]


async def test_webhook_outbox_rows_in_order_per_owner(store):
    def row(i: int, owner: str = "node-a") -> dict:
        return {"delivery_id": f"d{i}", "owner": owner, "call_id": f"c{i % 2}", "event": f"e{i}",
                "url": "http://127.0.0.1:9/h", "agent_id": None, "body": f'{{"n": {i}}}'}
    for i in range(5):
        store.outbox_add(row(i))
    store.outbox_add(row(9, owner="node-b"))
    store.outbox_remove("d1")
    await store.flush()
    store.outbox_add(row(5))
    store.outbox_remove("d5")          # queued and delivered in one batch: no row at all
    store.outbox_remove("d3")
    rows = await store.outbox_load("node-a")
    assert [r["delivery_id"] for r in rows] == ["d0", "d2", "d4"]
    assert [r["body"] for r in rows] == ['{"n": 0}', '{"n": 2}', '{"n": 4}']
    assert [r["delivery_id"] for r in await store.outbox_load("node-b")] == ["d9"]


async def test_call_list_filters_by_carrier_and_time(store):
    from datetime import datetime, timedelta, timezone

    day = datetime(2026, 11, 20, 23, 30, tzinfo=UTC)
    for i, (carrier, at) in enumerate((("sip", day), ("twilio", day + timedelta(hours=1)),
                                       ("twilio", day + timedelta(days=2)))):
        await store.create_call(call_fields(f"c{i}", channel_type=carrier, created_at=at))
    rows, total = await store.list_calls(carrier="twilio")
    assert total == 2 and {r["call_uuid"] for r in rows} == {"c1", "c2"}
    rows, total = await store.list_calls(since=day + timedelta(minutes=30), until=day + timedelta(days=1))
    assert total == 1 and rows[0]["call_uuid"] == "c1"          # since inclusive, until exclusive
    rows, total = await store.list_calls(since=day, carrier="sip")
    assert total == 1 and rows[0]["call_uuid"] == "c0"
    # a bound in another zone is the same instant
    rows, total = await store.list_calls(until=(day + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=5))))
    assert total == 1 and rows[0]["call_uuid"] == "c0"


async def test_call_setup_lookups_share_one_read_and_do_not_queue_on_the_pool(store):
    """Every INVITE in flight looks its number up. Missing or expired, the row used to be read once per INVITE,
    all at once (a CPS run's cold start: hundreds of reads for one row queued on a 15-connection pool, and on a
    starved box 111 INVITEs timed out there). Now concurrent misses share one read, and an expired entry is
    served while one background read refreshes it, so a pool held by others does not stall call set-up."""
    from sqlalchemy import event
    n = await store.create_number({"phone_number": "+15550003333", "provider": "sip", "sip_trunk_name": "t3"}, {})
    reads = []

    def count(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "phone_numbers" in statement:
            reads.append(statement)
    event.listen(store.engine.sync_engine, "before_cursor_execute", count)

    found = await asyncio.gather(*(store.find_number("+15550003333", "sip", with_secrets=True) for _ in range(300)))
    assert {f["id"] for f in found} == {n["id"]}
    assert len(reads) == 1, len(reads)                      # one read for 300 concurrent set-ups
    found[0]["config"]["changed"] = True                    # each caller got its own copy
    assert "changed" not in (await store.find_number("+15550003333", "sip", with_secrets=True))["config"]

    store.CACHE_TTL = 0.0                                   # every entry expired (still within its grace)
    if store.url.startswith("postgresql"):
        pool = store.engine.sync_engine.pool
        held = [await store.engine.connect() for _ in range(pool.size() + pool._max_overflow)]   # all of them
        try:
            found = await asyncio.wait_for(asyncio.gather(
                *(store.find_number("+15550003333", "sip", with_secrets=True) for _ in range(50))), 20)
            assert {f["id"] for f in found} == {n["id"]}    # served while its refresh waits for a connection
        finally:
            for conn in held:
                await conn.close()
    else:
        await asyncio.gather(*(store.find_number("+15550003333", "sip", with_secrets=True) for _ in range(50)))
    await wait_for(lambda: not store._loading, 20, what="the background refresh")
    assert len(reads) == 2, len(reads)                      # and one read refreshed it for all 50
    store.CACHE_TTL = Store.CACHE_TTL

    await store.update_number(n["id"], status={"registration": "registered"})   # a write invalidates at once
    assert (await store.find_number("+15550003333", "sip", with_secrets=True))["status"] == {
        "registration": "registered"}
