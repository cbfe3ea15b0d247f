"""RTCP (RFC 3550 §6) on real loopback sockets: a far end written here byte by byte from the RFC (not with the
library the gateway uses) sends RTP with gaps and its own SR/RR; the gateway's SR/RR are unpacked by hand and
checked field by field (packet count, loss, highest sequence, LSR/DLSR echo), the round-trip time and the MOS
estimate come out of it, rtcp-mux sends RTCP on the RTP port, and a real SIP call logs its quality and feeds the
per-carrier histograms."""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.call import Call
from gateway.rtp import RtpEngine, RtpSession
from gateway.rtp.packet import build_rtp
from gateway.rtp.rtcp import ReceptionStats, mos, report_interval
from gateway.rtp.srtp import CryptoAttribute, SrtpContext
from sipp import (
    call_rows,
    metric_value,
    metrics_text,
    needs_sipp,
    rtp_range,
    sip_gateway,
    sip_number,
    sipp_uac,
    wait_for,
)
from test_rtp_session import start_call, tone_ulaw

NTP_OFFSET = 2208988800
PEER_SSRC = 0x1234ABCD


def ntp64(t: float) -> int:
    return int((t + NTP_OFFSET) * 2**32)


def sdes_cname(ssrc: int, cname: bytes) -> bytes:
    body = struct.pack("!IBB", ssrc, 1, len(cname)) + cname + b"\x00"
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBH", 0x81, 202, len(body) // 4) + body


def sender_report(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int) -> bytes:
    """RFC 3550 §6.4.1: V=2, RC=0, PT=200, length 6 words after the header; then SDES (§6.1 compound rule)."""
    return (struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts, packets, octets)
            + sdes_cname(ssrc, b"peer@127.0.0.1"))


def receiver_report(ssrc: int, about: int, fraction: int, lost: int, highest: int, jitter: int, lsr: int,
                    dlsr: int) -> bytes:
    """RFC 3550 §6.4.2: one report block (24 bytes) about `about`."""
    block = struct.pack("!IB", about, fraction) + lost.to_bytes(3, "big", signed=True)
    block += struct.pack("!IIII", highest, jitter, lsr, dlsr)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block + sdes_cname(ssrc, b"peer@127.0.0.1")


def parse_compound(data: bytes) -> list[tuple[int, int, bytes]]:
    """[(packet type, count, payload)] of a compound RTCP packet."""
    out, pos = [], 0
    while pos < len(data):
        b0, pt, length = struct.unpack_from("!BBH", data, pos)
        assert b0 >> 6 == 2, "RTCP version must be 2"
        out.append((pt, b0 & 0x1F, data[pos + 4:pos + 4 + 4 * length]))
        pos += 4 + 4 * length
    assert pos == len(data)
    return out


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.arrived: dict[bytes, float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(data)
        self.arrived[data] = time.time()


async def peer_pair() -> tuple[Collector, Collector, int]:
    """The far end's RTP socket on an even port and its RTCP socket on the next (RFC 3550 §11)."""
    loop = asyncio.get_running_loop()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1] & ~1
        try:
            _, rtp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", port))
        except OSError:
            continue
        try:
            _, rtcp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", port + 1))
        except OSError:
            rtp.transport.close()
            continue
        return rtp, rtcp, port
    raise AssertionError("no free port pair")


def reports(packets: list[bytes], pt: int) -> list[list[tuple[int, int, bytes]]]:
    return [c for c in (parse_compound(p) for p in packets if len(p) > 1 and p[1] in (200, 201)) if c[0][0] == pt]


@dataclass
class RtcpEnv:
    call: Call
    session: RtpSession
    peer_rtp: Collector
    peer_rtcp: Collector
    port: int


@pytest_asyncio.fixture
async def env(make_gateway):
    """A real call on the echo engine, its RTP session on a private range, and the far end's socket pair."""
    gw = await make_gateway(engine="echo")
    ports = rtp_range()
    rtp = RtpEngine("127.0.0.1", ports["rtp_port_min"], ports["rtp_port_max"])
    await rtp.start()
    peer_rtp, peer_rtcp, port = await peer_pair()
    call, session = await start_call(gw, rtp, port)
    yield RtcpEnv(call, session, peer_rtp, peer_rtcp, port)
    await call.end("user", "test over")
    await rtp.stop()
    peer_rtp.transport.close()
    peer_rtcp.transport.close()


