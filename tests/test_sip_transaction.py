"""RFC 3261 §17 transactions: every timer's schedule on a fake clock, absorption, ACK, CANCEL; then real sockets."""
from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.sip.message import SipRequest, SipResponse, make_response, new_branch, parse_message
from gateway.sip.timers import FakeClock
from gateway.sip.transaction import (
    TransactionLayer,
    TransactionTimeout,
    TransactionTransportError,
    make_ack,
    make_cancel,
)
from gateway.sip.transport import SipTransport, TransportError

PEER = ("127.0.0.1", 5999)


class FakeTransport:
    """Records what the layer sends, with the fake clock's time; routes responses like the real transport."""

    def __init__(self, clock: FakeClock, fail: bool = False):
        self.clock = clock
        self.sent: list[tuple[float, object, tuple, str]] = []
        self.on_message = None
        self.fail = fail

    def send(self, msg, addr, protocol="udp", conn=None):
        fut = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(TransportError("connection refused"))
            return fut
        data = msg if isinstance(msg, bytes) else msg.to_bytes()
        self.sent.append((round(self.clock.now(), 3), parse_message(data), addr, protocol))
        fut.set_result(None)
        return fut

    response_destination = SipTransport.response_destination

    def count_response(self, direction, status):
        pass

    def via(self, branch, protocol="udp"):
        return f"SIP/2.0/{protocol.upper()} 127.0.0.1:5060;branch={branch};rport"

    def times(self, pred=lambda m: True):
        return [t for t, m, _, _ in self.sent if pred(m)]


class TcpConn:
    protocol = "tcp"
    is_open = True


def request(method="INVITE", proto="UDP", branch=None, cseq=1):
    branch = branch or new_branch()
    return SipRequest(method, "sip:+15551234567@127.0.0.1", [
        ("Via", f"SIP/2.0/{proto} 127.0.0.1:5999;branch={branch}"), ("Max-Forwards", "70"),
        ("From", "<sip:alice@127.0.0.1>;tag=ft"), ("To", "<sip:+15551234567@127.0.0.1>"),
        ("Call-ID", "cid-1"), ("CSeq", f"{cseq} {method}"), ("Contact", "<sip:alice@127.0.0.1:5999>")])


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def env():
    clock = FakeClock()
    tr = FakeTransport(clock)
    layer = TransactionLayer(tr, clock=clock)
    return clock, tr, layer


def resp_for(req, status, tag="tt"):
    return parse_message(make_response(req, status, to_tag=tag).to_bytes())


# --- client timers ------------------------------------------------------------------------------------------

async def test_invite_client_timer_a_doubles_and_timer_b_times_out(env):
    clock, tr, layer = env
    txn = await layer.start_request(request(), PEER)
    clock.advance(40)
    assert tr.times() == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # Timer A: T1, 2T1, 4T1… (no T2 cap)
    with pytest.raises(TransactionTimeout, match="Timer B"):
        await txn.final
    assert len(layer) == 0


async def test_invite_client_over_tcp_does_not_retransmit(env):
    clock, tr, layer = env
    txn = await layer.start_request(request(proto="TCP"), PEER, "tcp")
    clock.advance(31.9)
    assert tr.times() == [0] and not txn.final.done()
    clock.advance(0.2)
    with pytest.raises(TransactionTimeout):
        await txn.final


async def test_non_invite_timer_e_caps_at_t2_and_timer_f(env):
    clock, tr, layer = env
    txn = await layer.start_request(request("OPTIONS"), PEER)
    clock.advance(33)
    assert tr.times() == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    with pytest.raises(TransactionTimeout, match="Timer F"):
        await txn.final


async def test_non_invite_proceeding_retransmits_every_t2(env):
    clock, tr, layer = env
    req = request("BYE")
    prov = []
    txn = await layer.start_request(req, PEER, on_provisional=prov.append)
    clock.advance(0.2)
    layer.receive(resp_for(req, 100), PEER, None)
    clock.advance(10)
    assert tr.times() == [0, 0.5, 4.5, 8.5] and len(prov) == 1
    layer.receive(resp_for(req, 200), PEER, None)
    assert (await txn.final).status == 200
    clock.advance(30)
    assert tr.times() == [0, 0.5, 4.5, 8.5]  # Completed: no more retransmissions


