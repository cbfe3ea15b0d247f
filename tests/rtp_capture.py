"""Capture RTP on the loopback interface, as a packet sniffer on the wire would, for end-to-end timing checks.

The gateway latches its RTP onto the address the far end's media comes from (symmetric RTP), so a test cannot put
its own UDP listener in the path; instead it reads every UDP datagram on `lo` through an AF_PACKET socket (root,
which the test machines and CI are) and keeps those between the given ports. Times are the capture's monotonic
clock, so packets in both directions are on one time line.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003


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


class LoopbackRtpCapture:
    """`with LoopbackRtpCapture(ports) as cap:` … `cap.packets` holds RTP datagrams whose source or destination port
    is in `ports` (a container, e.g. a range), captured on `lo` by a background thread until the block ends.
    Other processes on the machine may use the same ports: pick the stream out by its SSRC and port pair."""

    def __init__(self, ports) -> None:
        self.ports = ports
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="rtp-capture", daemon=True)

    def __enter__(self) -> LoopbackRtpCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _run(self) -> None:
        seen: set[tuple[int, int, int]] = set()
        while not self._stop.is_set():
            try:
                frame, (_, proto, pkttype, *_rest) = self._sock.recvfrom(65535)
            except TimeoutError:
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