async def test_sender_and_receiver_reports_both_ways(env):
    session, peer_rtp, peer_rtcp = env.session, env.peer_rtp, env.peer_rtcp
    assert session.rtcp_transport is not None     # the engine bound local_port + 1
    gw_rtp, gw_rtcp = ("127.0.0.1", session.local_port), ("127.0.0.1", session.local_port + 1)
    base = 40000
    frames = tone_ulaw(100)
    sent = 0
    for i, payload in enumerate(frames):
        if i in (20, 21, 50, 70, 90):   # five packets the network "lost"
            continue
        peer_rtp.transport.sendto(build_rtp(0, i == 0, base + i, 8000 + 160 * i, PEER_SSRC, payload), gw_rtp)
        sent += 1
        await asyncio.sleep(0.02)
    our_ntp = ntp64(time.time())
    peer_rtcp.transport.sendto(sender_report(PEER_SSRC, our_ntp, 8000 + 160 * 100, sent, sent * 160), gw_rtcp)
    await wait_for(lambda: session.rtcp.received["sr"] == 1, timeout=5)

    # the gateway's next report: an SR (it echoed our audio), with a report block about our stream
    srs = await wait_for(lambda: [p for p in peer_rtcp.packets if p[1] == 200 and p[0] & 0x1F == 1
                                  and struct.unpack_from("!I", p, 4 + 44)[0] != 0], timeout=10)   # DLSR set
    sr = srs[-1]
    (pt, count, body), *rest = parse_compound(sr)
    ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
    assert ssrc == session.ssrc and packets > 0 and octets == 160 * packets
    assert abs(ntp / 2**32 - NTP_OFFSET - time.time()) < 5
    about, fraction = struct.unpack_from("!IB", body, 24)
    lost = int.from_bytes(body[29:32], "big", signed=True)
    highest, jitter, lsr, dlsr = struct.unpack_from("!IIII", body, 32)
    assert about == PEER_SSRC and lost == 5 and highest == base + 99
    assert 0 < fraction < 256 and jitter < 8000
    assert lsr == (our_ntp >> 16) & 0xFFFFFFFF and 0 < dlsr < 20 * 65536
    assert rest[0][0] == 202 and b"gateway@" in rest[0][2]      # SDES CNAME follows (§6.1)

    # we answer with a receiver report echoing their SR, as a real peer does: DLSR is how long we held it
    their_lsr = (ntp >> 16) & 0xFFFFFFFF
    held = time.time() - peer_rtcp.arrived[sr]
    dlsr = int(held * 65536)
    peer_rtcp.transport.sendto(receiver_report(PEER_SSRC, session.ssrc, 64, 3, 1234, 80, their_lsr, dlsr),
                               gw_rtcp)
    await wait_for(lambda: session.rtcp.peer is not None and session.rtcp.peer.rtt is not None, timeout=5)
    q = session.quality()
    assert q["lost"] == 5 and q["expected"] == 100 and abs(q["loss_ratio"] - 0.05) < 1e-9
    assert q["remote"] == {"fraction_lost": 0.25, "packets_lost": 3, "jitter_ms": 10.0}
    assert 0 <= q["rtt_ms"] < 20 * 1000
    assert 1.0 < q["mos"] < 4.0           # 5 % loss without concealment is clearly audible
    assert q["rtcp"]["received"] == {"sr": 1, "rr": 1} and q["rtcp"]["sent"]["sr"] >= 1
    session.close()                       # RFC 3550 §6.3.7: a BYE goes out with the last report
    await wait_for(lambda: any(p[0] == 203 for r in reports(peer_rtcp.packets, 200) + reports(peer_rtcp.packets,
                                                                                                 201) for p in r),
                   timeout=5)


async def test_rtcp_mux_uses_the_rtp_port(env):
    session, peer_rtp, peer_rtcp = env.session, env.peer_rtp, env.peer_rtcp
    session.configure(("127.0.0.1", env.port), "PCMU", 0, 101, rtcp_mux=True)
    peer_rtp.transport.sendto(sender_report(PEER_SSRC, ntp64(time.time()), 0, 0, 0),
                              ("127.0.0.1", session.local_port))          # RTCP on the RTP port
    await wait_for(lambda: session.rtcp.received["sr"] == 1, timeout=5)
    await wait_for(lambda: reports(peer_rtp.packets, 200), timeout=10)   # our SR came to the RTP port
    assert not peer_rtcp.packets