async def test_non_invite_completed_absorbs_then_timer_k(env):
    clock, tr, layer = env
    req = request("OPTIONS")
    stray = []
    layer.on_stray_response = lambda r, a, c: stray.append(r)
    txn = await layer.start_request(req, PEER)
    ok = resp_for(req, 200)
    layer.receive(ok, PEER, None)
    layer.receive(ok, PEER, None)  # retransmitted final: absorbed by the transaction
    assert (await txn.final).status == 200 and stray == [] and layer.stats["retransmissions_absorbed"] == 1
    clock.advance(4.9)
    assert len(layer) == 1
    clock.advance(0.2)  # Timer K = T4
    assert len(layer) == 0
    layer.receive(ok, PEER, None)
    assert len(stray) == 1  # after K the layer no longer knows it


async def test_invite_non_2xx_gets_ack_and_timer_d(env):
    clock, tr, layer = env
    req = request()
    txn = await layer.start_request(req, PEER)
    layer.receive(resp_for(req, 180), PEER, None)
    clock.advance(5)
    assert tr.times() == [0]  # a provisional stops Timer A
    busy = resp_for(req, 486, tag="busy-tag")
    layer.receive(busy, PEER, None)
    assert (await txn.final).status == 486
    ack = tr.sent[-1][1]
    assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.branch == req.branch
    assert ack.to_tag == "busy-tag" and ack.uri == req.uri and ack.from_tag == "ft" and len(ack.vias) == 1
    layer.receive(busy, PEER, None)  # retransmitted 486 -> ACK again, TU not bothered
    assert [m.method for _, m, _, _ in tr.sent] == ["INVITE", "ACK", "ACK"]
    clock.advance(31.9)
    assert len(layer) == 1
    clock.advance(0.2)  # Timer D (32 s on UDP)
    assert len(layer) == 0


async def test_invite_2xx_accepted_passes_retransmissions_to_tu_then_timer_m(env):
    clock, tr, layer = env
    req = request()
    stray = []
    layer.on_stray_response = lambda r, a, c: stray.append(r.status)
    txn = await layer.start_request(req, PEER)
    ok = resp_for(req, 200)
    layer.receive(ok, PEER, None)
    assert (await txn.final).status == 200
    assert [m.method for _, m, _, _ in tr.sent] == ["INVITE"]  # the 2xx ACK is the dialog's job
    layer.receive(ok, PEER, None)
    assert stray == [200]
    clock.advance(31.9)
    assert len(layer) == 1
    clock.advance(0.2)  # Timer M = 64*T1
    assert len(layer) == 0


async def test_send_request_accepts_on_provisional_as_third_argument(env):
    clock, tr, layer = env
    req = request("OPTIONS")
    prov = []
    task = asyncio.ensure_future(layer.send_request(req, PEER, prov.append))
    await settle()
    layer.receive(resp_for(req, 183), PEER, None)
    layer.receive(resp_for(req, 200), PEER, None)
    assert (await task).status == 200 and [p.status for p in prov] == [183] and tr.sent[0][3] == "udp"


async def test_transport_error_fails_the_transaction():
    clock = FakeClock()
    layer = TransactionLayer(FakeTransport(clock, fail=True), clock=clock)
    with pytest.raises(TransactionTransportError):
        await layer.send_request(request("OPTIONS", "TCP"), PEER, "tcp")
    with pytest.raises(TransactionTransportError):
        await layer.send_request(request("INVITE"), PEER, "udp")
    assert len(layer) == 0 and clock.pending() == []  # no timers left behind for the dead transactions


# --- server timers ------------------------------------------------------------------------------------------

