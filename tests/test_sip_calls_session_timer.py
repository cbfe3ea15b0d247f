"""Inside an established dialog: RFC 4028 session timers (we refresh when we are the refresher, and hang up with
`408 Session timer expired` when the peer's refresh never comes), SIP INFO DTMF, REFER from the trunk, BYE."""
import asyncio

from gateway.sip.dialog import Dialog
from gateway.sip.locate import Locator
from gateway.sip.message import SipResponse, parse_message
from gateway.sip.ua import SipSession

INVITE = (
    "INVITE sip:+15550001111@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    "From: <sip:a@carrier>;tag=abc\r\nTo: <sip:+15550001111@gw>\r\nCall-ID: st-1\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:a@10.0.0.1:5060>\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n{extra}Content-Length: 0\r\n\r\n")


class FakeUA:
    host, port, user_agent, t1 = "127.0.0.1", 5060, "test", 0.5

    def __init__(self):
        self.sent = []
        self.sessions = {}
        self.pending_byes = set()
        self.locator = Locator()      # in-dialog requests locate their next hop (an IP literal here)

    def port_for(self, transport):
        return self.port

    def spawn(self, coro, name=None):
        return asyncio.ensure_future(coro)

    def contact(self, *a, **k):
        return "<sip:gateway@127.0.0.1:5060>"

    async def send_authenticated(self, build, dest, creds, *, cseq=1, on_request=None, **kw):
        req = build(cseq, [])
        if on_request:
            on_request(req)
        self.sent.append(req)
        return req, SipResponse(200, "OK", [("CSeq", f"{cseq} {req.method}")])


def session(extra=""):
    inv = parse_message(INVITE.format(extra=extra).encode())
    ua = FakeUA()
    s = SipSession(ua, Dialog.as_uas(inv, "ours"), "uas", local_sdp=b"", remote_sdp=None, invite=inv)
    return ua, s, inv


async def test_negotiation_headers():
    _, s, inv = session("Supported: 100rel, timer\r\nSession-Expires: 1800;refresher=uac\r\n")
    assert s.negotiate_timer(inv) == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    assert s.we_refresh is False
    _, s, inv = session("Session-Expires: 30\r\n")      # below Min-SE, and the caller cannot do timers
    assert s.negotiate_timer(inv) == [("Session-Expires", "90;refresher=uas")]
    assert s.we_refresh is True


async def test_missing_refresh_hangs_up():
    ua, s, _ = session()
    s.session_expires, s.we_refresh = 3, False      # BYE at 3 - min(32, 3/3) = 2 s
    expired = asyncio.Event()
    s.on_timer_expired = expired.set
    s.start_timer()
    await asyncio.wait_for(expired.wait(), 4)
    assert [r.method for r in ua.sent] == ["BYE"]
    assert ua.sent[0].headers.get("Reason") == 'SIP;cause=408;text="Session timer expired"'
    assert s.ended.is_set()


async def test_refresh_is_sent_and_rearmed():
    ua, s, _ = session()
    s.session_expires, s.we_refresh = 2, True       # refresh every SE/2 = 1 s, with UPDATE (the peer allows it)
    s.start_timer()
    await asyncio.sleep(2.3)
    s.stop_timers()
    assert [r.method for r in ua.sent] == ["UPDATE", "UPDATE"]
    assert ua.sent[0].headers.get("Session-Expires") == "2;refresher=uas"
    assert s.refreshes == 2 and not s.ended.is_set()


class FakeTxn:
    """The UA answers through FakeUA.respond; the transaction itself is not used here."""


async def test_in_dialog_requests_info_dtmf_refer_and_bye():
    ua, s, _ = session()
    answered = []
    ua.respond = lambda txn, req, status, reason=None, **kw: answered.append(status)
    digits = []
    s.on_dtmf = lambda d, ms: digits.append((d, ms))
    info = parse_message(
        b"INFO sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK9\r\nFrom: <sip:a@c>;tag=abc\r\n"
        b"To: <sip:g@gw>;tag=ours\r\nCall-ID: st-1\r\nCSeq: 2 INFO\r\nContent-Type: application/dtmf-relay\r\n"
        b"Content-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n")
    await s.handle(info, FakeTxn())
    assert digits == [("5", 160)]
    refer = parse_message(in_dialog("REFER", 3))
    await s.handle(refer, FakeTxn())            # transfers requested by the trunk are declined
    byes = []
    s.on_bye = byes.append
    await s.handle(parse_message(in_dialog("BYE", 4)), FakeTxn())
    assert answered == [200, 603, 200]
    assert len(byes) == 1 and s.ended.is_set()


def in_dialog(method, cseq):
    return (f"{method} sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{cseq}\r\nFrom: <sip:a@c>;tag=abc\r\n"
            f"To: <sip:g@gw>;tag=ours\r\nCall-ID: st-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode()
