"""Attended transfer (gateway/consult.py) for the carriers whose call media is one websocket per call: Exotel,
Vonage, Plivo and Telnyx. What they share is here; each carrier supplies three REST steps (`ConsultCarrier`).

* consult: the caller's socket is switched to a hold port (`Call.hold_frames()`, music on hold; what the caller
  says reaches nobody) and the target is called through the carrier's REST API exactly as the carrier places an
  outbound call of the gateway, with its media stream pointed back at us carrying a one-time consultation token.
  When that socket arrives it becomes the target's leg: it feeds the call (the engine hears the target) and sends
  what the call gives (the engine speaks to the target); `answered` is reported then.
* complete: the carrier's primitive for joining two existing calls where it has one (`consult_join`: Telnyx
  `bridge`, a Vonage named conversation, a Plivo conference; the gateway then leaves), else — or when the carrier
  refuses — the gateway bridges the two sockets itself (gateway/mediabridge.py: caller's audio to the target's
  socket and back, converted between their sample rates, one frame per 20 ms, no engine) until either side hangs
  up, then both end. `method` in the call log says which.
* cancel, a target that does not answer or hangs up, a failed dial: the target's call ends, the caller's socket
  takes the call again and the engine talks to the caller.

The call's outbound bus has one reader at a time (carriers/mediasocket.py): the caller's socket gives the call up
before the target's takes it, and the target's before the caller's takes it back.

In a cluster the target's socket may reach another process than the one running the consultation (the carrier's
balancer, or the kernel spreading a node's workers' connections). The consultation cannot move (the owner's engine
is mid-conversation), so that process relays the socket to the owner (carriers/streamrelay.py) once it has proved
itself against the call's row: the SHA-256 of the one-time token (`extra.consult_token_sha256`, committed before
the target is dialled) for Vonage, Plivo and Telnyx; for Exotel, whose socket carries no token, the consultation
call's CallSid (`extra.consult_carrier_id`, committed once the carrier returned it) and the ExoPhone's Basic auth.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any, Protocol, cast

from gateway.carrier import CarrierError
from gateway.consult import (
    ANSWERED,
    CANCELLED,
    ENDED,
    FAILED,
    ConsultError,
    DelegatingConsultLeg,
    RunningConsultation,
)
from gateway.frames import ConsultRequest, HangupSource
from gateway.mediabridge import BridgePort, HoldPort, pair_stats

from .mediasocket import MarkedPlayout, StreamClosed, token_digest
from .streamrelay import RelayStream, to_owner

if TYPE_CHECKING:
    from gateway.call import Call

log = logging.getLogger("carriers.consult")

#: 500 ms of audio may wait for a bridged socket's sender (Exotel delivers 100 ms and larger chunks)
BRIDGE_QUEUE_FRAMES = 25
#: a socket must leave the call's audio within this many seconds before the other one takes it
LEAVE_TIMEOUT = 5.0
#: seconds the target's socket may take to come (ringing included; a minute more than the agent's transfer ring
#: timeout when that is longer) when the carrier reports nothing: then the consultation is `failed` and the caller
#: is back with the engine (a lost status callback never holds the caller)
ANSWER_TIMEOUT = 150.0


#: the call-log `extra` keys another process of the cluster recognises a consultation's target socket by
TOKEN_KEY = "consult_token_sha256"
TARGET_KEY = "consult_carrier_id"


class ConsultCarrier(Protocol):
    """What a media-socket carrier does for an attended transfer."""

    name: str
    #: the Gateway (store, control bus): the consultation is published in the call's row for the cluster
    gateway: Any

    async def consult_dial(self, c: SocketConsultation) -> None:
        """Call `c.number` with the media stream pointed at the consultation socket (`c.token`); set
        `c.target_id` to the carrier's id of that call. Raise CarrierError when the carrier refuses."""

    async def consult_hangup(self, c: SocketConsultation) -> None:
        """End (or cancel, while it rings) the target's call; never raises."""

    async def consult_join(self, c: SocketConsultation) -> str | None:
        """Join caller and target with the carrier's own primitive and return its name (the call-log `method`);
        None when the carrier has none. Raise CarrierError when it refused before moving either call."""

    def consult_released(self, c: SocketConsultation) -> None:
        """The carrier joined caller and target: the caller's leg must not hang up or end the call when its
        socket closes (the gateway has left the call)."""