async def test_invite_server_auto_trying_retransmission_absorption_and_timers_g_h(env):
    clock, tr, layer = env
    calls = []
    layer.on_request = lambda req, txn: calls.append(txn)
    req = request()
    layer.receive(req, PEER, None)
    await settle()
    clock.advance(0.25)
    assert [m.status for _, m, _, _ in tr.sent] == [100]  # §17.2.1: 100 Trying after 200 ms of TU silence
    txn = calls[0]
    txn.respond(make_response(req, 180, to_tag="x"))
    layer.receive(req, PEER, None)  # retransmitted INVITE: last provisional again, no second TU call
    await settle()
    assert [m.status for _, m, _, _ in tr.sent] == [100, 180, 180] and len(calls) == 1
    t0 = clock.now()
    assert txn.respond(make_response(req, 486, to_tag="x"))
    assert not txn.respond(make_response(req, 200, to_tag="x"))  # already final
    clock.advance(31.9)
    assert len(layer) == 1
    clock.advance(8.1)
    finals = [round(t - t0, 3) for t, m, _, _ in tr.sent if m.status == 486]
    assert finals == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # Timer G, capped at T2
    assert len(layer) == 0 and layer.stats["timeouts"] == 1  # Timer H (64*T1) gave up waiting for the ACK


async def test_invite_retransmission_before_any_response_gets_100_at_once(env):
    clock, tr, layer = env
    calls = []
    layer.on_request = lambda req, txn: calls.append(txn)
    req = request()
    layer.receive(req, PEER, None)
    await settle()
    clock.advance(0.1)
    assert tr.sent == []
    layer.receive(req, PEER, None)
    assert [m.status for _, m, _, _ in tr.sent] == [100] and len(calls) == 1
    clock.advance(1)
    assert len(tr.sent) == 1  # the delayed automatic 100 is not sent twice


async def test_invite_server_ack_confirms_then_timer_i(env):
    clock, tr, layer = env
    acks = []
    layer.on_ack = lambda a, s, c: acks.append(a)
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 404, to_tag="nf"))
    req = request()
    layer.receive(req, PEER, None)
    await settle()
    clock.advance(0.6)  # one Timer G retransmission
    ack = make_ack(req, resp_for(req, 404, "nf"))
    layer.receive(ack, PEER, None)
    layer.receive(ack, PEER, None)  # retransmitted ACK absorbed
    clock.advance(4.9)
    assert len(layer) == 1 and layer.stats["retransmissions_absorbed"] == 1
    clock.advance(0.2)
    assert len(layer) == 0  # Timer I = T4
    assert [m.status for _, m, _, _ in tr.sent] == [404, 404]  # no G after the ACK
    assert acks == []  # ACK for a non-2xx never reaches the TU
    # Over TCP: no Timer G, and Timer I is zero.
    tcp_inv = request(proto="TCP")
    layer.receive(tcp_inv, PEER, TcpConn())
    await settle()
    clock.advance(5)
    assert [m.status for _, m, _, _ in tr.sent] == [404, 404, 404]
    layer.receive(make_ack(tcp_inv, resp_for(tcp_inv, 404, "nf")), PEER, TcpConn())
    assert len(layer) == 0


async def test_non_invite_server_timer_j_and_tcp(env):
    clock, tr, layer = env
    calls = []

    def tu(req, txn):
        calls.append(req)
        txn.respond(make_response(req, 200, to_tag="o"))

    layer.on_request = tu
    req = request("OPTIONS")
    layer.receive(req, PEER, None)
    await settle()
    layer.receive(req, PEER, None)
    await settle()
    assert len(calls) == 1 and [m.status for _, m, _, _ in tr.sent] == [200, 200]
    clock.advance(31.9)
    assert len(layer) == 1
    clock.advance(0.2)  # Timer J = 64*T1 on UDP
    assert len(layer) == 0
    tcp_req = request("OPTIONS", "TCP")
    layer.receive(tcp_req, PEER, TcpConn())
    await settle()
    assert len(layer) == 0  # Timer J = 0 on TCP
    assert tr.sent[-1][3] == "tcp"


