"""Channels per number, outbound pace and the dispatch queue, on real sockets: the gateway calls SIPp (UAS) and
SIPp calls the gateway (UAC); a real SQLite file, and a real PostgreSQL for the cluster cases
(tests/test_dispatch_queue_cluster.py)."""
import asyncio
import sys
from datetime import datetime

import aiohttp
import pytest

from conftest import API_KEY
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from sipp import api, metric_value, metrics_text, needs_sipp, sip_gateway, sip_number, sipp_uac, sipp_uas, wait_for
from test_webhooks import receiver  # noqa: F401  (fixture)

pytestmark = [needs_sipp, pytest.mark.timeout(120)]

CALLEE = "+15559876543"


async def request(gw, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON, headers) of one API request."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.request(method, gw.url("/api/v1" + path), json=body) as r:
            return r.status, await r.json(), dict(r.headers)


async def dispatch(gw, num, to=CALLEE, **extra) -> tuple[int, dict, dict]:
    return await request(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                         "to_number": to, **extra})


def pace_ok(times: list[float], cps: float, slack: float = 0.25) -> bool:
    """No window of the start times holds more calls than `cps` allows (one slot every 1/cps s). The times are
    when each call's row was written, a few awaits after its slot: `slack` absorbs that jitter on a busy box
    (calls placed with no pacing at all would still fail it many times over)."""
    times = sorted(times)
    return all(j - i <= cps * (times[j] - times[i] + slack) for i in range(len(times))
               for j in range(i + 1, len(times)))


def started(rows: list[dict]) -> list[float]:
    return [datetime.fromisoformat(r["created_at"]).timestamp() for r in rows]


