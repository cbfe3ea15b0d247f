"""RTCP for one RTP session (RFC 3550 §6): what we received, our sender/receiver reports, the peer's reports,
round-trip time and a MOS estimate.

The wire format (SR, RR, SDES, report blocks) is aiortc's (`aiortc.rtp.RtcpPacket` and friends, already a
dependency for WebRTC); the rules are RFC 3550's:

- reception statistics per Appendix A.1/A.3: extended highest sequence number, cumulative loss, fraction lost
  since the last report; interarrival jitter (§6.4.1) is kept by the RTP session;
- every report is a compound packet, SR (we sent RTP since the last report) or RR first, then SDES with our
  CNAME (§6.1);
- the report interval per §6.3.1 and Appendix A.7: 5 % of the session bandwidth for RTCP, a 5 s minimum (halved
  before the first report), randomised over [0.5, 1.5] and divided by e − 3/2 to compensate for the timer
  reconsideration we do not need with two members;
- round-trip time from a peer's report block about us (§6.4.1): A − LSR − DLSR in 1/65536 s.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

#: seconds between 1900-01-01 (NTP era 0) and 1970-01-01 (Unix)
NTP_UNIX_OFFSET = 2208988800
SDES_CNAME = 1
#: RFC 3550 §6.2: the minimum report interval, and the RTCP share of the session bandwidth
MIN_INTERVAL = 5.0
RTCP_SHARE = 0.05
#: G.711 at 20 ms: 160 payload bytes + 12 RTP + 8 UDP + 20 IPv4 per 20 ms, in bytes per second
SESSION_BANDWIDTH = (160 + 40) * 50
#: e − 3/2, RFC 3550 §6.3.1 / A.7 (the "compensation" divisor of the randomised interval)
COMPENSATION = math.e - 1.5


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of a Unix time."""
    return int((unix_time + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR/DLSR unit, 1/65536 s (§6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def report_interval(members: int, senders: int, we_sent: bool, avg_rtcp_size: float, initial: bool,
                    session_bandwidth: float = SESSION_BANDWIDTH) -> float:
    """Seconds to the next report, RFC 3550 Appendix A.7 (randomised; bandwidth in bytes per second)."""
    rtcp_bw = session_bandwidth * RTCP_SHARE
    n = members
    if 0 < senders <= members * 0.25:   # senders get a quarter of the RTCP bandwidth when they are few
        if we_sent:
            rtcp_bw *= 0.25
            n = senders
        else:
            rtcp_bw *= 0.75
            n = members - senders
    t_min = MIN_INTERVAL / 2 if initial else MIN_INTERVAL
    deterministic = max(avg_rtcp_size * n / rtcp_bw, t_min)
    return deterministic * (random.random() + 0.5) / COMPENSATION


class ReceptionStats:
    """RFC 3550 A.1/A.3 sequence bookkeeping for the one source we receive (a trunk sends one stream)."""

    __slots__ = ("base_seq", "max_seq", "cycles", "received", "expected_prior", "received_prior")

    def __init__(self) -> None:
        self.base_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0

    def update(self, seq: int) -> None:
        self.received += 1
        if self.base_seq < 0:
            self.base_seq = self.max_seq = seq
            return
        delta = (seq - self.max_seq) & 0xFFFF
        if 0 < delta < 0x8000:          # in order (or a forward jump): wrapped when the new number is smaller
            if seq < self.max_seq:
                self.cycles += 0x10000
            self.max_seq = seq

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.base_seq < 0 else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (may go negative with duplicates, as RFC 3550 allows; clamped to 24 bits)."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    def fraction_lost(self) -> int:
        """Fraction lost since the previous call, in 1/256 (§6.4.1, A.3); moves the interval on."""
        expected, received = self.expected, self.received
        expected_interval = expected - self.expected_prior
        received_interval = received - self.received_prior
        self.expected_prior, self.received_prior = expected, received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return min(255, (lost_interval << 8) // expected_interval)


@dataclass
class PeerReport:
    """What the far end's latest report block about our stream said."""
    fraction_lost: float = 0.0       # 0…1, over its last interval
    cumulative_lost: int = 0
    jitter_ts: int = 0               # timestamp units (8 kHz)
    rtt: float | None = None         # seconds, when it echoed one of our SRs


class Rtcp:
    """The RTCP side of one RtpSession: builds our reports, digests the peer's."""

    def __init__(self, ssrc: int, cname: str) -> None:
        self.ssrc = ssrc
        self.cname = cname.encode()[:255]
        self.reception = ReceptionStats()
        self.remote_ssrc: int | None = None
        self.peer: PeerReport | None = None
        #: LSR (middle 32 bits of the peer's last SR) and when it arrived (time.time()), for our DLSR
        self._lsr = 0
        self._lsr_at = 0.0
        self._avg_size = 100.0          # RFC 3550 A.7 avg_rtcp_size, updated with every packet sent or received
        self.due = 0.0                  # loop time of the next report; 0 = schedule on the first tick
        self.sent = {"sr": 0, "rr": 0}
        self.received = {"sr": 0, "rr": 0}
        self.errors = 0

    def schedule(self, now: float, *, we_sent: bool = False, initial: bool = False) -> None:
        """Set `due` to the next report time (two members: us and the peer; it counts as a sender once it sent
        an SR)."""
        senders = we_sent + (self.remote_ssrc is not None)
        self.due = now + report_interval(2, senders, we_sent, self._avg_size, initial)

    def _track_size(self, size: int) -> None:
        self._avg_size += (size + 28 - self._avg_size) / 16   # + UDP/IP headers, A.7

    # -- ours ---------------------------------------------------------------------------------------------------
    def build(self, *, packets_sent: int, octets_sent: int, rtp_timestamp: int, jitter_ts: float,
              we_sent: bool, wall: float | None = None, bye: bool = False) -> bytes:
        """Our compound report: SR when we sent RTP since the last one, else RR; then SDES CNAME (and BYE)."""
        wall = time.time() if wall is None else wall
        blocks = []
        if self.remote_ssrc is not None and self.reception.received:
            dlsr = int((wall - self._lsr_at) * 65536) & 0xFFFFFFFF if self._lsr else 0
            rs = self.reception
            blocks.append(RtcpReceiverInfo(ssrc=self.remote_ssrc, fraction_lost=rs.fraction_lost(),
                                           packets_lost=rs.lost, highest_sequence=rs.extended_max & 0xFFFFFFFF,
                                           jitter=int(jitter_ts), lsr=self._lsr, dlsr=dlsr))
        head: RtcpSrPacket | RtcpRrPacket
        if we_sent:
            info = RtcpSenderInfo(ntp_timestamp=ntp_timestamp(wall), rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
                                  packet_count=packets_sent & 0xFFFFFFFF, octet_count=octets_sent & 0xFFFFFFFF)
            head = RtcpSrPacket(ssrc=self.ssrc, sender_info=info, reports=blocks)
            self.sent["sr"] += 1
        else:
            head = RtcpRrPacket(ssrc=self.ssrc, reports=blocks)
            self.sent["rr"] += 1
        data = bytes(head) + bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(self.ssrc, [(SDES_CNAME, self.cname)])]))
        if bye:
            data += bytes(RtcpByePacket(sources=[self.ssrc]))
        self._track_size(len(data))
        return data

    # -- theirs -------------------------------------------------------------------------------------------------
    def receive(self, data: bytes, wall: float | None = None) -> str | None:
        """Digest a compound packet from the peer; the type of its first report ("sr" | "rr"), None if unusable."""
        wall = time.time() if wall is None else wall
        try:
            packets = RtcpPacket.parse(data)
        except (ValueError, IndexError):
            self.errors += 1
            return None
        self._track_size(len(data))
        kind = None
        for p in packets:
            if isinstance(p, RtcpSrPacket):
                self.remote_ssrc = p.ssrc
                self._lsr = ntp_middle(p.sender_info.ntp_timestamp)
                self._lsr_at = wall
                self._digest(p.reports, wall)
                kind = kind or "sr"
            elif isinstance(p, RtcpRrPacket):
                self.remote_ssrc = self.remote_ssrc if self.remote_ssrc is not None else p.ssrc
                self._digest(p.reports, wall)
                kind = kind or "rr"
        if kind is not None:
            self.received[kind] += 1
        return kind

    def _digest(self, blocks: list[RtcpReceiverInfo], wall: float) -> None:
        for b in blocks:
            if b.ssrc != self.ssrc:
                continue        # a report about somebody else's stream (a conference bridge): not ours
            rtt = None
            if b.lsr:
                arrival = ntp_middle(ntp_timestamp(wall))
                units = (arrival - b.lsr - b.dlsr) & 0xFFFFFFFF
                if units < 0x80000000:        # a negative result (clock steps) is discarded
                    rtt = units / 65536
            previous = self.peer.rtt if self.peer is not None else None
            self.peer = PeerReport(b.fraction_lost / 256, b.packets_lost, b.jitter, rtt if rtt is not None
                                   else previous)


def mos(loss: float, jitter: float, rtt: float | None, bpl: float = 4.3) -> tuple[float, float]:
    """(R, MOS) from the simplified E-model: ITU-T G.107 (06/2015) with every default but delay and loss.

    - effective one-way delay d = RTT/2 (20 ms when unknown) + 2 × jitter + 10 ms (G.711 framing), in ms; the
      delay impairment Id = 0.024 d + 0.11 (d − 177.3) above 177.3 ms — the approximation of Cole & Rosenbluth,
      "Voice over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001;
    - loss impairment Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl) (G.107 §7.5, random loss BurstR = 1) with G.711's
      Ie = 0 and Bpl = 4.3 for G.711 without packet-loss concealment (ITU-T G.113 Appendix I): we play silence
      for a lost frame;
    - R = 93.2 − Id − Ie,eff (93.2: G.107's default R with no impairment), MOS from R per G.107 Annex B.
    """
    d = (rtt * 1000 / 2 if rtt is not None else 20.0) + 2 * jitter * 1000 + 10.0
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, min(1.0, loss)) * 100
    i_e = 95 * ppl / (ppl + bpl) if ppl > 0 else 0.0
    r = 93.2 - i_d - i_e
    if r <= 0:
        return r, 1.0
    if r >= 100:
        return r, 4.5
    # the Annex B polynomial dips just under 1 for R below about 6.5: MOS is 1 at worst
    return r, max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r))