async def test_non_invite_server_trying_discards_retransmission(env):
    clock, tr, layer = env
    hold = asyncio.Event()
    calls = []

    async def tu(req, txn):
        calls.append(req)
        await hold.wait()
        txn.respond(make_response(req, 202, to_tag="a"))

    layer.on_request = tu
    req = request("REFER")
    layer.receive(req, PEER, None)
    await settle()
    layer.receive(req, PEER, None)
    await settle()
    assert tr.sent == [] and len(calls) == 1
    hold.set()
    await settle()
    assert [m.status for _, m, _, _ in tr.sent] == [202]


async def test_2xx_retransmitted_until_ack(env):
    clock, tr, layer = env
    acks = []
    layer.on_ack = lambda a, s, c: acks.append(a)
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 200, to_tag="ok"))
    req = request()
    layer.receive(req, PEER, None)
    await settle()
    clock.advance(4)
    assert tr.times() == [0, 0.5, 1.5, 3.5]
    ack = request("ACK", branch=new_branch())  # 2xx ACK: new branch, same Call-ID/CSeq/From tag
    layer.receive(ack, PEER, None)
    clock.advance(30)
    assert tr.times() == [0, 0.5, 1.5, 3.5] and len(acks) == 1


async def test_bye_stops_2xx_retransmission_when_ack_was_lost(env):
    clock, tr, layer = env
    lost = []
    layer.on_ack_timeout = lost.append
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 200, to_tag="ok"))
    layer.receive(request(), PEER, None)
    await settle()
    clock.advance(1)
    bye = request("BYE", cseq=2)
    bye.headers.set("To", "<sip:+15551234567@127.0.0.1>;tag=ok")
    layer.receive(bye, PEER, None)
    await settle()
    clock.advance(40)
    assert [m.status for t, m, _, _ in tr.sent if m.cseq[1] == "INVITE"] == [200, 200]  # at 0 and 0.5 only
    assert lost == []


async def test_2xx_never_acked_reports_timeout(env):
    clock, tr, layer = env
    lost = []
    layer.on_ack_timeout = lost.append
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 200, to_tag="ok"))
    layer.receive(request(), PEER, None)
    await settle()
    clock.advance(31.9)
    assert lost == [] and len(layer) == 1
    clock.advance(0.2)  # Timer L = 64*T1
    assert tr.times() == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert len(lost) == 1 and len(layer) == 0


async def test_tu_exception_becomes_500(env):
    clock, tr, layer = env

    async def tu(req, txn):
        raise RuntimeError("bug")

    layer.on_request = tu
    layer.receive(request("INFO"), PEER, None)
    await settle()
    assert [m.status for _, m, _, _ in tr.sent] == [500] and layer.stats["tu_errors"] == 1


# --- CANCEL -------------------------------------------------------------------------------------------------

async def test_server_cancel_gives_487_and_200(env):
    clock, tr, layer = env
    txns, cancelled = [], []
    layer.on_request = lambda req, txn: (txns.append(txn), txn.respond(make_response(req, 180, to_tag="ring")))
    layer.on_cancel = cancelled.append
    inv = request()
    layer.receive(inv, PEER, None)
    await settle()
    layer.receive(make_cancel(inv), PEER, None)
    sent = [(m.status, m.cseq[1], m.to_tag) for _, m, _, _ in tr.sent]
    assert sent == [(180, "INVITE", "ring"), (200, "CANCEL", "ring"), (487, "INVITE", "ring")]
    assert txns[0].cancelled.is_set() and cancelled == txns
    assert not txns[0].respond(make_response(inv, 200, to_tag="ring"))  # too late for the TU to answer
    layer.receive(make_ack(inv, resp_for(inv, 487, "ring")), PEER, None)
    assert txns[0].state == "confirmed"