class SocketConsultation:
    """The consultation call of one media-socket call. `host` is the carrier's per-call state (with `stream`, the
    caller's socket, and `consultation`, this object while it runs)."""

    def __init__(self, carrier: ConsultCarrier, host: Any, caller: MarkedPlayout, number: str) -> None:
        self.carrier = carrier
        self.host = host
        self.caller = caller
        self.call: Call = caller.live_call
        self.number = number
        #: one-time token in the target stream's URL (or headers): the socket that presents it is the target
        self.token = secrets.token_urlsafe(18)
        #: the carrier's id of the target's call (Telnyx call_control_id, Vonage uuid, Plivo CallUUID or request
        #: uuid, Exotel CallSid); `target_answered_id` is set once it answered where that id changes (Plivo)
        self.target_id: str | None = None
        self.target: MarkedPlayout | None = None
        #: carrier-specific state of the target's call (Vonage keeps a call state for its REST requests)
        self.target_state: Any = None
        self.cancelled = False
        self.completing = False
        self.over = False
        self.bridge: tuple[BridgePort, BridgePort] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def room(self) -> str:
        """The name the carrier's join primitive uses (conference / conversation): one per call."""
        return f"gw-{self.call.id}"

    # -- dialling ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._publish({TOKEN_KEY: token_digest(self.token)})    # before the target can answer
        self.caller.switch_port(HoldPort(self.call.hold_frames(), self.caller_rate))
        try:
            await self.carrier.consult_dial(self)
        except BaseException:
            self.over = True
            self._caller_back()
            raise
        await self._publish({TARGET_KEY: self.target_id})
        self.call.log.info("consultation call placed", extra={"target": self.number})
        opts = ((self.call.agent or {}).get("settings") or {}).get("transfer") or {}
        ring = opts.get("timeout") or opts.get("ring_timeout")
        after = max(ANSWER_TIMEOUT, float(ring) + 60) if isinstance(ring, (int, float)) and ring > 0 \
            else ANSWER_TIMEOUT
        self._watchdog = asyncio.get_running_loop().call_later(after, self._no_answer)

    async def _publish(self, extra: dict[str, Any]) -> None:
        """Record `extra` in the call's row, committed at once in a cluster: the target's socket may reach another
        process, which relays it here once it matches the row (`relay_target`)."""
        await self.call.record(extra=extra)
        if self.carrier.gateway.control.clustered:
            await self.carrier.gateway.store.flush()

    def _no_answer(self) -> None:
        self._watchdog = None
        if self.target is None and not self.over:
            self.call.log.warning("the consultation call's socket never came and the carrier reported nothing")
            task = asyncio.ensure_future(self._finish(FAILED, "no-answer (no socket, no report from the carrier)"))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

    @property
    def caller_rate(self) -> int:
        return int(getattr(self.caller, "rate", 8000))

    def token_ok(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.token.encode())

    async def attach_target(self, stream: MarkedPlayout, rate: int) -> None:
        """The target's socket presented our token: it becomes the target's leg (answered). StreamClosed when it
        comes too late (the consultation is over) or twice; `rate` must be the call's (its bus)."""
        codes = stream.close_codes
        call = self.call
        if self.over or self.target is not None or not call.is_active or self.host.consultation is not self:
            raise StreamClosed(codes.UNKNOWN_CALL, "no consultation is waiting for this stream")
        bus = call.bus
        if bus is None or bus.carrier_rate != rate:
            raise StreamClosed(codes.BAD_MEDIA_FORMAT, f"the target's stream ({rate} Hz) must have the caller's "
                                                       f"sample rate ({bus.carrier_rate if bus else '?'} Hz)")
        self.token = secrets.token_urlsafe(18)        # one use only
        stream.call, stream.consultation = call, self
        if not await self.caller.off_call(LEAVE_TIMEOUT):
            raise StreamClosed(codes.UNKNOWN_CALL, "the caller's socket did not leave the call in time")
        self.target = stream
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await call.consult_update(ANSWERED)

    # -- the target's call ends ------------------------------------------------------------------------------
    async def dial_failed(self, status: str) -> None:
        """The carrier says the target's call ended before its socket came (busy, no answer, failed)."""
        if self.target is None:
            await self._finish(CANCELLED if self.cancelled else FAILED, "" if self.cancelled else status,
                               hang_up=False)
        else:
            await self.target_gone()

    async def target_gone(self, reason: str = "target hung up") -> None:
        """The target's call or socket ended: during the consultation the caller is back with the engine; when
        bridged the caller's call ends too; while the carrier joins them it is expected."""
        if self.bridge is not None:
            await self._bridge_over(reason)
            return
        if self.completing or self.over:
            return
        await self._finish(CANCELLED if self.cancelled else ENDED, "" if self.cancelled else reason)

    async def stream_gone(self, stream: MarkedPlayout) -> None:
        """The target's socket closed (the streams' finish path calls this instead of ending the call)."""
        if stream is self.target:
            await self.target_gone()

    async def _finish(self, state: str, reason: str, *, hang_up: bool = True) -> None:
        """The consultation is over without a transfer: the target's call ends, the caller gets the call back."""
        if self.over:
            return
        self.over = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.host.consultation is self:
            self.host.consultation = None
        target = self.target
        if target is not None:
            await target.leave_call(HoldPort(None, int(getattr(target, "rate", 8000))), LEAVE_TIMEOUT)
            if not target.ws.closed:
                await target.ws.close(code=1000, message=b"consultation over")
        if hang_up:
            await self.carrier.consult_hangup(self)
        if self.call.is_active:
            self._caller_back()
            await self.call.consult_update(state, reason)     # (no await since the switch: the bus is cleared first)

    def _caller_back(self) -> None:
        if not self.caller.ws.closed and self.caller.port is not None:
            self.caller.switch_port(None)

    # -- cancel / complete / abandon --------------------------------------------------------------------------
    async def cancel(self) -> None:
        self.cancelled = True
        await self._finish(CANCELLED, "")

    def abandon(self) -> None:
        """The caller's call ended (also while bridged): the target's call ends with it."""
        if self.host.consultation is self:
            self.host.consultation = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.over and self.bridge is None:
            return
        self.over = True
        task = asyncio.ensure_future(self._abandon())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _abandon(self) -> None:
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            await self.call.record(extra={"bridge": pair_stats(*bridge)})
        target = self.target
        if target is not None and not target.ws.closed:
            await target.ws.close(code=1000, message=b"call ended")
        await self.carrier.consult_hangup(self)

    async def complete(self) -> None:
        call = self.call
        target = self.target
        if target is None or self.over:
            raise CarrierError("the consultation call has not been answered", 409)
        self.completing = True
        try:
            method = await self.carrier.consult_join(self)
        except CarrierError as e:
            call.log.warning("the carrier did not join caller and target (%s): the gateway bridges them",
                             e.message)
            await call.record(extra={"consult_join_error": e.message[:200]})
            method = None
        if method is not None:
            self.over = True
            self.host.consultation = None
            self.carrier.consult_released(self)
            await call.consult_completed(method)
            await call.end(HangupSource.SYSTEM, f"transferred to {self.number} (attended)")
            return
        if target.ws.closed or self.caller.ws.closed:
            self.completing = False
            await self.target_gone("target hung up while being transferred")
            raise CarrierError("the transfer failed: the target's or the caller's socket closed", 502)
        await self._bridge(target)

    async def _bridge(self, target: MarkedPlayout) -> None:
        """The gateway relays caller ↔ target itself until either hangs up."""
        a, b = BridgePort.pair(self.caller_rate, int(getattr(target, "rate", 8000)), BRIDGE_QUEUE_FRAMES)
        if not await target.leave_call(b, LEAVE_TIMEOUT):
            self.call.log.warning("the target's socket did not leave the call in time; bridging anyway")
        self.caller.switch_port(a)
        self.bridge = (a, b)
        self.over = True        # (host.consultation stays: the caller's end ends the target's call, abandon())
        await self.call.consult_completed("bridge")
        self.call.log.info("caller and target bridged by the gateway", extra={"target": self.number})

    async def _bridge_over(self, reason: str) -> None:
        """The target hung up while bridged: the caller's call ends too (the caller hanging up: `abandon`)."""
        bridge, self.bridge = self.bridge, None
        if bridge is None:
            return
        await self.call.record(extra={"bridge": pair_stats(*bridge)})
        await self.carrier.consult_hangup(self)
        # the caller's call ends by its leg's own hangup (REST, or closing the socket)
        await self.call.request_hangup(HangupSource.USER, f"transfer target hung up: {reason}"[:120], immediate=True)


