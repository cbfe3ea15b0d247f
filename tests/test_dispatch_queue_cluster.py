"""Channels, pace and the dispatch queue with several processes on one database: the channel count holds across
processes and forgets a crashed one, each queued call is claimed by one process only, and a number's pace is
shared (PostgreSQL: advisory lock, `FOR UPDATE SKIP LOCKED`, the database clock)."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import update

from gateway.store import Store
from gateway.store.models import Node
from sipp import needs_sipp, sip_gateway, sip_number, sipp_uas, wait_for
from test_cluster_store import db_url  # noqa: F401  (the fixture: SQLite file, fresh PostgreSQL database)
from test_dispatch_queue import request, sends  # noqa: F401  (sends: the fixture)

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def stores(db_url):  # noqa: F811
    """Two processes' stores on one PostgreSQL database; on SQLite (one process only) one store serves both
    process ids, which is how the single-process default runs the same statements."""
    pg = db_url.startswith("postgresql")
    opened = [Store(db_url), Store(db_url)] if pg else [Store(db_url)]
    for s in opened:
        await s.open()
    pair = opened if pg else opened * 2
    for proc, s in zip("ab", pair, strict=True):
        await s.register_node(proc, node_id=proc, public_url=None, sip_uri=None)
    yield pair
    for s in opened:
        await s.close()


def fields(owner: str, n: int) -> dict:
    return {"call_uuid": f"{owner}-{n}", "channel_type": "sip", "call_direction": "inbound", "phone_number_id": 1,
            "from_number": "+15550000001", "to_number": "+15550000002", "call_status": "ringing", "owner": owner}


async def test_channel_limit_across_processes_and_a_crash_frees_channels(stores):
    a, b = stores
    tries = [s.create_call_within(fields(p, i), 1, 3, stale_after=20) for i in range(10) for p, s in (("a", a),
                                                                                                      ("b", b))]
    made = [r for r in await asyncio.gather(*tries) if r is not None]
    assert len(made) == 3                          # never more than the limit, whoever asked
    assert (await a.live_calls_by_number(20))[1] == 3
    # b crashes: its heartbeat goes stale, its calls stop counting (before anyone even closes them)
    async with b.engine.begin() as conn:
        await conn.execute(update(Node).where(Node.proc == "b").values(
            heartbeat_at=datetime.now(UTC) - timedelta(seconds=60)))
    b_calls = sum(1 for r in made if r["owner"] == "b")
    assert (await a.live_calls_by_number(20)).get(1, 0) == 3 - b_calls
    more = [await a.create_call_within(fields("a", 100 + i), 1, 3, stale_after=20) for i in range(5)]
    assert sum(r is not None for r in more) == b_calls


async def test_each_queued_call_is_claimed_once_and_the_pace_is_shared(stores):
    a, b = stores
    items = [{"agent_id": 1, "from_number_id": 7, "to_number": f"+1555000{i:04d}", "call_context": {}}
             for i in range(60)]
    _, ids = await a.enqueue_calls(items)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    times: list[float] = []
    cps = 40.0

    async def worker(proc: str, store: Store) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while loop.time() < end and len(claimed["a"]) + len(claimed["b"]) < len(ids):
            slots = await store.take_slots(7, cps=cps, want=5, horizon=0.1, me=proc)
            if slots is not None:
                claimed[proc] += [it["id"] for it in slots.items]
                times.extend(slots.times)
            await asyncio.sleep(0.02)
    await asyncio.gather(worker("a", a), worker("b", b))
    assert sorted(claimed["a"] + claimed["b"]) == ids            # every call once, none twice
    assert claimed["a"] and claimed["b"]                          # both processes took part
    gaps = [y - x for x, y in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert min(gaps) >= 1 / cps - 1e-6                           # slots of one shared pace, whoever took them
    # a claimed item held by a process that died is queued again; one whose call exists is dispatched
    assert await a.recover_items(20) == (0, 0)
    async with b.engine.begin() as conn:
        await conn.execute(update(Node).where(Node.proc == "b").values(
            heartbeat_at=datetime.now(UTC) - timedelta(seconds=60)))
    assert await a.recover_items(20) == (0, len(claimed["b"]))


@needs_sipp
async def test_two_gateways_place_a_bulk_call_once_at_the_shared_pace(make_gateway, db_url, tmp_path,  # noqa: F811
                                                                    sends):  # noqa: F811
    if not db_url.startswith("postgresql"):
        pytest.skip("two gateway processes share PostgreSQL only (SQLite serves one process)")
    pg_url = db_url
    gws = [await sip_gateway(make_gateway, db=pg_url, node_id=f"q{i}", data_dir=str(tmp_path / f"d{i}"))
           for i in range(2)]
    cps, n = 8.0, 12
    async with sipp_uas("uas_busy.xml", calls=n, timeout_s=40) as uas:
        num = await sip_number(gws[0], sip_port=uas.port, max_cps=cps)
        status, created, _ = await request(gws[1], "POST", "/calls/bulk_call/create", {
            "name": "cluster", "phone_number_id": num["id"],
            "contact_list": [{"phone_number": f"+155598765{i:02d}"} for i in range(n)]})
        assert status == 201, created
        bulk_id = created["bulk_call_id"]
        for gw in gws:
            gw.dispatcher.wake()

        async def done():
            _, got, _ = await request(gws[0], "GET", f"/calls/bulk_call/{bulk_id}")
            return got["details"]["status"] == "completed" and got["details"]
        details = await wait_for(done, 30, what="the bulk call placed by the two gateways")
    uas.result.assert_calls(successful=n)
    assert details["counts"]["failed"] == n and details["outcomes"] == {"busy": n}
    _, logs, _ = await request(gws[0], "GET", f"/calls/logs?bulk_call_id={bulk_id}&pagesize=50")
    rows = logs["call_log_data"]
    assert len(rows) == n and len({r["to_number"] for r in rows}) == n
    assert len(sends) == n                     # each call passed its process's send gate (slots: the store test)
    assert sum(gw.dispatcher.counts["dispatched"] for gw in gws) == n
