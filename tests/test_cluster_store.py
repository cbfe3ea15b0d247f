"""The store's cluster half on SQLite and on a fresh PostgreSQL database: node liveness, call ownership moves, and
orphan closing where exactly one of several racing survivors closes each call."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from cluster_env import db_url  # noqa: F401  (db_url: the shared two-backend fixture)
from gateway.store import Store


@pytest_asyncio.fixture
async def store(db_url):
    s = Store(db_url)
    await s.open()
    yield s
    await s.close()


def call_fields(uuid: str, owner: str | None, **kw):
    return {"call_uuid": uuid, "channel_type": "twilio", "call_direction": "inbound", "from_number": "+15550000001",
            "to_number": "+15550000002", "call_status": "ringing", "owner": owner, **kw}


async def test_node_liveness_follows_heartbeat_and_state(store):
    assert await store.register_node("a", node_id="a", public_url="http://a", sip_uri=None) is None
    await store.register_node("b", node_id="b", public_url="http://b", sip_uri="sip:127.0.0.1:5061")
    nodes = {n["proc"]: n for n in await store.list_nodes(stale_after=20)}
    assert nodes["a"]["alive"] and nodes["b"]["alive"] and nodes["b"]["sip_uri"] == "sip:127.0.0.1:5061"
    assert await store.lost_procs("a", stale_after=20) == []
    await asyncio.sleep(0.3)
    await store.heartbeat("a")
    lost = await store.lost_procs("a", stale_after=0.2)
    assert [p for p, _ in lost] == ["b"]                       # a just beat; and a never reports itself
    await store.update_node("b", state="stopped")
    assert await store.lost_procs("a", stale_after=0.0) == []  # stopped ended its calls itself: not lost
    prev = await store.register_node("a", node_id="a", public_url=None, sip_uri=None)
    assert prev is not None and prev <= datetime.now(UTC) + timedelta(seconds=5)


async def test_claim_moves_ownership_once(store):
    row = await store.create_call(call_fields("c1", "a"))
    assert await store.claim_call(row["id"], "a", "b") is True
    assert await store.claim_call(row["id"], "a", "c") is False   # a no longer holds it
    assert (await store.get_call(row["id"]))["owner"] == "b"
    await store.update_call(row["id"], ended_at=datetime.now(UTC))
    assert await store.claim_call(row["id"], "b", "c") is False   # ended calls are not adopted


async def test_close_orphans_sets_the_call_log_like_a_hangup(store):
    t0 = datetime.now(UTC) - timedelta(seconds=30)
    await store.create_call(call_fields("ans", "lost", call_status="in-progress",
                                     answered_at=t0))
    ringing = await store.create_call(call_fields("ring", "lost"))
    other = await store.create_call(call_fields("other", "alive"))
    last_seen = t0 + timedelta(seconds=12)
    rows = await store.close_orphans("node_lost", owner="lost", last_seen=last_seen)
    by_uuid = {r["call_uuid"]: r for r in rows}
    assert set(by_uuid) == {"ans", "ring"}
    a = by_uuid["ans"]
    assert (a["call_status"], a["hangup_source"], a["hangup_reason"]) == ("completed", "system", "node_lost")
    assert a["call_duration_in_seconds"] == pytest.approx(12, abs=0.01)   # until the owner was last seen
    r = by_uuid["ring"]
    assert (r["call_status"], r["call_duration_in_seconds"]) == ("failed", 0)
    assert datetime.fromisoformat(r["ended_at"]) >= datetime.fromisoformat(ringing["created_at"]) - \
        timedelta(seconds=1)                                                  # never before the call began
    assert (await store.get_call(other["id"]))["ended_at"] is None
    assert await store.close_orphans("node_lost", owner="lost") == []       # nothing left to close
    assert [r["call_uuid"] for r in await store.open_calls(["alive", "lost"])] == ["other"]


async def test_racing_survivors_close_each_call_exactly_once(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("several processes share one database only on PostgreSQL")
    stores = [Store(db_url) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        for i in range(50):
            await stores[0].create_call(call_fields(f"c{i}", "dead"))
        results = await asyncio.gather(*(s.close_orphans("node_lost", owner="dead") for s in stores))
        closed = [r["call_uuid"] for rows in results for r in rows]
        assert sorted(closed) == sorted(f"c{i}" for i in range(50))         # each once, none twice
    finally:
        for s in stores:
            await s.close()


async def test_workers_upgrading_one_database_together_all_start(db_url):
    """`serve --workers N` after an upgrade: N processes find the same column missing at the same moment; every
    one must open the store (one adds the column, the others find it added)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("several processes share one database only on PostgreSQL")
    first = Store(db_url)
    await first.open()
    async with first.engine.begin() as conn:      # a database from before `nodes.direct_url`
        await conn.exec_driver_sql("ALTER TABLE nodes DROP COLUMN direct_url")
    await first.close()
    stores = [Store(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].register_node("w.1", node_id="w", public_url=None, sip_uri=None)
        await stores[1].update_node("w.1", direct_url="http://127.0.0.1:1234")
        assert (await stores[2].list_nodes(20))[0]["direct_url"] == "http://127.0.0.1:1234"
    finally:
        for s in stores:
            if s.engine is not None:
                await s.close()


async def test_a_stopping_process_commits_its_calls_ends_before_it_says_stopped(make_gateway, db_url, tmp_path):  # noqa: F811
    """No survivor closes the open calls of a `stopped` process, so the state may only be written once the ends of
    its calls are: a kill right after it (systemd's SIGKILL at the end of TimeoutStopSec) must not leave a call
    `in-progress` for good. The call-log write lane is given a 30 s batch window here, so without that order the
    end would still be queued when the state is committed."""
    gw = await make_gateway(db=db_url, node_id="stopper")
    gw.store.WINDOW = 30.0
    row = await gw.store.create_call(call_fields("ending", "stopper"))
    await gw.store.update_call(row["id"], ended_at=datetime.now(UTC), call_status="completed")
    await gw.membership.stop()
    other = Store(db_url)
    await other.open()
    try:
        nodes = {n["proc"]: n for n in await other.list_nodes(5.0)}
        assert nodes["stopper"]["state"] == "stopped"
        assert (await other.get_call(row["id"]))["ended_at"] is not None
    finally:
        await other.close()


async def test_processes_opening_one_fresh_database_at_once_all_start(db_url):
    """`gateway serve --workers N` (or N nodes) on a new database: every process creates the schema at start-up,
    at the same moment. On PostgreSQL their CREATE TABLEs raced and all but one worker died with a
    UniqueViolationError (pg_type) and was restarted; each must open cleanly and find the same tables."""
    stores = [Store(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        agent = await stores[0].create_agent({"name": "a", "engine": "echo", "settings": {}})
        assert [(await s.get_agent(agent["id"]))["name"] for s in stores] == ["a"] * 4
    finally:
        await asyncio.gather(*(s.close() for s in stores if s.engine is not None))