async def test_cancel_without_invite_is_481_and_after_final_is_200_only(env):
    clock, tr, layer = env
    layer.receive(make_cancel(request()), PEER, None)
    assert tr.sent[-1][1].status == 481
    layer.on_request = lambda req, txn: txn.respond(make_response(req, 486, to_tag="b"))
    inv = request()
    layer.receive(inv, PEER, None)
    await settle()
    layer.receive(make_cancel(inv), PEER, None)
    assert [m.status for _, m, _, _ in tr.sent[1:]] == [486, 200]


async def test_client_cancel_waits_for_provisional(env):
    clock, tr, layer = env
    inv = request()
    txn = await layer.start_request(inv, PEER)
    cancel_task = asyncio.ensure_future(txn.cancel(headers=[("Reason", 'SIP;cause=487;text="no answer"')]))
    await settle()
    assert [m.method for _, m, _, _ in tr.sent] == ["INVITE"]  # §9.1: not before a provisional
    layer.receive(resp_for(inv, 180, "r"), PEER, None)
    await settle()
    cancel = tr.sent[-1][1]
    assert cancel.method == "CANCEL" and cancel.branch == inv.branch and cancel.cseq == (1, "CANCEL")
    assert cancel.headers["Reason"].startswith("SIP;cause=487")
    layer.receive(resp_for(cancel, 200, "r"), PEER, None)
    assert (await asyncio.wait_for(cancel_task, 1)).status == 200
    layer.receive(resp_for(inv, 487, "r"), PEER, None)
    assert (await txn.final).status == 487
    assert tr.sent[-1][1].method == "ACK"


async def test_client_cancel_guard_when_no_final_arrives(env):
    clock, tr, layer = env
    inv = request()
    txn = await layer.start_request(inv, PEER)
    layer.receive(resp_for(inv, 183, "r"), PEER, None)
    task = asyncio.ensure_future(txn.cancel())
    await settle()
    clock.advance(33)
    assert await asyncio.wait_for(task, 1) is None  # the CANCEL itself timed out (Timer F)
    with pytest.raises(TransactionTimeout, match="after CANCEL"):
        await txn.final


# --- real sockets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_two_layers_on_loopback(proto):
    a, b = SipTransport("127.0.0.1", 0), SipTransport("127.0.0.1", 0)
    await a.start()
    await b.start()
    try:
        la = TransactionLayer(a, t1=0.05)
        lb = TransactionLayer(b, t1=0.05)
        calls = []

        async def uas(req, txn):
            calls.append(req.method)
            if req.method == "INVITE":
                txn.respond(make_response(req, 180, to_tag="uas"))
                await asyncio.sleep(0.01)
                txn.respond(make_response(req, 486, to_tag="uas"))
            else:
                txn.respond(make_response(req, 200, to_tag="uas"))

        lb.on_request = uas
        provisional = []
        req = SipRequest("INVITE", f"sip:x@127.0.0.1:{b.port}", [
            ("From", "<sip:a@127.0.0.1>;tag=1"), ("To", f"<sip:x@127.0.0.1:{b.port}>"), ("Call-ID", f"c-{proto}"),
            ("CSeq", "1 INVITE"), ("Max-Forwards", "70")])
        resp = await asyncio.wait_for(la.send_request(req, ("127.0.0.1", b.port), proto,
                                                      on_provisional=provisional.append), 5)
        assert resp.status == 486 and [p.status for p in provisional] == [180]
        assert req.top_via.transport == proto.upper()
        opt = SipRequest("OPTIONS", f"sip:x@127.0.0.1:{b.port}", [
            ("From", "<sip:a@127.0.0.1>;tag=1"), ("To", f"<sip:x@127.0.0.1:{b.port}>"), ("Call-ID", "o"),
            ("CSeq", "2 OPTIONS")])
        assert (await asyncio.wait_for(la.send_request(opt, ("127.0.0.1", b.port), proto), 5)).status == 200
        assert calls == ["INVITE", "OPTIONS"]

        async def acked():  # the ACK for the 486 reaches B's INVITE server transaction (Confirmed)
            while any(t.is_invite and t.state == "completed" for t in lb._servers.values()):
                await asyncio.sleep(0.01)
        await asyncio.wait_for(acked(), 3)
        assert isinstance(resp, SipResponse)
    finally:
        await a.stop()
        await b.stop()


