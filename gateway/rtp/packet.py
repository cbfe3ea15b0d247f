"""RTP packet parse/build.

The common case (version 2, no CSRC, no extension, no padding — what every trunk sends for G.711) is unpacked
with one struct call (≈0.3 µs); anything else goes through aiortc's full `RtpPacket` parser (≈3 µs), which
handles CSRC lists, header extensions and padding.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from aiortc.rtp import RtpPacket

_HEADER = struct.Struct("!BBHII")
HEADER_SIZE = _HEADER.size


class RtpHeader(NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


class RtpParseError(ValueError):
    pass


def parse_rtp(data: bytes) -> RtpHeader:
    if len(data) < HEADER_SIZE:
        raise RtpParseError("shorter than an RTP header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpParseError("not RTP version 2")
    if b0 & 0x3F == 0:  # no padding, no extension, CC = 0
        return RtpHeader(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[HEADER_SIZE:])
    try:
        p = RtpPacket.parse(data)
    except ValueError as e:
        raise RtpParseError(str(e)) from e
    return RtpHeader(p.payload_type, bool(p.marker), p.sequence_number, p.timestamp, p.ssrc, p.payload)


def build_rtp(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    return _HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                        timestamp & 0xFFFFFFFF, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """RTCP multiplexed on the RTP port (RFC 5761): packet types 200–204 sit where RTP has M+PT 72–76."""
    return len(data) > 1 and 192 <= data[1] <= 223