_tasks: set[asyncio.Task[None]] = set()


async def consult_row(gateway: Any, name: str, call_id: str, token: str, stream: MarkedPlayout,
                      bad_token: int) -> dict[str, Any]:
    """The open row of call `call_id` (carrier `name`) whose consultation's token is `token`, read by a process
    that does not run that consultation (the socket is then relayed to the owner, `relay_target`). StreamClosed
    (`UNKNOWN_CALL`, or `bad_token` when the token's hash is not the recorded one) otherwise."""
    codes = stream.close_codes
    row: dict[str, Any] | None = await gateway.store.find_call(call_uuid=call_id, flush=False) \
        if call_id and gateway.control.clustered else None
    if row is None or row["channel_type"] != name or row["ended_at"] is not None:
        raise StreamClosed(codes.UNKNOWN_CALL, "no consultation is waiting for this stream")
    want = (row.get("extra") or {}).get(TOKEN_KEY)
    if not token or not isinstance(want, str) or not hmac.compare_digest(token_digest(token).encode(), want.encode()):
        raise StreamClosed(bad_token, "stream token does not match")
    return row


async def relay_target(gateway: Any, row: dict[str, Any], stream: Any,
                       headers: dict[str, str] | None = None) -> RelayStream:
    """Where the consultation target's socket goes when another live process holds the call of `row` (already
    checked against it): that process's private URL (carriers/streamrelay.py), with the upgrade `headers` it needs
    to check the socket again. StreamClosed when the owner is this process or not reachable."""
    target = await to_owner(gateway, row.get("owner"), stream.request, headers or {})
    if target is None:
        raise StreamClosed(stream.close_codes.UNKNOWN_CALL, "no consultation is waiting for this stream")
    return target


class SocketConsultLeg(DelegatingConsultLeg):
    """The ConsultingLeg half of a media-socket carrier's leg: `st` is the carrier's per-call state (`stream`,
    `consultation`) and `carrier` a ConsultCarrier."""

    st: Any
    carrier: Any

    def consult_carrier(self) -> ConsultCarrier:
        """The carrier's REST steps (the carrier itself, or its helper object)."""
        return cast(ConsultCarrier, self.carrier)

    def _running(self) -> RunningConsultation:
        c = self.st.consultation
        if c is None:      # e.g. the target hung up a moment ago
            raise ConsultError("no consultation call on this call")
        return cast(SocketConsultation, c)

    async def consult(self, call: Call, request: ConsultRequest) -> None:
        stream = self.st.stream
        if stream is None or stream.ws.closed or stream.port is not None:
            raise CarrierError("the call has no live media stream to consult from", 409)
        if self.st.consultation is not None:
            raise CarrierError("a consultation call is already running", 409)
        c = SocketConsultation(self.consult_carrier(), self.st, stream, request.number)
        self.st.consultation = c
        try:
            await c.start()
        except BaseException:
            if self.st.consultation is c:
                self.st.consultation = None
            raise