# --- SIPp, an independent implementation, as the peer ------------------------------------------------------

def _sipp_helpers():
    from sipp import SCENARIOS, free_port, needs_sipp  # tests/sipp.py (shared SIPp harness)
    return SCENARIOS, free_port, needs_sipp


SCENARIOS, free_port, needs_sipp = _sipp_helpers()


@needs_sipp
@pytest.mark.parametrize("proto,loss", [("udp", 10), ("tcp", 0)])
async def test_sipp_uac_calls_a_uas_built_on_the_transaction_layer(proto, loss):
    """SIPp as the UAC (INVITE/180/200/ACK/BYE/200, sip-test-configs/uac_txn_matched.xml: the built-in `uac` with
    responses matched to their transactions, see there why) against a bare UAS on our layers; on UDP SIPp drops
    10 % of all packets, so retransmissions, absorption and 2xx re-sending are exercised with a real peer."""
    from gateway.loadtest.sipp import run_sipp
    from gateway.sip.message import new_tag
    from gateway.sip.sdp import answer_offer

    t = SipTransport("127.0.0.1", 0)
    await t.start()
    layer = TransactionLayer(t)
    acked, byes = set(), set()

    def uas(req, txn):
        if req.method == "INVITE":
            tag = new_tag()
            answer, choice = answer_offer(req.body, "127.0.0.1", 40000)
            assert choice.codec == "PCMU"
            txn.respond(make_response(req, 180, to_tag=tag))
            txn.respond(make_response(req, 200, to_tag=tag, body=answer.to_bytes(), headers=[
                ("Contact", f"<sip:gw@127.0.0.1:{t.port};transport={proto}>"), ("Content-Type", "application/sdp")]))
        elif req.method == "BYE":
            byes.add(req.call_id)
            txn.respond(make_response(req, 200))
        else:
            txn.respond(make_response(req, 405))

    layer.on_request = uas
    layer.on_ack = lambda ack, addr, conn: acked.add(ack.call_id)
    calls = 30
    args = ["-sf", str(SCENARIOS / "uac_txn_matched.xml"), "-m", str(calls), "-r", str(calls), "-l", str(calls),
            "-d", "100", "-p", str(free_port()), "-mp", str(free_port(even=True)),
            "-t", "u1" if proto == "udp" else "t1", "-timeout", "40s", "-timeout_error"]
    if loss:
        args += ["-lost", str(loss)]
    try:
        res = await run_sipp(f"127.0.0.1:{t.port}", args, deadline_s=50)
    finally:
        await t.stop()
    s = res.stats
    assert not res.killed and (s.successful, s.failed) == (calls, 0), (s, res.errors[-2000:])
    assert len(byes) == calls
    # SIPp may drop its own ACK and has moved on to BYE by the time our 2xx comes again; without loss every
    # 2xx must have been ACKed.
    assert acked <= byes and (loss or len(acked) == calls)
    assert not layer._awaiting_ack  # ACK or BYE stopped every 2xx retransmission
    assert t.stats["internal_errors"] == 0 and layer.stats["tu_errors"] == 0
    if loss:
        # loss really happened and was repaired. Not every drop needs a repair (a 180; an ACK overtaken by the BYE
        # 100 ms later), but each call has four messages whose loss does (INVITE, its 200, BYE, its 200), each
        # dropped with p = 0.1 on SIPp's side: no repair at all in 30 calls has p = 0.9**120 ~ 3e-6 (at 5 % and 20
        # calls it was 0.95**80 ~ 1.7 %, seen on 2026-11-30).
        assert s.retransmissions + layer.stats["retransmissions"] > 0


