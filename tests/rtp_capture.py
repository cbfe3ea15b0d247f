"""Capture RTP on the loopback interface, as a packet sniffer on the wire would, for end-to-end timing checks.

The gateway latches its RTP onto the address the far end's media comes from (symmetric RTP), so a test cannot put
its own UDP listener in the path; instead it reads every UDP datagram on `lo` through an AF_PACKET socket (root,
which the test machines and CI are) and keeps those between the given ports. Times are the capture's monotonic
clock when the packet is read, so packets in both directions are on one time line and in the order the kernel saw
them (on a busy box the reading thread runs behind: compare times for order, not as intervals). Leaving the block
reads everything still queued first.
"""
from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_STATISTICS = 263, 6           # linux/if_packet.h
SO_ATTACH_FILTER, SO_RCVBUFFORCE = 26, 33        # asm-generic/socket.h
#: classic BPF (linux/filter.h), run in the kernel: keep IPv4 UDP only. On a busy machine the loopback carries
#: every other process's traffic too (PostgreSQL, HTTP, load tests); queueing all of it for a Python thread that
#: the GIL and the scheduler hold up overflowed the socket and dropped packets of the stream under test.
_UDP_ONLY = [(0x28, 0, 0, 12),          # ldh [12]         ethertype (lo has an all-zero Ethernet header)
             (0x15, 0, 3, 0x0800),      # jeq IPv4, else drop
             (0x30, 0, 0, 23),          # ldb [23]         IP protocol
             (0x15, 0, 1, 17),          # jeq UDP, else drop
             (0x06, 0, 0, 0xFFFF),      # ret: keep (whole datagram)
             (0x06, 0, 0, 0)]           # ret: drop


@dataclass(frozen=True, slots=True)
class RtpPacket:
    at: float            # time.monotonic() when captured
    src_port: int
    dst_port: int
    seq: int
    ssrc: int
    payload: bytes


def can_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        return True
    except (PermissionError, OSError, AttributeError):
        return False


@dataclass(frozen=True, slots=True)
class SipRequest:
    at: float            # time.monotonic() when captured, on the packets' time line
    dst_port: int
    method: str


class LoopbackRtpCapture:
    """`with LoopbackRtpCapture(ports) as cap:` … `cap.packets` holds RTP datagrams whose source or destination port
    is in `ports` (a container, e.g. a range), captured on `lo` by a background thread until the block ends.
    Other processes on the machine may use the same ports: pick the stream out by its SSRC and port pair.
    `sip_ports`: SIP requests sent over UDP to these ports go to `cap.requests` (method and time), so a test can
    say what audio went out before, e.g., a REFER."""

    def __init__(self, ports, sip_ports=()) -> None:
        self.ports = ports
        self.sip_ports = sip_ports
        self.packets: list[RtpPacket] = []
        self.requests: list[SipRequest] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._filter = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in _UDP_ONLY))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                              struct.pack("HL", len(_UDP_ONLY), ctypes.addressof(self._filter)))
        # room for seconds of backlog while the capture thread waits for the GIL (root may pass rmem_max)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self._sock.bind(("lo", 0))
        self.drops = 0       # datagrams the kernel dropped for want of room (a failing test should print it)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="rtp-capture", daemon=True)

    def __enter__(self) -> LoopbackRtpCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)    # it reads what is queued first: a busy box leaves seconds of packets behind
        try:
            self.drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        except OSError:
            pass
        self._sock.close()

    def _run(self) -> None:
        seen: set[tuple[int, int, int]] = set()
        while True:
            try:
                frame, (_, proto, pkttype, *_rest) = self._sock.recvfrom(65535)
            except TimeoutError:
                if self._stop.is_set():
                    return      # stopped, and nothing left in the queue
                continue
            except OSError:
                return
            now = time.monotonic()
            if proto != 0x0800 or len(frame) < 14 + 20 + 8 + 12:
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:                     # UDP
                continue
            src, dst = struct.unpack("!HH", ip[ihl:ihl + 4])
            if dst in self.sip_ports and pkttype == socket.PACKET_HOST:   # each datagram once: as received
                method = ip[ihl + 8:ihl + 8 + 16].split(b" ", 1)[0]
                if method.isalpha() and method.isupper():
                    self.requests.append(SipRequest(now, dst, method.decode()))
                continue
            if src not in self.ports and dst not in self.ports:
                continue
            rtp = ip[ihl + 8:]
            if len(rtp) < 12 or rtp[0] >> 6 != 2 or 72 <= (rtp[1] & 0x7F) <= 76:   # RTP v2, not RTCP
                continue
            seq, ssrc = struct.unpack("!H", rtp[2:4])[0], struct.unpack("!I", rtp[8:12])[0]
            key = (src, dst, seq)
            if key in seen:                     # loopback shows each datagram twice (outgoing and incoming)
                continue
            seen.add(key)
            cc = rtp[0] & 0x0F
            self.packets.append(RtpPacket(now, src, dst, seq, ssrc, bytes(rtp[12 + 4 * cc:])))
