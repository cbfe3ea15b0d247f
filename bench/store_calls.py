"""The call log's cost per call on PostgreSQL: what one worker's store does for a signalling-only SIP call.

`bench/scale.py cps` shows PostgreSQL's backends at 0.2–0.5 ms of CPU per call and the store among the top of a
worker's profile, but there the store is mixed with SIP, Kamailio and SIPp on a shared box. This drives the store
alone with the writes a zero-length SIPp call makes (captured from a worker: one new row, then the
`phone_call:connection_requested`, `phone_call:accepted`, `conversation:started` events, the answer update, the
RTP statistics merged into `extra`, the end update, `conversation:ended` and `hang_up`), at a steady rate, and
measures this process's CPU per call (store and the small driver), PostgreSQL's backends' CPU per call, the
transactions per call (pg_stat_database), and how long call set-up waits for its row (the INSERT … RETURNING the
INVITE path awaits). Every call's row is checked at the end: complete, nothing lost. Each call first looks its
number and agent up as the INVITE path does (`find_number`, `get_agent`): the database reads that took per call
(`lookups per call`) and how long set-up waited for them. `--pool-busy K` keeps K of the pool's 15 connections busy
with `pg_sleep(--busy-ms)` (a starved PostgreSQL, long write batches) so lookups that reach the database queue.

    python bench/store_calls.py --db postgresql://gw:gw@127.0.0.1/gw_h8 --rate 400 --calls 4000
    python bench/store_calls.py --db … --rates 200,400,800 --repeat 3      # writes its section of BENCHMARKS.md
    python bench/store_calls.py --db … --rate 400 --seconds 12 --pool-busy 13 --no-write   # lookups, starved pool
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._cpu import CpuAccount, PgBackends  # noqa: E402
from bench._report import table, write_section  # noqa: E402
from bench.scale import reset_schema  # noqa: E402
from gateway.call import new_call_uuid  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.secretbox import SecretBox  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.store.models import utcnow  # noqa: E402

RTP = {"rtp": {"sent": 0, "received": 0, "lost": 0, "late": 0, "duplicate": 0, "overflow": 0, "foreign": 0,
               "unheard": 0, "jitter_ms": 0.0, "rtcp_sent": 1, "rtcp_received": 0,
               "quality": {"expected": 0, "lost": 0, "loss_ratio": 0.0, "jitter_ms": 0.0, "rtt_ms": None,
                           "r_factor": 92.5, "mos": 4.39, "remote": None,
                           "rtcp": {"mux": False, "sent": {"sr": 0, "rr": 1}, "received": {"sr": 0, "rr": 0}}}}}
TIMING = {"turns": 0, "agent_utterances": 0, "first_agent_audio_ms": None, "latency_p50_ms": None,
          "latency_p95_ms": None, "latency_max_ms": None, "barge_ins": 0, "clear_reaction_avg_ms": None,
          "talk_over_ms": 0, "long_silences": 0}


NUMBER = "+15550100000"


async def one_call(store: Store, waits: list[float], lookup_waits: list[float] | None = None) -> int:
    """The store traffic of one zero-length inbound SIP call, in the order a worker makes it."""
    t = time.perf_counter()
    number = await store.find_number(NUMBER, "sip", with_secrets=True)     # carriers/sip.py's INVITE path
    if number is None or await store.get_agent(number["agent_id"]) is None:
        raise RuntimeError("the bench's number or agent is missing")
    if lookup_waits is not None:
        lookup_waits.append(time.perf_counter() - t)
    t = time.perf_counter()
    row = await store.create_call({"call_uuid": new_call_uuid(), "carrier_sid": "bench-" + new_call_uuid(),
                                   "channel_type": "sip", "call_direction": "inbound", "from_number": "+15550000001",
                                   "to_number": "+15550100000", "call_status": "ringing", "owner": "bench"})
    waits.append(time.perf_counter() - t)
    cid = row["id"]
    await store.add_call_event(cid, "phone_call:connection_requested")
    await store.update_call(cid, call_status="in-progress", answered_at=utcnow())
    await store.add_call_event(cid, "phone_call:accepted")
    await store.add_call_event(cid, "conversation:started")
    await asyncio.sleep(0.005)                   # SIPp's -d 0 call: the BYE follows the ACK within milliseconds
    await store.update_call(cid, extra=RTP)
    await store.update_call(cid, call_status="completed", ended_at=utcnow(), call_duration_in_seconds=0.005,
                            hangup_source="user", hangup_reason="BYE", timing=TIMING)
    await store.add_call_event(cid, "conversation:ended", {"timing": TIMING, "turns": [], "long_silences": []})
    await store.add_call_event(cid, "hang_up", {"source": "user", "reason": "BYE"})
    return int(cid)


async def commits(store: Store) -> int:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        return int((await conn.execute(text(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))).scalar_one())


async def statements_run(store: Store) -> float:
    """Statements PostgreSQL ran for this database so far (pg_stat_statements; NaN where the extension is not
    installed: it needs `shared_preload_libraries`, so a cluster of the benchmark's own)."""
    from sqlalchemy import text

    try:
        async with store.engine.connect() as conn:
            return float((await conn.execute(text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"))).scalar_one())
    except Exception:
        return float("nan")


async def wal_lsn(store: Store) -> int:
    """The server's current WAL position in bytes (the whole cluster's: exact only on a cluster of its own)."""
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))).scalar_one())


