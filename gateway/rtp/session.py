"""One RTP media stream of a SIP call: receive → jitter buffer → 8 kHz PCM16 onto the bus; bus → G.711 out.

Nothing here sleeps or owns a task: the engine's shared clock calls `tick()` every 20 ms for every session.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from voicecodecs import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16

from ..frames import AudioFrame, BusItem, Dtmf, Mark, SendDtmf
from .dtmf import DtmfReceiver, DtmfSender
from .jitter import LOST, JitterBuffer, Played
from .packet import RtpParseError, build_rtp, is_rtcp, parse_rtp
from .rtcp import Rtcp, mos
from .srtp import SrtpContext

if TYPE_CHECKING:
    from .engine import RtpEngine


class RtpCall(Protocol):
    """What a session is attached to: a `gateway.call.Call`, or a stand-in that looks like one to the session
    (gateway/sip/bridge.py's BridgePort, the simulated caller's port in gateway/simulate/lines.py)."""

    inbound_arrived: float | None

    @property
    def bus(self) -> object: ...   # sending starts once it is not None

    def feed_audio(self, pcm: bytes) -> None: ...

    def feed_event(self, event: BusItem) -> None: ...

    def next_outbound_nowait(self) -> BusItem | None: ...

log = logging.getLogger("gateway.rtp")

SAMPLES_PER_TICK = 160  # 20 ms at 8 kHz
CN_PAYLOAD_TYPE = 13    # RFC 3389 comfort noise: ignored
CODECS = {
    "PCMU": (0, ulaw_to_pcm16, pcm16_to_ulaw, b"\xff" * SAMPLES_PER_TICK),
    "PCMA": (8, alaw_to_pcm16, pcm16_to_alaw, b"\xd5" * SAMPLES_PER_TICK),
}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class RtpSession(asyncio.DatagramProtocol):
    def __init__(self, engine: RtpEngine, port: int) -> None:
        self.engine = engine
        self.local_port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.latched = False
        self.configure(None, "PCMU", 0, 101)
        self.direction = "sendrecv"
        self.sending = False
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._jitter = JitterBuffer()
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_tx: DtmfSender | None = None
        self._dtmf_pending: list[str] = []
        self._dtmf_ts = 0
        self._marker = True
        self._idle = True
        self._credit = 0
        self._last_samples = SAMPLES_PER_TICK
        self.call: RtpCall | None = None
        self.on_pcm: Callable[[bytes], None] | None = None
        self.on_dtmf: Callable[[str, int], None] | None = None
        self.sent = self.received = self.foreign = self.ignored = 0
        #: frames (packets, or concealment for lost ones) the jitter buffer played out while nothing listened (the
        #: call answered but not attached yet, a moment on a busy box): dropped, counted
        self.unheard = 0
        self.octets = 0       # payload bytes sent (the SR's octet count)
        #: RTCP (rtcp.py): on local_port + 1 (`rtcp_transport`, bound by the engine) unless rtcp-mux was agreed
        self.rtcp = Rtcp(self.ssrc, f"gateway@{engine.advertised_ip}")
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.rtcp_mux = False
        self.rtcp_remote: tuple[str, int] | None = None
        self._rtcp_latched = False
        self._sent_at_report = 0
        self.jitter_ts = 0.0  # RFC 3550 interarrival jitter, in timestamp units
        self._transit: int | None = None
        #: SDES-SRTP (gateway/rtp/srtp.py) when the call's SDP negotiated keys; None: plain RTP
        self.srtp: SrtpContext | None = None

    # -- configuration ------------------------------------------------------------------------------------------
    def configure(self, remote: tuple[str, int] | None, codec: str, payload_type: int,
                  dtmf_payload_type: int | None, *, rtcp_mux: bool = False,
                  rtcp_addr: tuple[str, int] | None = None) -> None:
        """Apply the negotiated SDP: where to send, which G.711 law, which payload types; RTCP on the RTP port
        (rtcp-mux agreed, RFC 5761) or apart, to the peer's a=rtcp (RFC 3605) or else its RTP port + 1. The first
        RTCP packet from the peer's address latches its real source (NAT)."""
        self.rtcp_mux = rtcp_mux
        if rtcp_addr is not None and not self._rtcp_latched:
            self.rtcp_remote = rtcp_addr
        if codec not in CODECS:
            raise ValueError(f"unsupported RTP codec {codec}")
        if remote is not None and not self.latched:
            self.remote = remote
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        _, self._decode, self._encode, self._silence = CODECS[codec]

    def set_srtp(self, srtp: SrtpContext | None) -> None:
        """Encrypt what we send and authenticate + decrypt what we receive with these keys (None: plain RTP).
        A new context (a re-offer with new keys) starts fresh on both sides."""
        self.srtp = srtp

    def set_direction(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"bad media direction {direction!r}")
        self.direction = direction

    def attach(self, call: RtpCall) -> None:
        """Connect to a live call: received audio and DTMF go to it; the clock pulls its outbound frames."""
        self.call = call
        self.sending = True

    def detach(self) -> None:
        """Stop carrying the call (another session took its media over): nothing is sent, and what still arrives
        is counted as `unheard`. `attach` connects it again."""
        self.call = None
        self.sending = False

    async def send_dtmf(self, digits: str) -> None:
        DtmfSender(digits)  # validates now, raising ValueError for a bad digit
        self._dtmf_pending.append(digits)

    @property
    def stats(self) -> dict[str, float]:
        out = {"sent": self.sent, "received": self.received, "lost": self._jitter.lost, "late": self._jitter.late,
               "duplicate": self._jitter.duplicate, "overflow": self._jitter.overflow, "drained": self._jitter.drained,
               "foreign": self.foreign,
               "unheard": self.unheard,
               # received but never played out: still in the jitter buffer when the media closed
               "unplayed": len(self._jitter),
               "jitter_ms": round(self.jitter_ts / 8, 2), "rtcp_sent": sum(self.rtcp.sent.values()),
               "rtcp_received": sum(self.rtcp.received.values())}
        if self.srtp is not None:
            out["srtp_failed"] = self.srtp.failed   # dropped: failed authentication or replay check
        return out

    def quality(self) -> dict[str, object]:
        """Per-call RTP/RTCP quality for the call log: our reception (loss, jitter), what the peer's RTCP said
        about our stream, the round-trip time and the MOS estimate of what we heard."""
        rs = self.rtcp.reception
        expected = rs.expected
        loss = max(0, rs.lost) / expected if expected > 0 else 0.0
        peer = self.rtcp.peer
        rtt = peer.rtt if peer is not None else None
        r, score = mos(loss, self.jitter_ts / 8000, rtt)
        return {"expected": expected, "lost": max(0, rs.lost), "loss_ratio": round(loss, 5),
                "jitter_ms": round(self.jitter_ts / 8, 2), "rtt_ms": None if rtt is None else round(rtt * 1000, 2),
                "r_factor": round(r, 1), "mos": round(score, 2),
                "remote": None if peer is None else {"fraction_lost": round(peer.fraction_lost, 4),
                                                     "packets_lost": peer.cumulative_lost,
                                                     "jitter_ms": round(peer.jitter_ts / 8, 2)},
                "rtcp": {"mux": self.rtcp_mux, "sent": dict(self.rtcp.sent), "received": dict(self.rtcp.received)}}

    def close(self) -> None:
        if self.sending and self.transport is not None:
            self._report(bye=True)      # RFC 3550 §6.3.7: a BYE when the session ends
        self.call = None
        self.on_pcm = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.rtcp_transport is not None:
            self.rtcp_transport.close()
            self.rtcp_transport = None
        self.engine.release(self)

    # -- asyncio protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)   # a datagram endpoint's transport

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.: the far end decides
        log.debug("rtp socket error", extra={"port": self.local_port, "error": str(exc)})

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.latched and addr != self.remote:
            self.foreign += 1
            return
        if is_rtcp(data):
            self.rtcp_received(data, addr)
            return
        if self.srtp is not None:
            plain = self.srtp.unprotect(data)
            if plain is None:   # forged, replayed or keyed differently: never played, never latched to
                return
            data = plain
        try:
            pkt = parse_rtp(data)
        except RtpParseError:
            self.ignored += 1
            return
        if not self.latched:  # symmetric RTP (NAT): answer where the media really comes from
            self.remote = addr
            self.latched = True
        self.received += 1
        self.rtcp.reception.update(pkt.sequence)
        pt = pkt.payload_type
        if pt == self.payload_type:
            now = self.engine.loop_time()
            self._jitter.put(pkt.sequence, pkt.payload, now)
            transit = int(now * 8000) - pkt.timestamp
            if self._transit is not None:
                d = abs(transit - self._transit)
                self.jitter_ts += (d - self.jitter_ts) / 16
            self._transit = transit
        elif pt == self.dtmf_payload_type:
            try:
                presses = self._dtmf_rx.receive(pkt.timestamp, pkt.payload)
            except ValueError:
                self.ignored += 1
                return
            for digit, duration in presses:
                if self.call is not None:
                    self.call.feed_event(Dtmf(digit, duration))
                elif self.on_dtmf is not None:
                    self.on_dtmf(digit, duration)
        else:  # comfort noise (13) and anything not negotiated
            self.ignored += 1

    def rtcp_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """An RTCP packet, on the RTP port (mux) or the RTCP port: only from the peer's address."""
        if self.remote is None or addr[0] != self.remote[0]:
            self.foreign += 1
            return
        if self.srtp is not None:   # SRTCP (RFC 3711): what does not authenticate is dropped, never latched to
            plain = self.srtp.unprotect_rtcp(data)
            if plain is None:
                return
            data = plain
        if not self.rtcp_mux and not self._rtcp_latched:
            self.rtcp_remote = addr
            self._rtcp_latched = True
        self.rtcp.receive(data)

    # -- the shared clock -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.direction in ("sendrecv", "recvonly"):
            self._play_out()
        self._send()
        self._ts = (self._ts + SAMPLES_PER_TICK) & 0xFFFFFFFF
        if self.sending and self.engine.now >= self.rtcp.due:
            if self.rtcp.due == 0.0:
                self.rtcp.schedule(self.engine.now, initial=True)
            else:
                self._report()

    def _report(self, bye: bool = False) -> None:
        """Send our compound RTCP report (SR after we sent RTP, else RR) and schedule the next one."""
        rtcp = self.rtcp
        we_sent = self.sent > self._sent_at_report
        self._sent_at_report = self.sent
        rtcp.schedule(self.engine.now, we_sent=we_sent)
        if self.remote is None:
            return
        data = rtcp.build(packets_sent=self.sent, octets_sent=self.octets, rtp_timestamp=self._ts,
                          jitter_ts=self.jitter_ts, we_sent=we_sent, bye=bye)
        if self.srtp is not None:      # SRTCP (RFC 3711 §3.4) with the call's SRTP keys
            protected = self.srtp.protect_rtcp(data)
            if protected is None:
                return
            data = protected
        if self.rtcp_mux:
            if self.transport is not None:
                self.transport.sendto(data, self.remote)
        elif self.rtcp_transport is not None:
            self.rtcp_transport.sendto(data, self.rtcp_remote or (self.remote[0], self.remote[1] + 1))

    def _play_out(self) -> None:
        """Play out 20 ms worth of packets per tick, whatever their ptime (SIPp's pcap and some trunks send
        30 ms packets despite our a=ptime:20): a sample credit, not one packet per tick, keeps the rate exact."""
        self._credit += SAMPLES_PER_TICK
        jitter = self._jitter
        while self._credit > 0:
            frame = jitter.pop()
            if frame is None:
                self._credit = 0  # nothing buffered: do not build up debt while the far end is silent
                return
            self._credit -= self._deliver(frame)
        # more buffered than the latency bound (a burst read after our loop ran late): play it early, not drop it
        for _ in range(jitter.extra()):
            frame = jitter.pop()
            if frame is None:
                return
            self._deliver(frame)

    def _deliver(self, frame: Played) -> int:
        """Decode one played-out frame (silence for a lost one) and give it to the call; its samples."""
        if frame is LOST:
            pcm = b"\x00\x00" * self._last_samples
        else:
            self._last_samples = len(frame)  # G.711: one byte per sample
            pcm = self._decode(frame)
        call = self.call
        if call is not None:
            # when this frame arrived (the call's turn timeline dates caller speech by arrival, not by this
            # play-out, which the jitter buffer delays)
            call.inbound_arrived = self._jitter.arrived
            call.feed_audio(pcm)
        elif self.on_pcm is not None:
            self.on_pcm(pcm)
        else:
            self.unheard += 1
        return self._last_samples

    def _send(self) -> None:
        if not self.sending or self.transport is None or self.remote is None:
            return
        can_send = self.direction in ("sendrecv", "sendonly")
        if self._dtmf_tx is None and self._dtmf_pending:
            self._dtmf_tx = DtmfSender(self._dtmf_pending.pop(0))
        if self._dtmf_tx is not None and self.dtmf_payload_type is not None:
            step = self._dtmf_tx.next_step()
            if self._dtmf_tx.done:
                self._dtmf_tx = None
            if step is not None:
                if step.first:
                    self._dtmf_ts = self._ts
                if can_send:
                    self._emit(self.dtmf_payload_type, step.first, self._dtmf_ts, step.payload)
                return
        payload = None
        call = self.call
        if call is not None and can_send and call.bus is not None:
            while (item := call.next_outbound_nowait()) is not None:
                if isinstance(item, AudioFrame):
                    payload = self._encode(item.pcm)
                    break
                if isinstance(item, Mark):
                    call.feed_event(Mark(item.name))  # everything queued before it has now gone out
                elif isinstance(item, SendDtmf):
                    self._dtmf_pending.append(item.digits)
                # Clear: nothing is buffered on this side beyond the queue the bus already emptied
        if payload is None:
            if not can_send:
                return
            payload = self._silence
            self._idle = True
            marker = self._marker
        else:
            marker = self._marker or self._idle  # talk-spurt start
            self._idle = False
        self._marker = False
        self._emit(self.payload_type, marker, self._ts, payload)

    def _emit(self, pt: int, marker: bool, ts: int, payload: bytes) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        transport = self.transport
        if transport is None:   # closed: nothing to send on
            return
        packet = build_rtp(pt, marker, self._seq, ts, self.ssrc, payload)
        if self.srtp is not None:
            protected = self.srtp.protect(packet)
            if protected is None:
                return
            packet = protected
        transport.sendto(packet, self.remote)
        self.sent += 1
        self.octets += len(payload)
