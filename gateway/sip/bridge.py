"""Gateway-side bridge of two SIP legs' media, for transfers the trunk will not do by REFER; and the hold port
a caller's RTP session is attached to while the engine consults a transfer target.

Each RTP session is attached to a `BridgePort` (gateway/mediabridge.py) instead of a call: what one leg receives
(decoded to 8 kHz PCM16 by its jitter buffer on the shared clock) is queued for the other leg's next tick, and
RFC 4733 digits are relayed as digits. Both sessions tick on the one RTP clock, so the added delay is one or two
20 ms ticks; the queue is bounded so a stalled leg can never grow memory.
"""
from __future__ import annotations

import logging
from typing import Any

from ..mediabridge import BridgePort, HoldPort, pair_stats
from .ua import reason_header

__all__ = ["BridgePort", "HoldPort", "MediaBridge"]

log = logging.getLogger("gateway.sip.bridge")


class MediaBridge:
    """Two legs (objects with `.rtp`, `.session`, `.close()`) whose media the gateway connects."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b
        self.port_a, self.port_b = BridgePort.pair()
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
        return pair_stats(self.port_a, self.port_b)