async def test_channel_limit_refuses_sip_486_dispatch_429_and_the_queue_waits(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_answer.xml", calls=2, timeout_s=40) as uas:
        num = await sip_number(gw, sip_port=uas.port, channels=1)
        assert num["config"]["channels"] == 1
        status, first, _ = await dispatch(gw, num)
        assert status == 200, first
        await wait_for(lambda: (c := gw.calls.get(first["call_id"])) is not None and c.status == "in-progress",
                       10, what="the first call answered")
        # the one channel is taken: an inbound INVITE is refused busy, a direct dispatch is a 429
        busy = await sipp_uac("uac_channels_busy.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=10)
        busy.assert_calls(successful=1)
        status, body, headers = await dispatch(gw, num)
        assert status == 429 and body["field"] == "from_number_id" and "channels" in body["error"], body
        assert int(headers["Retry-After"]) >= 1
        # queued instead: it waits for the channel
        status, queued, _ = await dispatch(gw, num, call_context={"order": 7}, queue=True,
                                           recording={"enabled": False})
        assert status == 202 and queued["status"] == "queued", queued
        qid = queued["queue_id"]
        await asyncio.sleep(0.5)            # a few dispatcher turns: still no free channel
        _, item, _ = await request(gw, "GET", f"/calls/queue/{qid}")
        assert item["queued_call"]["status"] == "queued"
        await request(gw, "POST", f"/calls/{first['call_id']}/hangup")

        async def placed():
            _, got, _ = await request(gw, "GET", f"/calls/queue/{qid}")
            return got["queued_call"] if got["queued_call"]["status"] == "dispatched" else None
        item = await wait_for(placed, 15, what="the queued call placed once the channel was free")
        row = await gw.store.get_call(item["call_log_id"])
        assert row["call_context"] == {"order": 7} and row["queue_item_id"] == qid
        assert row["recording"]["request"] == {"enabled": False}       # the dispatch's options ride along
        live = await wait_for(lambda: gw.calls.get_by_log_id(item["call_log_id"]), 10, what="the queued call live")
        await wait_for(lambda: live.status == "in-progress", 10, what="the queued call answered")
        await request(gw, "POST", f"/calls/{live.id}/hangup")
    uas.result.assert_calls(successful=2)
    rows, _ = await gw.store.list_calls(1, 10)
    # the refused INVITE never became a call: two outbound calls only
    assert sorted(r["call_direction"] for r in rows) == ["outbound", "outbound"]


async def test_bulk_call_paced_at_max_cps_with_outcomes(make_gateway, receiver):
    gw = await sip_gateway(make_gateway, allow_private_webhooks=True)   # the webhook receiver is on 127.0.0.1
    cps, n = 5.0, 8
    async with sipp_uas("uas_busy.xml", calls=n, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port, max_cps=cps)
        await api(gw, "PATCH", f"/agents/{num['agent_id']}", {"webhook_url": receiver.url("ok")}, expect=200)
        contacts = [{"phone_number": f"+1555987650{i}", "customer_name": f"c{i}"} for i in range(n)]
        status, created, _ = await request(gw, "POST", "/calls/bulk_call/create", {
            "name": "follow-up", "phone_number_id": num["id"], "contact_list": contacts})
        assert status == 201 and created["total_contacts"] == n, created
        bulk_id = created["bulk_call_id"]

        async def done():
            _, got, _ = await request(gw, "GET", f"/calls/bulk_call/{bulk_id}")
            return got["details"] if got["details"]["status"] == "completed" else None
        details = await wait_for(done, 20, what="every call of the bulk call placed")
    uas.result.assert_calls(successful=n)
    assert details["counts"]["dispatched"] == n and details["bot_id"] == num["agent_id"]
    _, logs, _ = await request(gw, "GET", f"/calls/logs?bulk_call_id={bulk_id}&pagesize=50")
    rows = logs["call_log_data"]
    assert len(rows) == n                               # each contact called exactly once
    assert {r["to_number"] for r in rows} == {c["phone_number"] for c in contacts}
    assert all(r["call_status"] == "busy" for r in rows)   # the outcome of each call (the far end said 486)
    assert {r["call_context"]["customer_name"] for r in rows} == {c["customer_name"] for c in contacts}
    times = started(rows)
    assert pace_ok(times, cps), sorted(t - min(times) for t in times)
    assert max(times) - min(times) >= (n - 1) / cps - 0.25
    # direct dispatches share the pace: two back to back cannot both have a slot
    codes = [(await dispatch(gw, num))[0] for _ in range(2)]
    assert 429 in codes, codes
    text = await metrics_text(gw)
    assert metric_value(text, "gateway_queue_placed_total", outcome="dispatched") == n, text[-2000:]
    # each call's outcome also went to the agent's webhook: post_call with the call log and its bulk call
    for r in rows:
        await asyncio.wait_for(receiver.done(r["call_uuid"]).wait(), 15)
    outcomes = [b["data"]["call_log"] for b in (r["body"] for r in receiver.requests) if b["event"] == "post_call"]
    assert sorted(o["to_number"] for o in outcomes) == sorted(c["phone_number"] for c in contacts)
    assert {(o["call_status"], o["call_context"]["bulk_call_id"]) for o in outcomes} == {("busy", bulk_id)}


async def test_queue_list_cancel_pause_and_cli(make_gateway, tmp_path):
    gw = await sip_gateway(make_gateway)
    num = await sip_number(gw, sip_port=9, channels=1)   # nothing listens: the calls must never be placed
    # its one channel is busy with a call, so nothing queued can start while the test looks at the queue
    blocker = await gw.calls.create(carrier="sip", direction="inbound", from_number="+15550000001",
                                    to_number=num["phone_number"], number=await gw.store.get_number(num["id"]))
    status, created, _ = await request(gw, "POST", "/calls/bulk_call/create", {
        "name": "paused one", "phone_number_id": num["id"], "contact_list": [{"phone_number": "+15559876500"},
                                                                            {"phone_number": "+15559876501"}]})
    bulk_id = created["bulk_call_id"]
    status, body, _ = await request(gw, "PUT", f"/calls/bulk_call/{bulk_id}", {"action": "pause"})
    assert status == 200 and body["current_status"] == "paused"
    # a second pause is a conflict naming the state
    status, body, _ = await request(gw, "PUT", f"/calls/bulk_call/{bulk_id}", {"action": "pause"})
    assert status == 409 and "paused" in body["error"]
    status, body, _ = await request(gw, "PUT", f"/calls/bulk_call/{bulk_id}", {"action": "explode"})
    assert status == 400 and body["field"] == "action"
    _, listed, _ = await request(gw, "GET", f"/calls/queue?bulk_call_id={bulk_id}&status=queued")
    assert listed["total"] == 2
    first, second = (r["id"] for r in listed["queue"])
    # the CLI cancels one queued call, the API cancels the whole bulk call
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "calls", "queue", "cancel", str(first), "--url", gw.url(),
        "--api-key", API_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (await gw.store.get_item(first))["status"] == "cancelled"
    status, body, _ = await request(gw, "DELETE", f"/calls/queue/{first}")
    assert status == 409 and "cancelled" in body["error"]
    status, body, _ = await request(gw, "DELETE", f"/calls/bulk_call/{bulk_id}")
    assert status == 200 and body["current_status"] == "cancelled"
    assert (await gw.store.get_item(second))["status"] == "cancelled"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "calls", "queue", "list", "--url", gw.url(), "--api-key", API_KEY, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b'"cancelled"' in out
    rows, total = await gw.store.list_calls(1, 10)
    assert [r["id"] for r in rows] == [blocker.log_id]      # nothing queued was ever placed
    status, body, _ = await request(gw, "POST", "/calls/bulk_call/create", {
        "name": "bad", "phone_number_id": num["id"], "contact_list": [{"phone_number": "4155550100"}]})
    assert status == 400 and body["field"] == "contact_list[0].phone_number", body


async def test_queued_calls_survive_a_restart(make_gateway, tmp_path):
    """Calls queued by a run that stopped (one claimed but not placed, one placed just before the crash) are
    placed by the next start exactly once each."""
    from sqlalchemy import insert, update

    from gateway.store.models import CallLog, QueuedCall
    data = str(tmp_path / "data")
    gw = await sip_gateway(make_gateway, data_dir=data)
    await gw.dispatcher.stop()                  # this run queues but dies before placing anything
    async with sipp_uas("uas_busy.xml", calls=2, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        status, created, _ = await request(gw, "POST", "/calls/bulk_call/create", {
            "name": "after restart", "phone_number_id": num["id"],
            "contact_list": [{"phone_number": f"+1555987650{i}"} for i in range(3)]})
        bulk_id = created["bulk_call_id"]
        claimed, placed, waiting = created["queue_ids"]
        async with gw.store.engine.begin() as conn:
            await conn.execute(update(QueuedCall).where(QueuedCall.id.in_([claimed, placed])).values(
                status="dispatching", owner=gw.settings.proc_id))
            await conn.execute(insert(CallLog).values(
                call_uuid="placed-before-the-crash", channel_type="sip", call_direction="outbound",
                call_status="busy", phone_number_id=num["id"], queue_item_id=placed, call_context={},
                extra={}, to_number="+15559876501", owner=gw.settings.proc_id))
        await gw.stop()
        gw2 = await sip_gateway(make_gateway, data_dir=data)

        async def done():
            _, got, _ = await request(gw2, "GET", f"/calls/bulk_call/{bulk_id}")
            return got["details"]["status"] == "completed" and got["details"]
        details = await wait_for(done, 20, what="the bulk call completed after the restart")
    uas.result.assert_calls(successful=2)          # the claimed and the waiting call; not the placed one again
    assert details["counts"]["dispatched"] == 3
    rows, _ = await gw2.store.list_calls(1, 10)
    assert sorted(r["queue_item_id"] for r in rows) == sorted([claimed, placed, waiting])


async def test_twilio_number_over_its_channels_is_rejected_busy(twilio_env):
    """The same limit on a Twilio number: the voice webhook over it answers `<Reject reason="busy"/>` and the
    call never opens."""
    env = await twilio_env()
    await api(env.gw, "PATCH", f"/phone_number/{env.number['id']}", {"channels": 1}, expect=200)
    first, _, twiml = await env.inbound()
    assert "<Connect>" in twiml
    _, _, twiml = await env.inbound()
    assert '<Reject reason="busy" />' in twiml, twiml
    assert list(env.gw.calls.active) == [first]
    await env.gw.calls.get(first).end("user", "done")
    _, _, twiml = await env.inbound()                   # the channel is free again
    assert "<Connect>" in twiml
