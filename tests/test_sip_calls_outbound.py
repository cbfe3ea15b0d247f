"""Outbound SIP calls (API dispatch) against SIPp UAS scenarios: answer + RTP, busy, decline, no answer, digest,
early media, and BYE from either side."""
import asyncio
from pathlib import Path

import pytest

from gateway.frames import HangupSource
from sipp import api, needs_sipp, sip_gateway, sip_number, sipp_uas, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(90)]

CALLEE = "+15559876543"
CREDS = ["-key", "user", "gwuser", "-key", "pass", "s3cret"]   # what the SIPp trunk accepts


async def dispatch(gw, num, to=CALLEE):
    body = {"agent_id": num["agent_id"], "from_number_id": num["id"], "to_number": to}
    return await api(gw, "POST", "/calls/dispatch", body, expect=200)


async def final_row(gw, log_id, timeout=20):
    async def ended():
        row = await gw.store.get_call(log_id)
        return row if row and row.get("ended_at") else None
    return await wait_for(ended, timeout)


async def live(gw, call_id, status="in-progress", timeout=10):
    return await wait_for(lambda: (c := gw.calls.get(call_id)) is not None and c.status == status and c, timeout)


async def test_answered_call_rtp_and_api_hangup(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_answer.xml", rtp_echo=True, timeout_s=20) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_strip_plus=True, sip_dial_prefix="9")
        d = await dispatch(gw, num)
        call = await live(gw, d["call_id"])
        leg = gw.carriers["sip"].legs[call.id]
        # SIPp echoes every RTP packet we send: they come back to our session
        await wait_for(lambda: leg.rtp.received >= 25, 5)
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert row["call_status"] == "completed"
    assert (row["hangup_source"], row["hangup_reason"]) == ("system", "api_hangup")
    assert row["extra"]["sip_request_uri"] == "sip:915559876543@127.0.0.1:%d" % uas.port
    assert row["extra"]["rtp"]["received"] >= 25


@pytest.mark.parametrize("scenario,status,reason,source", [
    ("uas_busy.xml", "busy", "486 Busy Here", "user"),
    ("uas_decline.xml", "rejected", "603 Decline", "user"),
])
async def test_final_error_outcomes(make_gateway, scenario, status, reason, source):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas(scenario, timeout_s=10) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert (row["call_status"], row["hangup_reason"], row["hangup_source"]) == (status, reason, source)
    assert row["answered_at"] is None


async def test_no_answer_cancels(make_gateway):
    gw = await sip_gateway(make_gateway)
    gw.carriers["sip"].ring_timeout = 1.5
    async with sipp_uas("uas_noanswer.xml", timeout_s=15) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)  # SIPp saw our CANCEL, answered 200 + 487 and got the ACK
    assert row["call_status"] == "no-answer"
    assert row["hangup_reason"].startswith("no answer within")


async def test_hangup_while_ringing_cancels(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_noanswer.xml", timeout_s=15) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d = await dispatch(gw, num)
        await live(gw, d["call_id"], status="ringing")
        await api(gw, "POST", f"/calls/{d['call_id']}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert row["hangup_source"] == "system" and row["call_status"] == "canceled"


async def test_digest_auth_on_401(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_digest.xml", timeout_s=20, extra=CREDS) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_username="gwuser", sip_password="s3cret")
        d = await dispatch(gw, num)
        call = await live(gw, d["call_id"])
        await asyncio.sleep(0.3)
        await call.request_hangup(HangupSource.AGENT, "goodbye", immediate=True)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert (row["call_status"], row["hangup_source"], row["hangup_reason"]) == ("completed", "agent", "goodbye")


async def test_digest_wrong_password_fails(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_digest.xml", timeout_s=10, extra=CREDS) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_username="gwuser", sip_password="wrong")
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)   # the scenario's 403 branch
    assert (row["call_status"], row["hangup_reason"], row["hangup_source"]) == ("failed", "403 Forbidden",
                                                                                "carrier")


async def test_far_end_bye_with_reason(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_answer_bye.xml", timeout_s=15, duration_ms=1000) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert (row["call_status"], row["hangup_source"]) == ("completed", "user")
    assert row["hangup_reason"] == "Q.850 16 Normal call clearing"


async def test_early_media_reaches_amd(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_early_media.xml", timeout_s=20) as uas:
        num = await sip_number(gw, sip_port=uas.port, agent_settings={"amd": {"enabled": True}})
        d = await dispatch(gw, num)
        call = await live(gw, d["call_id"])
        await call.request_hangup(HangupSource.SYSTEM, "test over", immediate=True)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    early = row["extra"]["early_media"]
    assert early["amd_fed"] is True
    assert early["packets"] >= 40, early   # ~2 s of the pcap played during 183


async def test_unreachable_trunk_fails(make_gateway):
    gw = await sip_gateway(make_gateway)
    gw.carriers["sip"].layer.t1 = 0.05       # Timer B = 64*T1 = 3.2 s
    num = await sip_number(gw, sip_port=9)   # discard port: nothing answers
    d = await dispatch(gw, num)
    row = await final_row(gw, d["requestId"], timeout=15)
    assert row["call_status"] in ("failed", "no-answer")
    assert row["hangup_reason"]


async def test_outbound_proxy_gets_the_invite(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_answer.xml", timeout_s=15, extra=["-trace_msg", "-message_file", "msgs.log"],
                        workdir=None) as uas:
        num = await sip_number(gw, sip_host="trunk.example.com", outbound_proxy=f"127.0.0.1:{uas.port}")
        d = await dispatch(gw, num)
        call = await live(gw, d["call_id"])
        await call.request_hangup(HangupSource.SYSTEM, "done", immediate=True)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert row["extra"]["sip_request_uri"] == "sip:+15559876543@trunk.example.com"
    log = Path(f"{uas.result.result.workdir}/msgs.log").read_text()
    invite = log[log.index("INVITE sip:"):]
    assert invite.startswith("INVITE sip:+15559876543@trunk.example.com SIP/2.0")
    assert f"Route: <sip:127.0.0.1:{uas.port};lr>" in invite.split("\n\n", 1)[0]


def test_reason_headers_and_outcomes():
    from carriers.sip import outcome_for
    from gateway.sip.ua import parse_reason, reason_header

    assert reason_header(486, "Busy Here") == 'SIP;cause=486;text="Busy Here"'
    assert reason_header(q850=16, text="bye") == 'Q.850;cause=16;text="bye"'
    assert parse_reason('SIP;cause=200;text="Call completed"') == "200 Call completed"
    assert parse_reason('Q.850;cause=16;text="Normal call clearing"') == "Q.850 16 Normal call clearing"
    assert parse_reason(None) == ""
    assert [outcome_for(s) for s in (486, 600, 480, 408, 603, 404, 500, 503)] == [
        "busy", "busy", "no-answer", "no-answer", "rejected", "failed", "failed", "failed"]


async def test_outbound_call_over_tcp(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_answer_bye.xml", timeout_s=15, duration_ms=500, extra=["-t", "t1"]) as uas:
        num = await sip_number(gw, sip_port=uas.port, transport="tcp")
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert (row["call_status"], row["hangup_source"]) == ("completed", "user")
    assert row["extra"]["sip_request_uri"].endswith(";transport=tcp")
