"""The one small interface every carrier implements, and the registry the core finds carriers through.

The core never imports a carrier module: carriers are listed under the `telephony_gateway.carriers` entry-point
group in pyproject.toml and loaded by name at start-up. A carrier

* registers its webhook / websocket routes on the aiohttp app in `setup()`,
* turns carrier messages into bus frames and events by driving a `Call` (`call.attach()`, `call.feed_audio()`,
  `call.feed_event()`, `call.next_outbound()`, `call.end()`),
* performs outbound calls, hangup and transfer through the carrier in `dispatch()` and its `CallLeg`,
* checks credentials on import in `validate_import()`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .frames import TransferRequest
from .logsetup import ContextLogger

if TYPE_CHECKING:
    from .call import Call
    from .runtime import Gateway

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "telephony_gateway.carriers"


class CarrierError(Exception):
    """A carrier refused or failed an operation; `message` is safe to show to an API user (no secrets).

    `status` is the API status to answer with (the mapping of carrier answers is in gateway/carrier_rest.py),
    `field` the request field at fault when there is one, `retry_after` seconds for a 503 (carrier rate limit).
    """

    def __init__(self, message: str, status: int = 400, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after


@dataclass(frozen=True)
class ImportField:
    """One field of `POST /api/v1/phone_number/import/{provider}`; the API validates bodies against these.

    `secret` fields are stored apart and never returned or logged; `e164` fields are normalised to E.164;
    `kind` is one of str, int, bool, list.
    """

    name: str
    kind: type = str
    required: bool = False
    secret: bool = False
    default: Any = None
    e164: bool = False
    choices: tuple[Any, ...] = ()
    help: str = ""


@runtime_checkable
class CallLeg(Protocol):
    """The carrier side of one live call, as the core sees it.

    A leg whose carrier says text itself may set `says_text = True`: a transfer's text message is then left on the
    TransferRequest for it (Twilio's <Say>, Plivo's <Speak>); on other legs the gateway speaks it
    (gateway/speech.py) and plays it before the transfer."""

    async def hangup(self, call: Call, reason: str) -> None:
        """End the call at the carrier (REST update, BYE, closing the stream…)."""

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        """Move the caller to `request.number`, falling back to `request.backup_numbers` in order."""


class Carrier:
    """Base class with no-op defaults; a carrier overrides what it supports."""

    name: str = ""
    #: phone-number `provider` values this carrier handles (e.g. "twilio"; SIP handles "sip").
    providers: tuple[str, ...] = ()
    #: body of `POST /api/v1/phone_number/import/{provider}`; `number_field` holds the E.164 number.
    import_fields: tuple[ImportField, ...] = ()
    number_field: str = "phone_number"
    #: a call of this carrier can move to another process of the cluster while this one holds it (its media
    #: stream reached another worker, which adopted it: docs/deploy.md, "Ownership of a call"), so ending it here
    #: first checks in the store that this process still owns it (`CallManager.owns`)
    calls_move: bool = False

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.log = ContextLogger(log, {"carrier": self.name})
        #: set by the gateway once `start()` has returned (what /healthz waits for)
        self.up = False

    def waiting_for(self) -> list[str]:
        """What of this carrier is not up yet, as /healthz names it (`starting`)."""
        return [] if self.up else [self.name]

    def setup(self, app: Any) -> None:
        """Add routes to the aiohttp application (an /api/v1 route with gateway.api.routes.api_route(), so the
        OpenAPI document describes it from its models)."""

    async def start(self) -> None:
        """Start background work (listeners, registrations). Called once the store is open."""

    async def stop(self) -> None:
        """Stop background work and end this carrier's live calls."""

    def on_drain(self) -> None:
        """The gateway began draining (docs/deploy.md): hand over what other processes should now do (SIP: the
        trunks this process REGISTERs). Live calls are not this hook's business."""

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Check credentials / ownership before a number is stored; return fields to store (may add some).

        Raise CarrierError with a user-facing message when the carrier rejects them.
        """
        return fields

    async def on_number_imported(self, number: dict[str, Any]) -> None:
        """A number of this carrier was stored (e.g. start registration)."""

    async def on_number_deleted(self, number: dict[str, Any]) -> None:
        """A number of this carrier was deleted."""

    async def dispatch(self, call: Call, number: dict[str, Any], to_number: str) -> None:
        """Place an outbound call from `number` to `to_number` (E.164) for `call`."""
        raise CarrierError(f"carrier {self.name} cannot place outbound calls", 400)

    def check_agent_settings(self, settings: dict[str, Any]) -> None:
        """Check the agent settings this carrier reads (e.g. `settings.vonage`) against the carrier's documented
        ranges, so a value the carrier would refuse fails when the agent is saved, not on every dispatch.

        Raise CarrierError naming the field (dotted, e.g. `settings.vonage.amd.beep_timeout`)."""

    def metrics(self) -> dict[str, float]:
        """Carrier-specific Prometheus series, full names (e.g. `gateway_rtp_packets_sent_total`): `_total`
        names are exported as counters, the rest as gauges."""
        return {}

    async def probe(self, number: dict[str, Any]) -> dict[str, Any] | None:
        """A periodic health probe of an imported number's trunk / account (gateway/health.py), `number` with its
        secrets: `{"reachable": bool, "rtt_ms": float | None, "detail": str, "sip_status": str | None,
        "registration": str | None}`; None when this carrier has nothing to probe (its health then comes from
        the call log alone)."""
        return None

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Check that a trunk / account works; returns a report with a verdict per step."""
        raise CarrierError(f"carrier {self.name} has no connection test", 400)


def load_carriers(gateway: Gateway, names: list[str] | None = None) -> dict[str, Carrier]:
    """Instantiate the installed carriers (all, or those named)."""
    carriers: dict[str, Carrier] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and ep.name not in names:
            continue
        try:
            cls = ep.load()
        except ImportError:
            log.exception("carrier %s could not be loaded", ep.name, extra={"carrier": ep.name})
            continue
        carriers[ep.name] = cls(gateway)
        log.debug("carrier loaded", extra={"carrier": ep.name})
    return carriers
