"""Inbound SIP media starts with our 200 OK, not with the caller's ACK (RFC 3264 §6: a caller may send RTP as soon
as it has the answer; on a busy proxy or box its ACK can come seconds later), and a 200 that is never ACKed still
ends the call."""
import socket

import pytest

from gateway.frames import HangupSource
from sipp import call_rows, free_port, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(90)]

#: SIPp's pcap/g711a.pcap: 30 ms packets, so 1.5 RTP packets make 20 ms bus frames
FRAMES_PER_PACKET = 1.5


async def _ended(gw):
    rows = await call_rows(gw)
    return rows if rows and rows[0].get("ended_at") else None


async def test_rtp_before_the_ack_reaches_the_engine(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    # RTP from the moment SIPp has the 200, the ACK 3 s later, BYE 0.5 s after that: 150 of the call's 20 ms
    # frames arrive before the ACK, at most 25 (plus however long the BYE takes to handle) after it
    res = await sipp_uac("uac_rtp_before_ack.xml", gw.carriers["sip"].port, service="15550001111",
                         duration_ms=500)
    res.assert_calls(successful=1)
    row = (await wait_for(lambda: _ended(gw)))[0]
    assert row["call_status"] == "completed", row
    rtp = row["extra"]["rtp"]
    assert rtp["received"] >= 90, rtp          # ~3.5 s of 30 ms packets
    assert rtp["unheard"] == 0, rtp            # no packet was played to nobody while the ACK was on its way
    totals = gw.calls.totals
    # the audio before the ACK went onto the call's bus (media from the ACK on would give at most ~25 frames
    # plus the BYE's handling time), and none of it was dropped waiting for the engine: the oldest frames,
    # the caller's first words, are the ones a full bus drops
    assert totals["frames_in"] >= 125, (totals, rtp)
    assert totals["dropped_in"] == 0, totals


async def test_a_200_never_acked_still_ends_the_call(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    # the 200 is re-sent, and the call given up, after 64·T1: with T1 at 50 ms that is 3.2 s, not 32
    sip.layer.t1 = sip.ua.t1 = 0.05
    res = await sipp_uac("uac_no_ack.xml", sip.port, service="15550001111", timeout_s=40)
    res.assert_calls(successful=1)      # SIPp got the gateway's BYE and answered it
    row = (await wait_for(lambda: _ended(gw), timeout=30))[0]
    assert row["call_status"] == "failed", row
    assert row["hangup_source"] == HangupSource.CARRIER.value, row
    assert "ACK" in row["hangup_reason"], row
    assert row["extra"]["rtp"]["received"] > 0, row["extra"]["rtp"]     # media ran from the 200 on


async def test_a_hangup_before_the_ack_sends_its_bye_after_the_ack(make_gateway):
    """The engine starts with the 200 OK, so it can end the call while the ACK is still on its way (here: its
    websocket is refused at once). RFC 3261 §15: the callee's BYE waits for the ACK; SIPp counts a BYE that comes
    during its 3 s pause before the ACK as unexpected, and fails the call."""
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, engine=f"ws://127.0.0.1:{free_port(socket.SOCK_STREAM)}/nobody")   # nothing listens
    res = await sipp_uac("uac_late_ack_gateway_hangs_up.xml", gw.carriers["sip"].port, service="15550001111",
                         timeout_s=40)
    res.assert_calls(successful=1)      # the BYE came after the ACK, and was answered
    row = (await wait_for(lambda: _ended(gw)))[0]
    assert row["hangup_source"] == HangupSource.AGENT.value, row
    assert row["extra"]["rtp"]["received"] > 0, row["extra"]["rtp"]     # the media ran, and was closed
    assert not gw.carriers["sip"].legs
