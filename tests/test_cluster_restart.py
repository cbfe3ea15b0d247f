"""One process on SQLite, killed with SIGKILL mid-call and started again: the call it held is closed in the call
log (`gateway_restart`) and its closing webhooks are sent, so no call stays `in-progress` forever."""
from __future__ import annotations

import aiohttp
import pytest_asyncio

from cluster_env import call_row, in_progress_on, live_calls, start_gateway, twilio_world, wait_until
from sipp import metric_value
from test_webhooks import Receiver


@pytest_asyncio.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.runner.cleanup()


async def test_kill9_then_restart_closes_the_call_it_held(tmp_path, receiver):
    db = str(tmp_path / "gw.db")
    world = await twilio_world(db, receiver.url("ok"))
    gw = start_gateway(tmp_path, "solo", db, env=world.env)
    client = None
    try:
        await gw.wait_healthy()
        call_id, call_sid = await world.inbound(gw)
        client = await world.stream(gw, call_id, call_sid)
        await wait_until(lambda: in_progress_on(gw, call_id, "solo"), 10, "the call to be in progress")
        gw.kill9()
        await client.__aexit__()
        client = None
        receiver.requests.clear()

        gw = start_gateway(tmp_path, "solo", db, env=world.env, port=gw.port)
        await gw.wait_healthy()
        row = await call_row(gw, call_id)   # closed before the gateway answered anything
        assert row["ended_at"] is not None
        assert (row["call_status"], row["hangup_source"], row["hangup_reason"]) == \
            ("completed", "system", "gateway_restart")
        assert row["call_duration_in_seconds"] >= 0
        assert await live_calls(gw) == []
        async with aiohttp.ClientSession() as s, s.get(gw.url("/metrics")) as r:
            assert metric_value(await r.text(), "gateway_orphan_calls_closed_total") == 1
        await wait_until(receiver.done(call_id).is_set, 10, "the post_call webhook")
        # what the killed process had not delivered yet (its outbox) may come too, before the closing webhooks
        events = sorted(receiver.events(call_id), key=lambda e: e["sequence"])[-3:]
        assert [e["event"] for e in events] == ["conversation:ended", "hang_up", "post_call"]
        assert events[1]["data"] == {"source": "system", "reason": "gateway_restart"}
        assert events[2]["data"]["call_log"]["hangup_reason"] == "gateway_restart"
        assert events[0]["sequence"] > 3          # goes on after what the dead process had sent
    finally:
        if client is not None:
            await client.__aexit__()
        await gw.stop()
        await world.rest.stop()

