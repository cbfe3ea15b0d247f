"""Inbound SIP calls from SIPp: RTP from a pcap echoed back by the echo engine, and every refusal path."""
import asyncio

import pytest

from gateway.frames import HangupSource
from sipp import call_rows, needs_sipp, rtp_range, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(90)]


async def test_inbound_pcma_call_echoes_rtp(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    res = await sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=3000)
    res.assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(gw))
    row = rows[0]
    assert row["call_direction"] == "inbound" and row["channel_type"] == "sip"
    assert row["to_number"] == "+15550001111" and row["from_number"] == "+15557654321"
    assert row["call_status"] == "completed"
    assert row["hangup_source"] == HangupSource.USER.value
    assert row["hangup_reason"] == "200 Call completed"
    rtp = row["extra"]["rtp"]
    # the pcap holds 236 packets; within the 3 s hold SIPp sends ~150 of them
    assert rtp["received"] >= 100, rtp
    # the echo engine's frames went back out as RTP (plus silence before the first echo)
    assert rtp["sent"] >= rtp["received"] * 0.8, rtp
    assert gw.calls.totals["frames_out"] >= 100


async def _ended(gw):
    rows = await call_rows(gw)
    return rows if rows and rows[0].get("ended_at") else None


@pytest.mark.parametrize("scenario,setup,status", [
    ("uac_auth_rejected.xml", {"allowed_ips": ["10.9.9.9"]}, 403),     # source not in the allow-list
    ("uac_unknown_number.xml", {"phone": "+15550009999"}, 404),        # our source, another number
    ("uac_no_agent.xml", {"agent": False}, 480),
])
async def test_inbound_refusals(make_gateway, scenario, setup, status):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, **setup)
    res = await sipp_uac(scenario, gw.carriers["sip"].port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)
    assert await call_rows(gw) == []   # refused before any call was created


async def test_hold_resume_and_session_timer(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    res = await sipp_uac("uac_hold_timer.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=15)
    res.assert_calls(successful=1)   # SIPp checked Session-Expires/Require, recvonly then sendrecv answers
    rows = await wait_for(lambda: _ended(gw))
    events = [e["kind"] for e in await gw.store.list_call_events(rows[0]["id"])]
    assert events.index("call:hold") < events.index("call:resumed")
    assert rows[0]["call_status"] == "completed"


async def test_capacity_503_with_retry_after(make_gateway):
    gw = await sip_gateway(make_gateway, max_calls=0)
    await sip_number(gw)
    res = await sipp_uac("uac_capacity.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)


async def test_rtp_ports_all_in_use_is_503_with_retry_after_and_no_call(make_gateway):
    """A process whose RTP port range is used up is full for media: 503 + Retry-After (Kamailio's failure_route
    then tries the next worker), before a call or its row exists, not a 500 from a setup that crashed."""
    gw = await sip_gateway(make_gateway, **rtp_range(span=1))       # one RTP/RTCP port pair
    await sip_number(gw)
    port = gw.carriers["sip"].port
    live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", port, service="15550001111", duration_ms=3000,
                                        timeout_s=30))
    await wait_for(lambda: next((c for c in gw.calls.active.values() if c.answered), None), 15,
                   what="the first call to hold the only port pair")
    res = await sipp_uac("uac_capacity.xml", port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)
    (await live).assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(gw))
    assert len(rows) == 1 and rows[0]["call_status"] == "completed", rows     # the refused INVITE made no row
    assert not gw.carriers["sip"].rtp.sessions                       # and no RTP session was left open


async def test_no_common_codec_488(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    res = await sipp_uac("uac_no_common_codec.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(gw))
    assert rows[0]["call_status"] == "failed" and rows[0]["hangup_reason"].startswith("488")


async def test_options_ping(make_gateway):
    gw = await sip_gateway(make_gateway)
    res = await sipp_uac("uac_options.xml", gw.carriers["sip"].port, service="anything", calls=5, timeout_s=10)
    res.assert_calls(successful=5)


async def test_unknown_source_403_even_for_unknown_number(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, allowed_ips=["192.0.2.1"])
    # the number does not exist either, but a stranger learns only "403"
    res = await sipp_uac("uac_auth_rejected.xml", gw.carriers["sip"].port, service="15550008888", timeout_s=10)
    res.assert_calls(successful=1)


async def test_inbound_digest_trunk(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, auth_type="basic", allowed_ips=[], sip_username="carrier", sip_password="in-s3cret")
    port = gw.carriers["sip"].port
    res = await sipp_uac("uac_digest.xml", port, service="15550001111", duration_ms=500,
                         extra=["-au", "carrier", "-ap", "in-s3cret"])
    res.assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(gw))
    assert rows[0]["call_status"] == "completed"
    bad = await sipp_uac("uac_digest.xml", port, service="15550001111", duration_ms=500, timeout_s=10,
                         extra=["-au", "carrier", "-ap", "guess"])
    bad.assert_calls(successful=0, failed=1)   # 403 after the wrong digest
    assert len(await call_rows(gw)) == 1       # no call was created for it


async def test_inbound_call_over_tcp(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111", duration_ms=1500,
                         extra=["-t", "t1"])
    res.assert_calls(successful=1)
    rows = await wait_for(lambda: _ended(gw))
    assert rows[0]["call_status"] == "completed" and rows[0]["extra"]["rtp"]["received"] >= 40
