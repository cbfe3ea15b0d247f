"""RFC 4733 telephone-event payloads: decoding received events and generating the packets to send one."""
from __future__ import annotations

import struct
from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"
_PAYLOAD = struct.Struct("!BBH")

#: how long a generated digit lasts and the gap after it (ms); common PSTN values, RFC 4733 §2.5.1
TONE_MS = 100
GAP_MS = 60
END_REPEATS = 3  # the end packet is sent three times (RFC 4733 §2.5.1.4)


def encode_event(digit: str, end: bool, duration: int, volume: int = 10) -> bytes:
    return _PAYLOAD.pack(EVENTS.index(digit.upper()), (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def decode_event(payload: bytes) -> tuple[str | None, bool, int]:
    """(digit or None for non-DTMF events, end flag, duration in timestamp units)."""
    if len(payload) < 4:
        raise ValueError("telephone-event payload shorter than 4 bytes")
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return (EVENTS[event] if event < len(EVENTS) else None), bool(flags & 0x80), duration


class DtmfReceiver:
    """Turns a stream of (possibly repeated, possibly lossy) event packets into one report per key press.

    A press is identified by its RTP timestamp. It is reported at its first end packet (with its duration); a
    press whose end packets were all lost is reported when the next press (new timestamp) begins.
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._current: tuple[int, str] | None = None
        self._reported: set[int] = set()

    def receive(self, timestamp: int, payload: bytes) -> list[tuple[str, int]]:
        digit, end, duration = decode_event(payload)
        out: list[tuple[str, int]] = []
        if self._current and self._current[0] != timestamp and self._current[0] not in self._reported:
            out.append((self._current[1], 0))
            self._reported.add(self._current[0])
        if digit is None:
            return out
        self._current = (timestamp, digit)
        if end and timestamp not in self._reported:
            self._reported.add(timestamp)
            out.append((digit, duration * 1000 // self.clock_rate))
        if len(self._reported) > 64:
            self._reported = {timestamp}
        return out


@dataclass(frozen=True)
class DtmfStep:
    payload: bytes
    end: bool
    first: bool  # first packet of a key press: new RTP timestamp, marker bit set


class DtmfSender:
    """Packet plan for sending digits, one step per 20 ms clock tick (None = a tick of normal audio/silence)."""

    def __init__(self, digits: str, samples_per_tick: int = 160) -> None:
        self._plan: list[DtmfStep | None] = []
        ticks = TONE_MS // 20
        for d in digits:
            if d.upper() not in EVENTS:
                raise ValueError(f"not a DTMF digit: {d!r}")
            for i in range(1, ticks + 1):
                self._plan.append(DtmfStep(encode_event(d, False, i * samples_per_tick), False, i == 1))
            end = encode_event(d, True, ticks * samples_per_tick)
            self._plan += [DtmfStep(end, True, False)] * END_REPEATS
            self._plan += [None] * (GAP_MS // 20)
        self._i = 0

    @property
    def done(self) -> bool:
        return self._i >= len(self._plan)

    def next_step(self) -> DtmfStep | None:
        step = self._plan[self._i]
        self._i += 1
        return step
