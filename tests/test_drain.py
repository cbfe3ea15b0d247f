"""Graceful drain in one process (docs/deploy.md): new calls refused every carrier's way, SIP OPTIONS and /healthz
503, live calls go on until they end or the drain timeout hangs them up with reason `shutdown`.

The same behaviour through a real `gateway serve` process and SIGTERM is in test_workers_drain.py.
"""
from __future__ import annotations

import asyncio

import aiohttp

from fakes.twilio_env import CALLER, NUMBER, twilio_env  # noqa: F401  (fixture)
from sipp import api, call_rows, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for


async def _healthz(gw) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(gw.url("/healthz")) as r:
        return r.status, await r.json()


async def _answered_call(gw):
    return next((c for c in gw.calls.active.values() if c.answered), None)


@needs_sipp
async def test_drain_refuses_new_sip_calls_and_lets_the_live_one_finish(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    port = gw.carriers["sip"].port
    live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", port, service="15550001111", duration_ms=3000,
                                        timeout_s=20))
    await wait_for(lambda: _answered_call(gw), timeout=10)
    assert (await _healthz(gw))[0] == 200

    gw.begin_drain(timeout=60)
    status, body = await _healthz(gw)
    assert status == 503 and body["status"] == "draining"
    (await sipp_uac("uac_capacity.xml", port, service="15550001111", timeout_s=10)).assert_calls(successful=1)
    (await sipp_uac("uac_options_draining.xml", port, service="ping", timeout_s=10)).assert_calls(successful=1)
    assert not gw.drained.is_set()          # the live call is still up

    (await live).assert_calls(successful=1)  # SIPp hung up on its own, after its 3 s
    await asyncio.wait_for(gw.drained.wait(), 10)
    rows = await call_rows(gw)
    assert len(rows) == 1, rows               # the refused INVITE never became a call
    assert rows[0]["call_status"] == "completed" and rows[0]["hangup_source"] == "user"


@needs_sipp
async def test_drain_timeout_hangs_up_with_reason_shutdown(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    live = asyncio.create_task(sipp_uac("uac_gateway_hangs_up.xml", gw.carriers["sip"].port,
                                        service="15550001111", timeout_s=30))
    await wait_for(lambda: _answered_call(gw), timeout=10)
    gw.begin_drain(timeout=0.5)
    await asyncio.wait_for(gw.drained.wait(), 10)
    (await live).assert_calls(successful=1)   # SIPp got the gateway's BYE and answered it
    row = (await call_rows(gw))[0]
    assert (row["call_status"], row["hangup_source"], row["hangup_reason"]) == ("completed", "system", "shutdown")


async def test_second_drain_request_hangs_up_at_once(make_gateway):
    gw = await make_gateway()
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550000001",
                                 to_number="+15550000002")
    gw.begin_drain(timeout=300)
    await asyncio.sleep(0)
    assert not gw.drained.is_set()
    gw.begin_drain()
    await asyncio.wait_for(gw.drained.wait(), 5)
    assert call.ended.is_set() and call.hangup.reason == "shutdown"


async def test_twilio_webhook_for_a_new_call_is_rejected_while_draining(twilio_env):
    env = await twilio_env()
    env.gw.begin_drain()
    status, body = await env.callback("/twilio/voice", {"CallSid": env.rest.add_call(env.account), "From": CALLER,
                                                        "To": NUMBER})
    assert status == 200 and "<Reject" in body
    assert (await env.gw.store.list_calls())[1] == 0 and not env.gw.calls.active


async def test_outbound_dispatch_refused_while_draining(make_gateway):
    gw = await make_gateway(carriers=None)
    num = await sip_number(gw)
    gw.begin_drain()
    data = await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "to_number": "+15550002222",
                                                     "from_number_id": num["id"]}, expect=503)
    assert "draining" in data["error"]


async def test_drain_api(make_gateway):
    gw = await make_gateway()
    data = await api(gw, "POST", "/nodes/elsewhere.3/drain", {}, expect=404)
    assert data["field"] == "proc"
    data = await api(gw, "POST", f"/nodes/{gw.settings.proc_id}/drain", {"timeout": -1}, expect=400)
    assert data["field"] == "timeout"
    assert not gw.draining
    data = await api(gw, "POST", f"/nodes/{gw.settings.proc_id}/drain", {"timeout": 0}, expect=202)
    assert data["state"] == "draining" and gw.draining
    await asyncio.wait_for(gw.drained.wait(), 5)

    async def state() -> str:
        rows = await gw.store.list_nodes(gw.settings.stale_after)
        return next(n["state"] for n in rows if n["proc"] == gw.settings.proc_id)
    await wait_for(lambda: _is(state(), "draining"), timeout=5)   # what other processes and GET /nodes see


async def _is(value, expected) -> bool:
    return (await value) == expected