async def test_with_srtp_keys_rtcp_is_srtcp_both_ways(env):
    """RFC 3711 §3.4: a call with SDES-SRTP keys sends and accepts only SRTCP (encrypted, authenticated)."""
    session, peer_rtcp = env.session, env.peer_rtcp
    ours, theirs = CryptoAttribute.generate(), CryptoAttribute.generate()
    session.set_srtp(SrtpContext(ours, theirs))
    peer = SrtpContext(theirs, ours)
    gw_rtcp = ("127.0.0.1", session.local_port + 1)
    plain = sender_report(PEER_SSRC, ntp64(time.time()), 0, 0, 0)
    peer_rtcp.transport.sendto(plain, gw_rtcp)                            # in the clear: dropped
    await wait_for(lambda: session.srtp.failed == 1, timeout=5)
    peer_rtcp.transport.sendto(peer.protect_rtcp(plain), gw_rtcp)
    await wait_for(lambda: session.rtcp.received["sr"] == 1, timeout=5)
    await wait_for(lambda: peer_rtcp.packets, timeout=10)
    assert all(p[1] in (200, 201) for p in peer_rtcp.packets)            # the header stays readable…
    clear = [peer.unprotect_rtcp(p) for p in peer_rtcp.packets]
    assert all(c is not None for c in clear)                              # …and it authenticates with our key
    assert b"gateway@" not in peer_rtcp.packets[0] and b"gateway@" in clear[0]   # the SDES CNAME was encrypted
    assert parse_compound(clear[0])[0][0] in (200, 201)


def test_reception_stats_follow_rfc3550_appendix_a3():
    rs = ReceptionStats()
    for seq in [65530, 65531, 65533, 65535, 0, 1, 2, 2]:       # wraps, two lost, one duplicate
        rs.update(seq)
    assert rs.extended_max == 65536 + 2 and rs.expected == 9
    assert rs.received == 8 and rs.lost == 1        # two missing, one duplicate counted (RFC 3550 allows it)
    assert rs.fraction_lost() == 256 * 1 // 9
    assert rs.fraction_lost() == 0                  # nothing new since the last report


def test_mos_estimate_matches_the_e_model():
    r, best = mos(0.0, 0.0, None)
    assert abs(r - (93.2 - 0.024 * 30)) < 1e-9 and 4.3 < best < 4.45   # G.711 with no loss: about 4.4
    assert mos(0.01, 0.0, 0.05)[1] < best
    assert mos(0.05, 0.0, 0.05)[1] < mos(0.01, 0.0, 0.05)[1]
    assert mos(0.0, 0.0, 0.6)[1] < mos(0.0, 0.0, 0.1)[1]         # past 177 ms one way, delay hurts more
    assert mos(1.0, 0.0, None)[1] == 1.0


def test_report_interval_is_rfc3550_randomised_five_seconds():
    values = [report_interval(2, 2, True, 100, False) for _ in range(500)]
    assert min(values) >= 5 * 0.5 / 1.2183 and max(values) <= 5 * 1.5 / 1.2182
    first = [report_interval(2, 2, True, 100, True) for _ in range(500)]
    assert max(first) <= 2.5 * 1.5 / 1.2182


@needs_sipp
@pytest.mark.timeout(120)
async def test_a_sip_call_logs_its_rtp_quality_and_feeds_the_carrier_histograms(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    task = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=4000,
                                        timeout_s=30))
    call = await wait_for(lambda: next((c for c in gw.calls.active.values() if c.leg is not None
                                        and getattr(c.leg, "rtp", None) is not None and c.leg.rtp.received > 5),
                                       None), timeout=20)
    session = call.leg.rtp
    # SIPp sends no RTCP: a receiver report about the gateway's stream comes from the same host, another port
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    transport.sendto(receiver_report(PEER_SSRC, session.ssrc, 0, 0, 1, 16, 0, 0),
                     ("127.0.0.1", session.local_port + 1))
    await wait_for(lambda: session.rtcp.received["rr"] == 1, timeout=5)
    (await task).assert_calls(successful=1)
    transport.close()
    rows = await wait_for(lambda: _ended(gw), timeout=10)
    q = rows[0]["extra"]["rtp"]["quality"]
    assert q["expected"] > 0 and 1 <= q["mos"] <= 4.5 and q["remote"]["jitter_ms"] == 2.0
    text = await metrics_text(gw)
    labels = {"carrier": "sip", "trunk": "trunk-15550001111"}
    assert metric_value(text, "gateway_call_mos_count", **labels) == 1
    assert metric_value(text, "gateway_call_jitter_seconds_count", **labels, side="remote") == 1
    assert metric_value(text, "gateway_call_packet_loss_ratio_count", **labels, side="local") == 1
    assert metric_value(text, "gateway_rtcp_reports_received_total") == 1
    assert metric_value(text, "gateway_rtcp_reports_sent_total") >= 1


async def _ended(gw):
    rows = await call_rows(gw)
    return rows if rows and rows[0]["ended_at"] and "rtp" in (rows[0].get("extra") or {}) else None
