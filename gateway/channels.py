"""Per-number channel limit and outbound pace: the two settings every carrier's numbers take besides their own.

`channels`: at most this many calls (inbound and outbound together) live on the number at once, counted across
every process of a cluster (gateway/store/channels.py). Over it, carriers refuse the call as busy: SIP `486 Busy
Here` with a Warning naming the limit, Twilio/SignalWire `<Reject reason="busy">`, Plivo `<Hangup
reason="busy">`, Telnyx `reject` with `USER_BUSY`, Vonage a "lines are busy" NCCO, Exotel a `TRY_AGAIN` close,
`POST /calls/dispatch` a 429 with Retry-After. A refused inbound call keeps a closed call-log row (`rejected`,
hangup_reason `channel_limit`: gateway/callmanager.py).

`max_cps`: outbound calls started per second on the number / trunk, for the cluster as a whole
(gateway/store/dispatchq.py). Queued calls wait for their slot; a direct dispatch without a free slot is a 429
with Retry-After.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .carrier import ImportField

#: import / update fields every provider's numbers accept (gateway/api/numbers.py adds them to the carrier's own)
LIMIT_FIELDS = (
    ImportField("channels", int, help="at most this many live calls on the number (none: no limit)"),
    ImportField("max_cps", float, help="outbound calls started per second on the number / trunk (none: no limit)"),
)

#: seconds a refused caller is told to wait (SIP Retry-After, HTTP 429 Retry-After) when its number is full
CHANNEL_RETRY_AFTER = 5


@dataclass(frozen=True)
class Limits:
    channels: int | None = None
    max_cps: float | None = None

    @classmethod
    def of(cls, number: dict[str, Any] | None) -> Limits:
        config = (number or {}).get("config") or {}
        channels, cps = config.get("channels"), config.get("max_cps")
        return cls(int(channels) if channels else None, float(cps) if cps else None)

