"""RFC 3261 §8.2.2 / RFC 4475 answers over a real UDP socket to the running gateway (issue 13 item 9): an unknown
Require gets 420 + Unsupported (INVITE too), an unknown Request-URI scheme 416, another SIP version in the Via 505,
and `Supported` promises `replaces` (RFC 3891, issue 16) but not `100rel`."""
from __future__ import annotations

import asyncio
import os
import socket

import pytest

from gateway.sip.message import SipResponse, parse_message
from sipp import call_rows, sip_gateway, sip_number

pytestmark = pytest.mark.timeout(30)

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def request(method: str, uri: str, port: int, *, via_version: str = "2.0", extra: str = "",
            body: bytes = b"") -> bytes:
    branch = "z9hG4bK" + os.urandom(6).hex()
    head = (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/{via_version}/UDP 127.0.0.1:{port};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:+15557654321@127.0.0.1>;tag={os.urandom(4).hex()}\r\n"
            f"To: <sip:+15550001111@127.0.0.1>\r\n"
            f"Call-ID: {os.urandom(8).hex()}@127.0.0.1\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
            f"{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class UdpPeer:
    """A plain UDP socket speaking SIP to the gateway; collects every response for one request."""

    def __init__(self, gw_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.gw = ("127.0.0.1", gw_port)

    async def final(self, data: bytes, timeout: float = 5.0) -> SipResponse:
        """Send `data`; return the first final (≥ 200) response."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, self.gw)
        async with asyncio.timeout(timeout):
            while True:
                raw = await loop.sock_recv(self.sock, 65535)
                if raw.startswith(b"SIP/2.0 505 "):  # it echoes our SIP/7.0 Via, which our parser refuses
                    return SipResponse(505, "Version Not Supported")
                msg = parse_message(raw)
                if isinstance(msg, SipResponse) and msg.status >= 200:
                    return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def peer_gw(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    peer = UdpPeer(gw.carriers["sip"].port)
    yield peer, gw
    peer.close()


async def test_unknown_require_420_with_unsupported(peer_gw):
    peer, gw = peer_gw
    resp = await peer.final(request("OPTIONS", "sip:+15550001111@127.0.0.1", peer.port,
                                    extra="Require: nothingweknow, timer\r\n"))
    assert resp.status == 420 and resp.headers.getlist("Unsupported") == ["nothingweknow"]
    # INVITE too: a trunk that requires an extension gets no 200 that ignores it, and no call is created
    resp = await peer.final(request("INVITE", "sip:+15550001111@127.0.0.1", peer.port,
                                    extra="Require: 100rel, replaces\r\nSupported: 100rel\r\n", body=SDP))
    assert resp.status == 420 and resp.headers.getlist("Unsupported") == ["100rel"]
    assert await call_rows(gw) == []


async def test_unknown_uri_scheme_416(peer_gw):
    peer, gw = peer_gw
    resp = await peer.final(request("OPTIONS", "unknownscheme:unknownstuff", peer.port))
    assert resp.status == 416
    resp = await peer.final(request("INVITE", "mailto:someone@example.com", peer.port, body=SDP))
    assert resp.status == 416
    assert await call_rows(gw) == []


async def test_other_sip_version_in_via_505(peer_gw):
    peer, _ = peer_gw
    resp = await peer.final(request("OPTIONS", "sip:+15550001111@127.0.0.1", peer.port, via_version="7.0"))
    assert resp.status == 505
    # RFC 4475 badvers: the request line says SIP/7.0 as well
    raw = request("OPTIONS", "sip:t.watson@127.0.0.1", peer.port, via_version="7.0").replace(b" SIP/2.0\r\n",
                                                                                             b" SIP/7.0\r\n", 1)
    resp = await peer.final(raw)
    assert resp.status == 505


async def test_supported_promises_replaces_not_100rel(peer_gw):
    peer, _ = peer_gw
    resp = await peer.final(request("OPTIONS", "sip:+15550001111@127.0.0.1", peer.port,
                                    extra="Require: timer\r\n"))
    assert resp.status == 200
    supported = [t.lower() for t in resp.headers.getlist("Supported")]
    assert "timer" in supported and "replaces" in supported and "100rel" not in supported


async def _collect(peer: UdpPeer, until, timeout: float = 10.0) -> list[SipResponse]:
    """Responses from the gateway until `until(response)` says stop (that one included)."""
    loop = asyncio.get_running_loop()
    got: list[SipResponse] = []
    async with asyncio.timeout(timeout):
        while not got or not until(got[-1]):
            msg = parse_message(await loop.sock_recv(peer.sock, 65535))
            if isinstance(msg, SipResponse):
                got.append(msg)
    return got


async def _ack_and_bye(peer: UdpPeer, invite: bytes, ok: SipResponse) -> None:
    """End the answered call as a caller does: ACK the 200, then BYE, and wait for the BYE's 200."""
    head = invite.split(b"\r\n\r\n", 1)[0].decode()
    lines = [ln for ln in head.split("\r\n")[1:] if not ln.startswith(("Via:", "CSeq:", "To:", "Content-"))]
    target = ok.contacts[0].uri
    loop = asyncio.get_running_loop()
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        msg = (f"{method} {target} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
               + "".join(ln + "\r\n" for ln in lines)
               + f"To: {ok.headers['To']}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n")
        await loop.sock_sendto(peer.sock, msg.encode(), peer.gw)
    bye_ok = await _collect(peer, lambda r: r.cseq[1] == "BYE" and r.status >= 200)
    assert bye_ok[-1].status == 200


async def test_invite_answered_at_once_gets_no_provisional_response(peer_gw):
    """RFC 3261 §17.2.1: a UAS that answers within 200 ms need not send 100 Trying, and the gateway does not, nor a
    180 Ringing that would come microseconds before its 200 (two messages less per call, for the worker and for
    Kamailio). The 200 ms timer is set far out here so that a
    stalled box cannot make it fire: what is checked is that the carrier sends no 100 of its own."""
    peer, gw = peer_gw
    gw.carriers["sip"].layer.trying_delay = 30.0
    invite = request("INVITE", "sip:+15550001111@127.0.0.1", peer.port, body=SDP)
    await asyncio.get_running_loop().sock_sendto(peer.sock, invite, peer.gw)
    got = await _collect(peer, lambda r: r.status >= 200)
    assert [r.status for r in got] == [200]
    await _ack_and_bye(peer, invite, got[-1])


async def test_invite_still_unanswered_after_200_ms_gets_100_trying(peer_gw):
    """An INVITE whose answer waits (here: its call-log row is held back) gets the transaction layer's 100 Trying
    after 200 ms, so the caller (or Kamailio) stops re-sending it; the call then goes on as usual."""
    peer, gw = peer_gw
    gate = asyncio.Event()
    create = gw.calls.create

    async def held_create(**kw):
        await gate.wait()
        return await create(**kw)
    gw.calls.create = held_create
    invite = request("INVITE", "sip:+15550001111@127.0.0.1", peer.port, body=SDP)
    await asyncio.get_running_loop().sock_sendto(peer.sock, invite, peer.gw)
    first = await _collect(peer, lambda r: True)
    assert [r.status for r in first] == [100]
    gate.set()
    got = await _collect(peer, lambda r: r.status >= 200)
    assert [r.status for r in got] == [200]
    await _ack_and_bye(peer, invite, got[-1])
    rows = await call_rows(gw)
    assert len(rows) == 1