async def table_figures(db: str, rows: int) -> dict[str, float]:
    """After the store closed (its backends flush their statistics when they exit): the call log's updates and
    how many were HOT, and the bytes per row of the table and of each of its indexes."""
    import asyncpg

    conn = await asyncpg.connect(db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        end, last = time.monotonic() + 20, None
        while time.monotonic() < end:
            got = await conn.fetchrow("SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                      "WHERE relname = 'calls'")
            if got is not None and got["n_tup_ins"] >= rows and got == last:
                break
            last = got
            await asyncio.sleep(0.3)
        assert last is not None
        sizes = await conn.fetch("SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_index i "
                                 "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'calls'::regclass")
        heap = await conn.fetchval("SELECT pg_relation_size('calls')")
    finally:
        await conn.close()
    return {"updates": last["n_tup_upd"] / rows, "hot": last["n_tup_hot_upd"] / max(1, last["n_tup_upd"]),
            "indexes": len(sizes), "heap_bytes": heap / rows,
            "index_bytes": sum(r["bytes"] for r in sizes) / rows,
            "per_index": {r["relname"]: round(r["bytes"] / rows) for r in sizes}}


def count_lookups(store: Store) -> list[int]:
    """A counter of the database reads of numbers and agents (what call set-up looks up), as a one-item list."""
    from sqlalchemy import event
    seen = [0]

    def before(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip()[:6].upper() == "SELECT" and ("phone_numbers" in statement or "agents" in statement):
            seen[0] += 1
    assert store.engine is not None
    event.listen(store.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def keep_busy(store: Store, seconds: float, stop: asyncio.Event) -> None:
    """Hold one pool connection in `pg_sleep` after `pg_sleep` until `stop`."""
    from sqlalchemy import text
    assert store.engine is not None
    while not stop.is_set():
        async with store.engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})


async def step(db: str, rate: float, calls: int, pool_busy: int = 0, busy_ms: float = 200) -> dict[str, float]:
    await reset_schema(db)
    store = Store(db, SecretBox.generate())
    await store.open()
    agent = await store.create_agent({"name": "bench", "engine": "echo"})
    await store.create_number({"phone_number": NUMBER, "provider": "sip", "agent_id": agent["id"],
                               "sip_trunk_name": "bench"}, {})
    stop = asyncio.Event()
    busy: list[asyncio.Task[None]] = []
    try:
        for _ in range(20):                      # warm the pool's connections (SCRAM) and statement caches
            await one_call(store, [])
        await store.flush()
        store._cache.clear()                     # set-up starts cold, as after a restart
        lookups = count_lookups(store)
        ran0 = await statements_run(store)
        wal0 = await wal_lsn(store)
        busy = [asyncio.create_task(keep_busy(store, busy_ms / 1000, stop)) for _ in range(pool_busy)]
        lookup_waits: list[float] = []
        pg = PgBackends(db)
        acct = CpuAccount({"store": lambda: [os.getpid()]}, {"postgres": pg})
        waits: list[float] = []
        x0 = await commits(store)
        await acct.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        tasks = []
        for i in range(calls):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_call(store, waits, lookup_waits)))
        ids = await asyncio.gather(*tasks)
        stop.set()
        await asyncio.gather(*busy)
        await store.flush()
        ran = await statements_run(store) - ran0
        used = await acct.stop()
        await pg.close()
        x1 = await commits(store)
        wal1 = await wal_lsn(store)
        _, completed = await store.list_calls(pagesize=1, call_status="completed")
    finally:
        stop.set()
        await asyncio.gather(*busy, return_exceptions=True)
        await store.close()
    figures = await table_figures(db, calls + 20)
    if completed != calls + 20 or store.write_errors or len(set(ids)) != calls:
        raise RuntimeError(f"call log incomplete: {completed} completed rows for {calls + 20} calls, "
                           f"{store.write_errors} write errors")
    w, lw = np.array(waits) * 1000, np.array(lookup_waits) * 1000
    return {"lookups": lookups[0] / calls, "lookup_p50": float(np.percentile(lw, 50)),
            "lookup_p99": float(np.percentile(lw, 99)), "lookup_max": float(lw.max()),
            "rate": rate, "calls": calls, "wall": acct.wall, "achieved": calls / acct.wall,
            "store_ms": 1000 * used["store"] / calls, "pg_ms": 1000 * used["postgres"] / calls,
            "xact": (x1 - x0 - 2) / calls, "statements": ran / calls, "wal": (wal1 - wal0) / calls,
            **figures, "wait_p50": float(np.percentile(w, 50)),
            "wait_p99": float(np.percentile(w, 99)), "load": os.getloadavg()[0]}


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for rate in args.rates:
        for _ in range(args.repeat):
            r = await step(args.db, rate, args.calls or int(rate * args.seconds), args.pool_busy, args.busy_ms)
            print(f"per call: statements {r['statements']:.2f}, WAL {r['wal']:.0f} B (whole cluster), call-log "
                  f"updates {r['updates']:.2f} of which HOT {100 * r['hot']:.0f} %, heap {r['heap_bytes']:.0f} B, "
                  f"{r['indexes']} indexes {r['index_bytes']:.0f} B {r['per_index']}", flush=True)
            print(f"lookups per call {r['lookups']:.3f}, set-up lookup wait p50 {r['lookup_p50']:.1f} ms, "
                  f"p99 {r['lookup_p99']:.1f} ms, max {r['lookup_max']:.1f} ms", flush=True)
            rows.append([f"{rate:g}", r["calls"], f"{r['achieved']:.0f}", f"{r['store_ms']:.3f}",
                         f"{r['pg_ms']:.3f}", f"{r['xact']:.2f}", f"{r['statements']:.2f}", f"{r['wal']:.0f}",
                         f"{100 * r['hot']:.0f}", f"{r['index_bytes']:.0f}", f"{r['wait_p50']:.1f}",
                         f"{r['wait_p99']:.1f}", f"{r['load']:.1f}"])
            print(rows[-1], flush=True)
    body = ("The call log's writes for one zero-length SIP call (one row, 3 updates, 5 events), driven at a steady "
            "rate through `Store` on PostgreSQL, without SIP: CPU per call of this process (the store and a small "
            "driver) and of PostgreSQL's backends, transactions committed and statements run per call, WAL written "
            "per call (the whole cluster's, so other databases' writes count too when the cluster is shared), the "
            "share of the call log's updates that were HOT, the call log's index bytes per row, and how long "
            "call set-up "
            "waited for its row's INSERT … RETURNING.\n\n"
            + table(["offered calls/s", "calls", "achieved calls/s", "store CPU ms per call",
                     "PG backends CPU ms per call", "transactions per call", "statements per call",
                     "WAL bytes per call", "call-log updates HOT %", "call-log index bytes per call", "row wait p50 ms",
                     "row wait p99 ms", "load avg"], rows))
    print(body)
    if not args.no_write:
        write_section("store_calls", "Call log on PostgreSQL: cost per call", body,
                      command=f"python bench/store_calls.py --rates {','.join(f'{r:g}' for r in args.rates)} "
                              f"--seconds {args.seconds:g} --repeat {args.repeat}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL of a database of its own (its gateway tables are dropped)")
    p.add_argument("--rates", "--rate", default=[400.0], type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--calls", type=int, default=0, help="calls per step (default: rate × seconds)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--pool-busy", type=int, default=0, help="pool connections kept busy in pg_sleep (0-15)")
    p.add_argument("--busy-ms", type=float, default=200.0, help="each pg_sleep of --pool-busy, in ms")
    args = p.parse_args()
    if not args.db or not args.db.startswith("postgres"):
        raise SystemExit("bench/store_calls.py: --db postgresql://… (or GATEWAY_TEST_POSTGRES_URL)")

    async def go() -> int:
        await main_async(args)
        return 0
    return run_async(go())


if __name__ == "__main__":
    sys.exit(main())