@needs_sipp
@pytest.mark.parametrize("proto,loss", [("udp", 5), ("tcp", 0)])
async def test_transaction_layer_calls_sipp_uas(proto, loss):
    """Our client transactions (INVITE with Timer A, ACK for 2xx by the 'dialog', BYE) against SIPp's built-in UAS."""
    from gateway.loadtest.sipp import run_sipp
    from gateway.sip.message import NameAddr, new_tag

    sipp_port, calls = free_port(), 5
    args = ["-sn", "uas", "-p", str(sipp_port), "-m", str(calls), "-mp", str(free_port(even=True)),
            "-t", "u1" if proto == "udp" else "t1", "-timeout", "40s", "-timeout_error"]
    if loss:
        args += ["-lost", str(loss)]
    task = asyncio.create_task(run_sipp("127.0.0.1:9", args, deadline_s=50))
    t = SipTransport("127.0.0.1", 0)
    await t.start()
    layer = TransactionLayer(t)
    acks: dict[str, SipRequest] = {}
    layer.on_stray_response = lambda r, a, c: r.status == 200 and r.call_id in acks and layer.send_ack(
        acks[r.call_id], ("127.0.0.1", sipp_port), proto)  # the 200 came again: our ACK was lost
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while True:  # wait until SIPp listens
            try:
                if proto == "tcp":
                    _, w = await asyncio.open_connection("127.0.0.1", sipp_port)
                    w.close()
                    break
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    probe.bind(("127.0.0.1", sipp_port))
                finally:
                    probe.close()
            except OSError:
                if proto == "udp":
                    break
            assert loop.time() < end and not task.done(), "SIPp did not start"
            await asyncio.sleep(0.05)
        dest = ("127.0.0.1", sipp_port)
        for i in range(calls):
            base = [("From", f"<sip:gw@127.0.0.1:{t.port}>;tag={new_tag()}"), ("Call-ID", f"core-{proto}-{i}"),
                    ("Max-Forwards", "70")]
            inv = SipRequest("INVITE", f"sip:service@127.0.0.1:{sipp_port}", base + [
                ("To", f"<sip:service@127.0.0.1:{sipp_port}>"), ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:gw@127.0.0.1:{t.port}>")])
            ok = await asyncio.wait_for(layer.send_request(inv, dest, proto), 40)
            assert ok.status == 200
            target = NameAddr.parse(ok.headers["Contact"]).uri
            ack = SipRequest("ACK", target, [("Via", t.via(new_branch(), proto)), *base, ("To", ok.headers["To"]),
                                             ("CSeq", "1 ACK")])
            acks[inv.call_id] = ack
            await layer.send_ack(ack, dest, proto)
            bye = SipRequest("BYE", target, [*base, ("To", ok.headers["To"]), ("CSeq", "2 BYE")])
            assert (await asyncio.wait_for(layer.send_request(bye, dest, proto), 40)).status == 200
        res = await asyncio.wait_for(task, 55)
    finally:
        await t.stop()
        if not task.done():
            task.cancel()
    s = res.stats
    assert not res.killed and (s.successful, s.failed) == (calls, 0), (s, res.errors[-2000:])


async def test_tu_that_never_answers_cannot_leak_transactions(env):
    clock, tr, layer = env
    layer.on_request = lambda req, txn: None  # a buggy TU
    layer.receive(request("INFO"), PEER, None)
    inv = request()
    layer.receive(inv, PEER, None)
    await settle()
    assert len(layer) == 2
    clock.advance(32.1)
    assert len(layer) == 1 and layer.stats["tu_errors"] == 1  # the INFO is given up silently after 64*T1
    clock.advance(600 - 32.1 - 0.2)
    assert [m.status for _, m, _, _ in tr.sent] == [100]
    clock.advance(0.3)  # max_invite_pending = 600 s
    assert [m.status for _, m, _, _ in tr.sent] == [100, 480]
    layer.receive(make_ack(inv, tr.sent[-1][1]), PEER, None)
    clock.advance(6)
    assert len(layer) == 0
