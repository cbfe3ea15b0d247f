"""What Telnyx and Plivo share: calls controlled over a JSON/form REST API, audio over a Twilio-like media socket.

Both carriers are told where our media socket is by URL (Telnyx `stream_url`, Plivo's `<Stream>` text) and neither
signs the websocket upgrade, so the URL carries our call id and a one-time token (`?call_id=…&token=…`): the
socket that presents it claims the call once. In a cluster the socket may reach another process than the one
that handed the URL out: the SHA-256 of the token is in the call's row (`extra.<carrier>_stream_token_sha256`,
committed before the URL leaves), so that process adopts the call (docs/deploy.md) once the token matches. The
rest is the same state machine for both:

    connecting → live ⇄ transferring (→ released once a target answers) ; reconnecting after every target failed

`RestLeg` is the CallLeg the core drives (hangup, transfer), `RestCallCarrier` the bookkeeping (legs by call id,
watchdogs, background REST tasks, claiming a stream, the transfer attempts); each carrier supplies its REST calls
(`rest_hangup`, `rest_transfer`) and its webhooks, and says what follows a failed transfer attempt.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.amd import maybe_start_amd
from gateway.carrier import CarrierError
from gateway.frames import HangupSource, TransferRequest, TransferResult

from .forwarding import ForwardingCarrier
from .mediasocket import StreamClosed, token_digest
from .socket_consult import SocketConsultation, SocketConsultLeg, consult_row, relay_target
from .twilio_media import CloseCode, MediaStream
from .wsdirect import DirectWebSocket

if TYPE_CHECKING:
    from gateway.call import Call

log = logging.getLogger("carriers.restcall")


@dataclass
class LegState:
    call: Call
    number: dict[str, Any] | None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    carrier_id: str | None = None         # Telnyx call_control_id, Plivo CallUUID
    stream: MediaStream | None = None
    state: str = "connecting"
    transfer_targets: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    watchdog: asyncio.TimerHandle | None = None
    hangup_sent: bool = False
    amd_requested: bool = False
    #: the attended transfer's consultation call while one runs (carriers/socket_consult.py)
    consultation: SocketConsultation | None = None


class RestLeg(SocketConsultLeg):
    """The core's CallLeg: hangup and transfer go to the carrier's REST API, after what the engine said has played;
    attended transfer is carriers/socket_consult.py's, with the carrier's REST steps."""

    carrier: RestCallCarrier
    st: LegState

    def __init__(self, carrier: RestCallCarrier, st: LegState) -> None:
        self.carrier = carrier
        self.st = st

    @property
    def says_text(self) -> bool:
        """Whether the carrier says a transfer's text message itself (gateway/carrier.py CallLeg)."""
        return self.carrier.says_text

    async def hangup(self, call: Call, reason: str) -> None:
        if self.st.stream is not None and call.hangup is not None and call.hangup.source is HangupSource.AGENT:
            await self.st.stream.drain()     # the goodbye is heard before the line drops
        # the call ends here at once; the REST request finishes in the background (bounded by carrier_timeout)
        self.carrier.background(self.carrier.hangup_once(self.st))

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        st = self.st
        if not st.carrier_id:
            raise CarrierError(f"the {self.carrier.label} call has no call id yet", 409)
        if st.stream is not None:
            await st.stream.drain()   # what the engine said before asking to transfer is heard first
        st.transfer_targets = [request.number, *[n for n in request.backup_numbers if n != request.number]]
        st.attempts = []
        previous, st.state = st.state, "transferring"
        await call.record(transfer_target=st.transfer_targets[0])
        try:
            await self.carrier.rest_transfer(st, 0, request.message)
        except Exception:
            st.state = previous
            raise
        self.carrier.arm_watchdog(st, self.carrier.transfer_timeout, "transfer_timeout")
        call.log.info("transfer started", extra={"targets": len(st.transfer_targets)})

    async def stream_gone(self, stream: MediaStream) -> None:
        """The socket closed: the caller left, unless a transfer or a re-stream is under way."""
        st = self.st
        if st.stream is not stream:
            return
        st.stream = None
        if not st.call.is_active or st.state in ("transferring", "reconnecting", "released"):
            return
        source, reason = stream.end_source()
        await st.call.end(source, reason)


