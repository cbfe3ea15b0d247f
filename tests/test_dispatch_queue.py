"""Channels per number, outbound pace and the dispatch queue, on real sockets: the gateway calls SIPp (UAS) and
SIPp calls the gateway (UAC); a real SQLite file, and a real PostgreSQL for the cluster cases
(tests/test_dispatch_queue_cluster.py)."""
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from conftest import API_KEY
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from gateway.sendgate import Gcra, SendGate
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


@pytest.fixture
def sends(monkeypatch) -> list[float]:
    """The send time the number's pace (gateway/sendgate.py) gave each queued call, as computed — not as
    measured, so the check holds on a busy box: every call went through the gate, and the gate's answers keep
    the pace (its arithmetic is tested on a fake clock in tests/test_sendgate.py)."""
    got: list[float] = []
    reserve = Gcra.reserve

    def recording(self, now, at=None):
        got.append(reserve(self, now, at))
        return got[-1]
    monkeypatch.setattr(Gcra, "reserve", recording)
    return got


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
    # the refused INVITE never became a live call: its row was closed at once, saying why
    assert sorted(r["call_direction"] for r in rows) == ["inbound", "outbound", "outbound"]
    [refused] = [r for r in rows if r["call_direction"] == "inbound"]
    assert (refused["call_status"], refused["hangup_reason"], refused["hangup_source"]) == (
        "rejected", "channel_limit", "system")


async def test_bulk_call_paced_at_max_cps_with_outcomes(make_gateway, receiver, sends):
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
    uas.result.assert_calls(successful=n)                # SIPp received each contact's INVITE once
    # nobody answered (486): each contact is done, not reached; its outcome is busy
    assert details["counts"]["failed"] == n and details["outcomes"] == {"busy": n}, details
    assert details["completed_calls"] == n and details["pending_calls"] == 0
    assert details["bot_id"] == num["agent_id"]
    _, logs, _ = await request(gw, "GET", f"/calls/logs?bulk_call_id={bulk_id}&pagesize=50")
    rows = logs["call_log_data"]
    assert len(rows) == n                               # each contact called exactly once
    assert {r["to_number"] for r in rows} == {c["phone_number"] for c in contacts}
    assert all(r["call_status"] == "busy" for r in rows)   # the outcome of each call (the far end said 486)
    assert {r["call_context"]["customer_name"] for r in rows} == {c["customer_name"] for c in contacts}
    assert {(r["bulk_call_id"], r["attempt"]) for r in rows} == {(bulk_id, 1)}
    # every call passed the number's send gate, whose answers never put two calls closer than 1/cps (burst 1)
    assert len(sends) == n and SendGate(cps).burst == 1
    assert all(b - a >= 1 / cps - 1e-9 for a, b in zip(sends, sends[1:], strict=False)), sends
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
    assert details["counts"]["failed"] == 3        # two busy; the one placed before the crash closed as failed
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
    rows, _ = await env.gw.store.list_calls(1, 10)
    assert [(r["call_status"], r["hangup_reason"]) for r in rows if r["call_status"] == "rejected"] == [
        ("rejected", "channel_limit")]
    await env.gw.calls.get(first).end("user", "done")
    _, _, twiml = await env.inbound()                   # the channel is free again
    assert "<Connect>" in twiml


