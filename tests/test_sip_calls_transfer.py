"""Blind transfer: REFER with NOTIFY sipfrag, and the gateway-side bridge when the trunk refuses REFER; the
agent's transfer_message spoken over RTP before the REFER."""
import logging

import numpy as np
import pytest

from gateway import speech
from rtp_capture import LoopbackRtpCapture, can_capture
from sipp import api, needs_sipp, sip_gateway, sip_number, sipp_uas, wait_for
from voicecodecs.g711 import ulaw_to_pcm16

pytestmark = [needs_sipp, pytest.mark.timeout(90)]

TARGET = "+15551112222"


async def answered_call(gw, num):
    d = await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                   "to_number": "+15559876543"}, expect=200)
    call = await wait_for(lambda: (c := gw.calls.get(d["call_id"])) is not None and c.status == "in-progress" and c)
    return d, call


async def final_row(gw, log_id, timeout=20):
    async def ended():
        row = await gw.store.get_call(log_id)
        return row if row and row.get("ended_at") else None
    return await wait_for(ended, timeout)


async def test_refer_followed_by_notify(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_refer_target.xml", timeout_s=20) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_strip_plus=True, sip_dial_prefix="9")
        d, call = await answered_call(gw, num)
        await api(gw, "POST", f"/calls/{call.id}/transfer", {"number": TARGET}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)   # REFER → 202, NOTIFY 100 + 200 answered, then our BYE
    assert row["is_call_transfer"] is True
    assert (row["transfer_target"], row["transfer_outcome"]) == (TARGET, "completed")
    assert row["extra"]["refer_to"] == f"sip:915551112222@127.0.0.1:{uas.port}"   # same formatting as dialling
    assert row["hangup_source"] == "system" and row["hangup_reason"] == f"transferred to {TARGET}"
    events = [e["kind"] for e in await gw.store.list_call_events(d["requestId"])]
    assert "call:transfer_result" in events


def envelope(pcm: bytes) -> np.ndarray:
    """RMS per 20 ms at 8 kHz: the shape of an utterance, whatever resampling it went through."""
    x = np.frombuffer(pcm[:len(pcm) // 320 * 320], "<i2").astype(np.float64).reshape(-1, 160)
    return np.sqrt((x ** 2).mean(axis=1))


@pytest.mark.skipif(speech.synthesizer() is None, reason="espeak-ng or flite not installed")
async def test_transfer_message_is_spoken_over_rtp_before_the_refer(make_gateway):
    """Issue 14: with the echo engine (which cannot speak text) a text transfer_message used to be dropped on SIP.
    Now the gateway speaks it: the RTP SIPp receives before the REFER carries the synthesized message."""
    if not can_capture():
        pytest.skip("capturing loopback RTP needs root (AF_PACKET)")
    message = "Please hold while I connect you to a colleague."
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_refer_target.xml", timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port, agent_settings={
            "transfer": {"number": TARGET, "transfer_message": message}})
        with LoopbackRtpCapture({uas.media_port}, sip_ports={uas.port}) as cap:
            d, call = await answered_call(gw, num)
            await api(gw, "POST", f"/calls/{call.id}/transfer", {}, expect=200)
            row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=1)
    assert (row["transfer_target"], row["transfer_outcome"]) == (TARGET, "completed")
    refer = [r.at for r in cap.requests if r.method == "REFER"]
    assert len(refer) == 1, cap.requests
    heard = [p for p in sorted(cap.packets, key=lambda p: p.seq) if p.dst_port == uas.media_port]
    before = b"".join(ulaw_to_pcm16(p.payload) for p in heard if p.at < refer[0])
    after = b"".join(ulaw_to_pcm16(p.payload) for p in heard if p.at >= refer[0])
    got, want = envelope(before), envelope(await speech.synthesize(message, 8000))
    loud, loud_want = np.flatnonzero(got > 300), np.flatnonzero(want > 300)
    assert loud.size, "no speech on the wire before the REFER"
    span, span_want = loud[-1] - loud[0] + 1, loud_want[-1] - loud_want[0] + 1
    assert abs(span - span_want) <= 3, (span, span_want)      # all of it (±60 ms), 20 ms per frame
    n = min(span, span_want)
    similarity = np.corrcoef(got[loud[0]:loud[0] + n], want[loud_want[0]:loud_want[0] + n])[0, 1]
    assert similarity > 0.9, similarity                      # the message itself, not other audio
    assert not (envelope(after) > 300).any()                 # and nothing of it after the REFER