class RestCallCarrier(ForwardingCarrier):
    """Legs by call id, watchdogs, background REST tasks, stream claims and transfer attempts."""

    label = ""
    stream_class: type[MediaStream] = MediaStream
    #: `rest_transfer` says a transfer's text message before dialling (Plivo's <Speak>); else the gateway does
    says_text = False
    #: seconds a new media socket may take to send `start`
    start_timeout = 5.0
    #: seconds from answering (or dialling out) until the media socket must be up
    attach_timeout = 90.0
    #: seconds a transfer may take to report back before the call is let go
    transfer_timeout = 600.0
    #: seconds each transfer target rings
    ring_timeout = 30

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        self.legs: dict[str, LegState] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the carrier's REST calls --------------------------------------------------------------------------------
    async def rest_hangup(self, st: LegState) -> None:
        raise NotImplementedError

    async def rest_transfer(self, st: LegState, attempt: int, message: str | None = None) -> None:
        """Dial `st.transfer_targets[attempt]` for the caller."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.gateway.calls.subscribe(self._on_call_event)
        await super().start()      # forwarded webhooks (carriers/forwarding.py)

    async def stop(self) -> None:
        self.gateway.calls.unsubscribe(self._on_call_event)
        for st in list(self.legs.values()):
            if st.watchdog is not None:
                st.watchdog.cancel()
            if st.call.is_active:
                await st.call.request_hangup(HangupSource.SYSTEM, "shutdown", immediate=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.legs.clear()

    def _on_call_event(self, kind: str, call: Call) -> None:
        if kind not in ("call_ended", "call_released") or call.carrier != self.name:
            return
        st = self.legs.pop(call.id, None)
        if st is None:
            return
        if st.watchdog is not None:
            st.watchdog.cancel()
            st.watchdog = None
        if st.consultation is not None:     # the target's call ends with the caller's
            st.consultation.abandon()
        if kind == "call_released":     # another process adopted the stream: the call goes on there
            return
        source = call.hangup.source if call.hangup else HangupSource.SYSTEM
        if source in (HangupSource.AGENT, HangupSource.SYSTEM) and st.state != "released":
            # ended on our side before the leg could act (API hangup while ringing, watchdog, shutdown)
            self.background(self.hangup_once(st))

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A REST request nobody waits for: kept until done so shutdown lets it finish; failures are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s background request failed", self.label, exc_info=t.exception(),
                          extra={"carrier": self.name})
        task.add_done_callback(done)
        return task

    async def hangup_once(self, st: LegState) -> None:
        if st.hangup_sent or not st.carrier_id:
            return
        st.hangup_sent = True
        try:
            await self.rest_hangup(st)
            st.call.log.info("%s call hung up over REST", self.label)
        except CarrierError as e:
            st.call.log.warning("%s hangup failed: %s", self.label, e.message)

    def arm_watchdog(self, st: LegState, after: float, reason: str) -> None:
        """End the call if the media socket never comes, or a transfer never reports back."""
        if st.watchdog is not None:
            st.watchdog.cancel()
        watching = st.state

        def fire() -> None:
            st.watchdog = None
            if not st.call.is_active or st.state != watching or (st.stream is not None and watching != "transferring"):
                return
            st.call.log.warning("%s call closed by watchdog", self.label, extra={"reason": reason})
            self.background(self._watchdog_end(st, reason))

        st.watchdog = asyncio.get_running_loop().call_later(after, fire)

    async def _watchdog_end(self, st: LegState, reason: str) -> None:
        if st.state == "transferring":
            st.state = "released"   # the caller may be talking to the target: do not cut them off
            if st.call.transfer_result is None:
                await st.call.transfer_finished(TransferResult(self.current_target(st), "unknown"))
        elif not await self.gateway.calls.owns(st.call, HangupSource.SYSTEM.value, reason):
            return      # adopted by another process meanwhile: not ours to hang up
        else:
            await self.hangup_once(st)
        await st.call.end(HangupSource.SYSTEM, reason)

    # -- webhooks about a call another process holds (carriers/forwarding.py) -------------------------------------
    def forwarded_target(self, call_id: str) -> LegState | None:
        return self.legs.get(call_id)

    # -- URLs ----------------------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.gateway.settings.public_base + path

    @property
    def token_key(self) -> str:
        return f"{self.name}_stream_token_sha256"

    async def stream_url(self, st: LegState) -> str:
        """Our media socket for this call, with the one-time token that lets one socket claim it; the token's hash
        is recorded first (committed in a cluster) so whichever process the socket reaches can check it."""
        await st.call.record(extra={self.token_key: token_digest(st.token)})
        if self.gateway.control.clustered:
            await self.gateway.store.flush()
        q = urlencode({"call_id": st.call.id, "token": st.token})
        return f"{self.gateway.settings.public_ws_base}/{self.name}/media?{q}"

    # -- media socket --------------------------------------------------------------------------------------------
    async def media_websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = DirectWebSocket(max_msg_size=1 << 20, autoping=True, compress=False)
        await ws.prepare(request)
        stream = self.stream_class(self, ws, request)
        try:
            await stream.run()
        except Exception:
            log.exception("%s media stream failed", self.label, extra={"carrier": self.name})
            if not ws.closed:
                await ws.close(code=1011, message=b"internal error")
        return ws

    async def claim_stream(self, stream: MediaStream, carrier_id: Any) -> tuple[Call, Any]:
        """The socket's `start`: its URL token must be the call's current one (used once), then attach. A
        consultation's socket (`leg=consult`) becomes the target's leg instead (its "leg" is the consultation)."""
        q = stream.request.query
        if q.get("leg") == "consult":
            return await self._claim_consult(stream, carrier_id)
        st = self.legs.get(q.get("call_id", ""))
        if st is None and q.get("call_id"):
            st = await self._adopt(q["call_id"], q.get("token", ""))
        if st is None or not st.call.is_active:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "no call is waiting for this stream")
        if not hmac.compare_digest(q.get("token", "").encode(), st.token.encode()):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "stream token does not match")
        if st.stream is not None or st.state not in ("connecting", "reconnecting"):
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the call already has a media stream")
        if st.carrier_id and carrier_id and carrier_id != st.carrier_id:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the stream's call id does not match the call")
        st.token = secrets.token_urlsafe(18)       # one use only, here and on every other process
        await st.call.record(extra={self.token_key: token_digest(st.token)})
        if not st.carrier_id and isinstance(carrier_id, str) and carrier_id:
            st.carrier_id = carrier_id
            st.call.set_carrier_sid(carrier_id)
            await st.call.record(carrier_sid=carrier_id)
        if st.watchdog is not None:
            st.watchdog.cancel()
            st.watchdog = None
        st.stream = stream
        leg = RestLeg(self, st)
        call = st.call
        if call.bus is None:
            if not st.amd_requested:    # the carrier's own AMD reports through its webhooks instead
                maybe_start_amd(call)
            await call.attach(leg, stream.rate)
        elif call.bus.carrier_rate != stream.rate:
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, "the new stream changed the sample rate")
        else:
            call.log.info("%s media stream re-attached", self.label)
        st.state = "live"
        return call, leg

    async def _claim_consult(self, stream: MediaStream, carrier_id: Any) -> tuple[Call, SocketConsultation]:
        q = stream.request.query
        st = self.legs.get(q.get("call_id", ""))
        if st is None:      # another process of the cluster runs the consultation: relayed there once checked
            row = await consult_row(self.gateway, self.name, q.get("call_id", ""), q.get("token", ""), stream,
                                    CloseCode.BAD_SIGNATURE)
            raise await relay_target(self.gateway, row, stream)
        c = st.consultation
        if c is None:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "no consultation is waiting for this stream")
        if not c.token_ok(q.get("token", "")):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "stream token does not match")
        if c.target_id and carrier_id and carrier_id != c.target_id:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the stream's call id is not the consultation call's")
        await c.attach_target(stream, stream.rate)
        return c.call, c

    def consult_stream_url(self, c: SocketConsultation) -> str:
        """The target's media socket: the call id and the consultation's one-time token (used once)."""
        q = urlencode({"call_id": c.call.id, "token": c.token, "leg": "consult"})
        return f"{self.gateway.settings.public_ws_base}/{self.name}/media?{q}"

    def consult_released(self, c: SocketConsultation) -> None:
        """The carrier joined caller and target: the caller's socket closing is not a hangup of ours."""
        c.host.state = "released"

    async def _adopt(self, call_id: str, token: str) -> LegState | None:
        """Take over a call another process of the cluster answered: the socket's token must match the hash that
        process recorded before the row moves here; the leg is rebuilt from the row and its number."""
        store = self.gateway.store
        row = await store.find_call(call_uuid=call_id, flush=False)   # another process's row
        if row is None or row["channel_type"] != self.name or row["ended_at"] is not None:
            return None
        want = (row.get("extra") or {}).get(self.token_key)
        if not isinstance(want, str) or not hmac.compare_digest(token_digest(token).encode(), want.encode()):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "stream token does not match")
        number = await store.get_number(row["phone_number_id"], with_secrets=True) if row["phone_number_id"] else None
        call = await self.gateway.calls.adopt(row)
        if call is None:
            return None
        st = self.legs[call.id] = LegState(call, number, token=token, carrier_id=row["carrier_sid"] or None)
        self.arm_watchdog(st, self.attach_timeout, "stream_not_connected")    # disarmed once the stream attaches
        return st

    # -- transfer outcome ----------------------------------------------------------------------------------------
    @staticmethod
    def current_target(st: LegState) -> str | None:
        n = len(st.attempts)
        return st.transfer_targets[min(n, len(st.transfer_targets) - 1)] if st.transfer_targets else None

    async def transfer_answered(self, st: LegState) -> None:
        """A target answered: the caller talks to it through the carrier, the agent is done."""
        if st.state != "transferring":
            return
        target = self.current_target(st)
        st.attempts.append({"number": target, "status": "answered"})
        st.state = "released"
        if st.watchdog is not None:
            st.watchdog.cancel()
            st.watchdog = None
        await st.call.record(extra={"transfer_attempts": list(st.attempts)})
        if st.call.transfer_result is None:
            await st.call.transfer_finished(TransferResult(target, "completed"))
        await st.call.end(HangupSource.AGENT, "transferred")

    async def transfer_failed(self, st: LegState, status: str) -> int | None:
        """The current target did not take the call (`status`: busy, no-answer, failed…). Returns the index of the
        next target to dial; None when every target failed: the agent is told, and the call goes back to it
        (`state` live when its socket stayed up, else reconnecting with a watchdog: the carrier re-streams)."""
        if st.state != "transferring":
            return None
        target = self.current_target(st)
        st.attempts.append({"number": target, "status": status})
        await st.call.record(extra={"transfer_attempts": list(st.attempts)})
        nxt = len(st.attempts)
        if nxt < len(st.transfer_targets):
            await st.call.record(transfer_target=st.transfer_targets[nxt])
            return nxt
        await st.call.transfer_finished(TransferResult(target, status))
        if st.stream is not None:     # the agent's socket stayed up through the attempt: carry on
            st.state = "live"
        else:
            st.state = "reconnecting"
            st.token = secrets.token_urlsafe(18)
            self.arm_watchdog(st, self.attach_timeout, "stream_not_reconnected")
        return None
