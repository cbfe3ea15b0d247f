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
