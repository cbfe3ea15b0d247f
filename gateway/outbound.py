"""Placing one outbound call through its number's carrier: what `POST /calls/dispatch` and the dispatch queue
(gateway/dispatcher.py) both do once they know the agent, the number and whom to call."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .carrier import CarrierError
from .frames import HangupSource
from .redact import MASK

if TYPE_CHECKING:
    from .call import Call
    from .runtime import Gateway

log = logging.getLogger("gateway.outbound")


def scrub(value: Any, secrets: dict[str, Any]) -> Any:
    """Replace any secret value a carrier might echo (in a report or an error) with the mask, in every string."""
    hidden = sorted({str(v) for v in secrets.values() if v not in (None, "") and len(str(v)) >= 3},
                    key=len, reverse=True)
    if not hidden:
        return value

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for h in hidden:
                v = v.replace(h, MASK)
            return v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(value)


class DispatchFailed(Exception):
    """The carrier refused or failed the call; the call is in the log as failed (`call`), `error` says why (a
    CarrierError with secrets scrubbed, or None for a bug in the carrier module, which is logged)."""

    def __init__(self, call: Call, error: CarrierError | None) -> None:
        super().__init__(error.message if error else "dispatch_error")
        self.call = call
        self.error = error


async def place_call(gw: Gateway, *, number: dict[str, Any], agent: dict[str, Any], to_number: str,
                     call_context: dict[str, Any], queue_item_id: int | None = None,
                     bulk_call_id: int | None = None, attempt: int | None = None,
                     recording: dict[str, Any] | None = None,
                     before_send: Callable[[], Awaitable[None]] | None = None) -> Call:
    """Open the call (raises CapacityError / ChannelLimitError before anything reaches the carrier) and hand it
    to the number's carrier; raises DispatchFailed when the carrier does not take it. `number` carries its
    secrets (the carrier needs them); a queued call names its queue item, bulk call and attempt (1, 2… with
    retries) for its call-log row; `recording` overrides the agent's recording settings for this call;
    `before_send` is awaited between opening the call and handing it to the carrier (the dispatch queue's send
    gate, gateway/sendgate.py)."""
    carrier = gw.carrier_for(number["provider"])
    if carrier is None:
        raise CarrierError(f"phone number {number['id']} uses provider {number['provider']!r}, which has no carrier "
                           "loaded on this gateway", 409, "from_number_id")
    call = await gw.calls.create(carrier=carrier.name, direction="outbound", from_number=number["phone_number"],
                                 to_number=to_number, number=number, agent=agent, call_context=call_context,
                                 status="queued", queue_item_id=queue_item_id, bulk_call_id=bulk_call_id,
                                 attempt=attempt, recording=recording)
    try:
        if before_send is not None:
            await before_send()
        await carrier.dispatch(call, number, to_number)
    except CarrierError as e:
        message = scrub(e.message, number.get("secrets") or {})
        await call.end(HangupSource.CARRIER, message, status="failed")
        raise DispatchFailed(call, CarrierError(message, e.status, e.field, e.retry_after)) from None
    except Exception:
        # a bug in a carrier module: the call fails and the client is told so, never a bare 500
        log.exception("carrier dispatch failed", extra={"call_id": call.id, "carrier": carrier.name})
        await call.end(HangupSource.CARRIER, "dispatch_error", status="failed")
        raise DispatchFailed(call, None) from None
    log.info("call dispatched", extra={"call_id": call.id, "carrier": carrier.name})
    return call