async def test_scheduled_bulk_call_retries_busy_contacts_until_its_attempts_run_out(make_gateway):
    """A bulk call scheduled a moment ahead, retrying busy calls: nothing is placed before its start; then each
    contact is called three times (SIPp answers every INVITE 486), each attempt its own call-log row with the
    bulk call and the attempt number; the contacts end `failed` with outcome busy."""
    gw = await sip_gateway(make_gateway)
    contacts = [{"phone_number": "+15559876500", "name": "a"}, {"phone_number": "+15559876501", "name": "b"}]
    async with sipp_uas("uas_busy.xml", calls=6, timeout_s=40) as uas:
        num = await sip_number(gw, sip_port=uas.port, max_cps=20)
        start = datetime.now(UTC) + timedelta(seconds=1.5)
        status, created, _ = await request(gw, "POST", "/calls/bulk_call/create", {
            "name": "retry busy", "phone_number_id": num["id"], "contact_list": contacts,
            "scheduled_at": start.isoformat(), "retry": {"max_attempts": 3, "delay_seconds": 0.2, "on": ["busy"]}})
        assert status == 201 and created["current_status"] == "scheduled" and created["is_scheduled"], created
        bulk_id = created["bulk_call_id"]
        _, got, _ = await request(gw, "GET", f"/calls/bulk_call/{bulk_id}")
        details = got["details"]
        assert details["counts"]["queued"] == 2 and details["retry"] == {
            "max_attempts": 3, "delay_seconds": 0.2, "on": ["busy"]}, details
        # the list says scheduled while the start is ahead (unless this box took 1.5 s to get here)
        assert details["status"] == "scheduled" or datetime.now(UTC) >= start, details

        async def done():
            _, got, _ = await request(gw, "GET", f"/calls/bulk_call/{bulk_id}")
            return got["details"] if got["details"]["status"] == "completed" else None
        details = await wait_for(done, 30, what="both contacts called three times")
    uas.result.assert_calls(successful=6)               # 2 contacts × 3 attempts reached SIPp, no more
    assert details["counts"] == {"queued": 0, "dialing": 0, "retrying": 0, "completed": 0, "failed": 2,
                                 "cancelled": 0}, details
    assert details["outcomes"] == {"busy": 2} and details["call_status_counts"] == {"busy": 2}
    _, logs, _ = await request(gw, "GET", f"/calls/logs?bulk_call_id={bulk_id}&pagesize=50")
    rows = logs["call_log_data"]
    assert sorted((r["to_number"], r["attempt"]) for r in rows) == sorted(
        (c["phone_number"], k) for c in contacts for k in (1, 2, 3))
    assert all(r["bulk_call_id"] == bulk_id and r["call_status"] == "busy" for r in rows)
    assert {r["call_context"]["name"] for r in rows} == {"a", "b"}
    # none started before the bulk call's start (later is fine: a busy box only delays them)
    assert min(datetime.fromisoformat(r["created_at"]) for r in rows) >= start - timedelta(milliseconds=5)
    _, items, _ = await request(gw, "GET", f"/calls/queue?bulk_call_id={bulk_id}")
    assert {(q["status"], q["attempts"], q["outcome"]) for q in items["queue"]} == {("failed", 3, "busy")}
    # the CLI shows the progress: a table, and the same counts as JSON
    outs = []
    for extra in ((), ("--json",)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "bulk", "list", "--url", gw.url(), "--api-key", API_KEY, *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        outs.append(out.decode())
    assert "┃ retrying ┃" in outs[0] and "│ completed │ 2 " in outs[0], outs[0]     # a column; the row
    assert json.loads(outs[1])["bulk_calls"][0]["counts"] == details["counts"]


async def test_omnidimension_schedule_and_retry_config_and_reschedule(make_gateway):
    """OmniDimension's spelling: is_scheduled + scheduled_datetime in a time zone, retry_config, reschedule with
    new_scheduled_datetime; what is not supported is refused naming the field."""
    gw = await sip_gateway(make_gateway)
    num = await sip_number(gw, sip_port=9)          # nothing listens: nothing may be dialled (it is all ahead)
    later = datetime.now(UTC) + timedelta(days=2)
    local = later.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M:%S")
    body = {"name": "omni", "phone_number_id": num["id"], "contact_list": [{"phone_number": "+15559876500"}],
            "is_scheduled": True, "scheduled_datetime": local, "timezone": "Asia/Kolkata",
            "retry_config": {"auto_retry": True, "auto_retry_schedule": "scheduled_time", "retry_schedule_days": 1,
                             "retry_schedule_hours": 2, "retry_limit": 2}}
    status, created, _ = await request(gw, "POST", "/calls/bulk_call/create", body)
    assert status == 201 and created["current_status"] == "scheduled", created
    bulk_id = created["id"]
    _, got, _ = await request(gw, "GET", f"/calls/bulk_call/{bulk_id}")
    d = got["details"]
    assert d["status"] == "scheduled" and d["scheduled_datetime"] == local and d["timezone"] == "Asia/Kolkata"
    assert abs(datetime.fromisoformat(d["scheduled_at"]) - later) < timedelta(seconds=1)
    assert d["retry"] == {"max_attempts": 3, "delay_seconds": 93600.0, "on": ["no-answer", "busy", "failed"]}
    assert d["auto_retry"] is True and d["retry_limit"] == 2 and d["pending_calls"] == 1
    status, acted, _ = await request(gw, "PUT", f"/calls/bulk_call/{bulk_id}", {
        "action": "reschedule", "new_scheduled_datetime": "2099-01-02 03:04:05", "new_timezone": "UTC"})
    assert status == 200 and acted["current_status"] == "scheduled", acted
    assert acted["scheduled_datetime"] == "2099-01-02 03:04:05" and acted["timezone"] == "UTC"
    _, item, _ = await request(gw, "GET", f"/calls/queue/{created['queue_ids'][0]}")
    assert item["queued_call"]["not_before"] == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    for bad_body, field in (
            ({**body, "scheduled_datetime": "tomorrow"}, "scheduled_datetime"),
            ({**body, "timezone": "Mars/Olympus"}, "timezone"),
            ({**body, "is_scheduled": False, "scheduled_at": "2001-01-01T00:00:00Z"}, "scheduled_at"),
            ({**body, "scheduled_datetime": None}, "scheduled_datetime"),
            ({**body, "concurrent_call_limit": 3}, "concurrent_call_limit"),
            ({**body, "retry": {"max_attempts": 2}}, "retry"),
            ({**body, "retry_config": {"auto_retry": True, "retry_limit": 9}}, "retry_config.retry_limit")):
        status, err, _ = await request(gw, "POST", "/calls/bulk_call/create", bad_body)
        assert status == 400 and err["field"] == field, (field, err)
    status, err, _ = await request(gw, "PUT", f"/calls/bulk_call/{bulk_id}", {"action": "reschedule"})
    assert status == 400 and err["field"] == "scheduled_at", err
    rows, _ = await gw.store.list_calls(1, 10)
    assert rows == []                                   # nothing was dialled