async def test_refer_refused_then_bridged(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_refer_reject.xml", calls=2, timeout_s=25, rtp_echo=True) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        await api(gw, "POST", f"/calls/{call.id}/transfer", {"number": TARGET}, expect=200)
        await wait_for(lambda: call.transfer_result is not None, 15)
        assert (call.transfer_result.target, call.transfer_result.outcome) == (TARGET, "completed")
        leg = gw.carriers["sip"].legs[call.id]
        bridge = leg.bridge
        assert bridge is not None
        # SIPp echoes each leg's RTP: audio crosses the bridge both ways
        await wait_for(lambda: bridge.stats["a_to_b"] >= 20 and bridge.stats["b_to_a"] >= 20, 5)
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)   # caller leg and bridged leg both got their BYE
    assert row["extra"]["transfer_method"] == "bridge"
    assert row["extra"]["rtp"]["bridge"]["a_to_b"] >= 20
    assert row["transfer_outcome"] == "completed"


class FakeSession:
    def __init__(self, refer_result):
        self.refer_result = refer_result
        self.refers = []
        self.byes = []

        class _Ended:
            @staticmethod
            def is_set():
                return False
        self.ended = _Ended()

    async def refer(self, uri, timeout):
        self.refers.append(uri)
        return self.refer_result

    async def bye(self, reason=None):
        self.byes.append(reason)


class FakeCall:
    def __init__(self):
        self.results = []
        self.id = "c1"
        self.log = logging.getLogger("test")

        class _Ended:
            @staticmethod
            def is_set():
                return False
        self.ended = _Ended()

    async def record(self, **kw):
        pass

    async def transfer_finished(self, result):
        self.results.append((result.target, result.outcome))


@pytest.mark.parametrize("refer_result,bridge_outcomes,tried,final", [
    # trunk refuses REFER: every number is tried through the gateway bridge, in order, until one answers
    ((603, "Decline"), {"+15551112222": "busy", "+15553334444": "no-answer", "+15555556666": "completed"},
     ["+15551112222", "+15553334444", "+15555556666"], ("+15555556666", "completed")),
    # REFER accepted but the target was busy (NOTIFY 486): the backups are bridged
    ((486, "Busy Here"), {"+15553334444": "completed"}, ["+15553334444"], ("+15553334444", "completed")),
    # everything fails: the last outcome is reported and the caller stays with the agent
    ((405, "Method Not Allowed"), {}, ["+15551112222", "+15553334444", "+15555556666"],
     ("+15555556666", "failed")),
])
async def test_transfer_order_refer_then_backups(refer_result, bridge_outcomes, tried, final):
    from carriers.sip import SipCarrier, SipLeg
    from gateway.frames import TransferRequest

    carrier = SipCarrier.__new__(SipCarrier)
    carrier.transfer_ring_timeout = 1
    calls = []

    async def bridge_to(leg, target, number):
        calls.append(number)
        return bridge_outcomes.get(number, "failed")

    carrier._bridge_to = bridge_to
    leg = SipLeg.__new__(SipLeg)
    leg.call, leg.session = FakeCall(), FakeSession(refer_result)
    leg.number = {"config": {"sip_host": "trunk.example.com", "sip_strip_plus": True}, "secrets": {},
                  "phone_number": "+15550001111"}
    await carrier.transfer(leg, TransferRequest("+15551112222", ["+15553334444", "+15555556666"]))
    assert leg.session.refers == ["sip:15551112222@trunk.example.com"]
    assert calls == tried
    assert leg.call.results == [final]
