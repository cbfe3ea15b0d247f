"""Gateway-side bridge of two SIP legs' media, for transfers the trunk will not do by REFER; and the hold port
a caller's RTP session is attached to while the engine consults a transfer target.

Each RTP session is attached to a `BridgePort` instead of a call: what one leg receives (decoded to 8 kHz PCM16 by
its jitter buffer on the shared clock) is queued for the other leg's next tick, and RFC 4733 digits are relayed
as digits. Both sessions tick on the one RTP clock, so the added delay is one or two 20 ms ticks; the queue is
bounded so a stalled leg can never grow memory.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..frames import AudioFrame, Dtmf, SendDtmf
from .ua import reason_header

log = logging.getLogger("gateway.sip.bridge")

MAX_QUEUED_FRAMES = 10  # 200 ms: beyond this the oldest audio is dropped (and counted)
RATE = 8000


class BridgePort:
    """Looks like a Call to an RtpSession: audio in goes to the peer port's queue; audio out comes from ours."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bus = True            # RtpSession only checks that a bus exists
        self.peer: BridgePort | None = None
        self.queue: deque[bytes] = deque()
        self.digits: deque[str] = deque()
        self.frames_in = self.frames_out = self.dropped = 0

    def feed_audio(self, pcm: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        self.frames_in += 1
        if len(peer.queue) >= MAX_QUEUED_FRAMES:
            peer.queue.popleft()
            peer.dropped += 1
        peer.queue.append(pcm)

    def feed_event(self, event: Any) -> None:
        if isinstance(event, Dtmf) and self.peer is not None:
            self.peer.digits.append(event.digit)

    def next_outbound_nowait(self) -> Any:
        if self.digits:
            return SendDtmf(self.digits.popleft())
        if self.queue:
            self.frames_out += 1
            return AudioFrame(self.queue.popleft(), RATE)
        return None


class HoldPort:
    """Looks like a Call to an RtpSession while its caller is on hold: what the caller says goes nowhere, what
    the caller hears is `music` (20 ms PCM16 frames at 8 kHz, e.g. music on hold) or, without it, silence (the
    session sends G.711 silence whenever nothing is queued)."""

    def __init__(self, music: Iterator[bytes] | None = None) -> None:
        self.bus = True            # RtpSession only checks that a bus exists
        self.music = music
        self.inbound_arrived: float | None = None

    def feed_audio(self, pcm: bytes) -> None:
        """The caller's audio while on hold is not heard by anyone."""

    def feed_event(self, event: Any) -> None:
        """Nor are the caller's keys."""

    def next_outbound_nowait(self) -> AudioFrame | None:
        frame = next(self.music, None) if self.music is not None else None
        if frame is None:
            self.music = None
            return None
        return AudioFrame(frame, RATE)


class MediaBridge:
    """Two legs (objects with `.rtp`, `.session`, `.close()`) whose media the gateway connects."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b
        self.port_a, self.port_b = BridgePort("a"), BridgePort("b")
        self.port_a.peer, self.port_b.peer = self.port_b, self.port_a
        self.active = False

    def start(self) -> None:
        self.a.rtp.attach(self.port_a)
        self.b.rtp.attach(self.port_b)
        self.active = True

    def other(self, leg: Any) -> Any:
        return self.b if leg is self.a else self.a

    async def hangup_other(self, leg: Any, reason: str) -> None:
        """One side is gone: hang up the other side with the same reason."""
        if not self.active:
            return
        self.active = False
        other = self.other(leg)
        session = getattr(other, "session", None)
        if session is not None and not session.ended.is_set():
            session.send_bye(reason_header(q850=16, text=reason or "Normal call clearing"))
        other.close()

    @property
    def stats(self) -> dict[str, int]:
        return {"a_to_b": self.port_a.frames_in, "b_to_a": self.port_b.frames_in,
                "dropped": self.port_a.dropped + self.port_b.dropped}
