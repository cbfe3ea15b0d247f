"""Vonage Voice API: answer/event webhooks, NCCO `connect` to a websocket, the media socket, REST call control.

Flow: Vonage asks `/vonage/answer` for an NCCO; we answer with a `connect` action whose endpoint is
`wss://PUBLIC/vonage/media` (type `websocket`, `content-type: audio/l16;rate=16000|8000`, headers carrying our call
id, agent id and a one-time token). Vonage opens that socket and sends, as the first text message,
`{"event": "websocket:connected", "content-type": …, <our headers>}`; after it, binary frames of 16-bit linear PCM
(little-endian), 20 ms each: 640 B at 16 kHz, 320 B at 8 kHz, in both directions. Text messages: `websocket:dtmf`
{digit, duration} in; out `{"action": "notify", "payload": {…}}` (echoed as `websocket:notify` once the audio before
it has played: our marks) and `{"action": "clear"}` (acknowledged by `websocket:cleared`).

Sources: https://developer.vonage.com/en/voice/voice-api/concepts/websockets (message format, frame sizes, notify,
clear, dtmf), https://developer.vonage.com/en/voice/voice-api/ncco-reference (connect, websocket/phone endpoints,
eventType synchronous), https://developer.vonage.com/en/voice/voice-api/webhook-reference (answer/event webhooks),
https://developer.vonage.com/en/voice/voice-api/concepts/advanced-machine-detection, signed webhooks:
https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks.

REST (create, hangup, transfer, DTMF; https://developer.vonage.com/en/api/voice) is sent with aiohttp through
gateway/carrier_rest.py (bounded by `carrier_timeout`, errors mapped like every carrier's); the official SDK's
models build and check the request bodies and `vonage-jwt` signs the application JWT. REST is only used for call
control, never on the audio path. `GATEWAY_VONAGE_API_BASE` points it at a stand-in (tests/fakes/vonage_rest.py).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import importlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from gateway import safejson
from gateway.amd import maybe_start_amd, report_amd
from gateway.callmanager import CapacityError
from gateway.carrier import CarrierError, ImportField
from gateway.carrier_rest import CarrierHttp
from gateway.frames import (
    AmdResult,
    AnsweredBy,
    AudioFrame,
    BusItem,
    Clear,
    Dtmf,
    HangupSource,
    Mark,
    SendDtmf,
    TransferRequest,
    TransferResult,
)
from gateway.logsetup import ContextLogger
from gateway.numbers import normalize_e164

from .forwarding import ForwardingCarrier, UnknownWebhook, forwarded_fields, str_dict
from .mediasocket import MarkedPlayout, StreamClosed, token_digest
from .numberfields import number_setting
from .socket_consult import SocketConsultation, SocketConsultLeg
from .streamrelay import RelayStream, relay
from .vonage_consult import VonageConsults
from .wsdirect import DirectWebSocket, read_messages, send_binary

if TYPE_CHECKING:
    from gateway.call import Call
    from gateway.runtime import Gateway

log = logging.getLogger("carriers.vonage")

VOICE_API = "https://api.nexmo.com"
ACCOUNT_API = "https://rest.nexmo.com"
RATES = (8000, 16000)
INTERNAL_MARK = "gw-vng-"
_DIGITS = set("0123456789*#ABCD")
_UUID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
# Event webhook statuses that end a call leg, and the call-log status each one means.
# https://developer.vonage.com/en/voice/voice-api/webhook-reference#event-webhook
TERMINAL = {"completed": "completed", "busy": "busy", "cancelled": "canceled", "unanswered": "no-answer",
            "timeout": "no-answer", "rejected": "failed", "failed": "failed"}
#: the `leg=` values of the event URLs we give Vonage: none (the call's own events), our websocket leg's, an
#: attended transfer's consultation call's and its websocket leg's
EVENT_LEGS = ("", "websocket", "consult", "consult_ws")
#: what of an event webhook's body another process of the cluster passes to the call's owner (carriers/forwarding.py)
FORWARDED_FIELDS = ("status", "uuid", "conversation_uuid", "timestamp", "duration", "price", "rate", "network",
                    "detail", "sub_state", "reason", "direction")
TRANSFER_FAILED = ("busy", "cancelled", "unanswered", "timeout", "rejected", "failed")


def frame_bytes(rate: int) -> int:
    return rate // 50 * 2


class CloseCode(IntEnum):
    """Close codes on /vonage/media (private range 4000-4999, RFC 6455 §7.4.2)."""

    NORMAL = 1000
    CONNECT_TIMEOUT = 4001     # no websocket:connected within the timeout
    BAD_MESSAGE = 4002         # first message not websocket:connected JSON, or malformed text message
    UNKNOWN_CALL = 4005        # call_id names no call waiting for a stream
    BAD_TOKEN = 4006           # the one-time token in the headers does not match
    BAD_MEDIA_FORMAT = 4007    # content-type is not audio/l16 at 8/16 kHz
    ENGINE_ERROR = 4008


# -- NCCOs (built with the SDK's models so their shape follows Vonage's schema) ---------------------------------
def websocket_ncco(uri: str, rate: int, headers: dict[str, Any], event_url: str | None = None,
                   from_number: str | None = None) -> list[dict[str, Any]]:
    """`connect` the call to our media websocket."""
    from vonage_voice import Connect, WebsocketEndpoint

    kw: dict[str, Any] = {"endpoint": [WebsocketEndpoint(uri=uri, contentType=f"audio/l16;rate={rate}",
                                                         headers=headers)]}
    if from_number:
        kw["from_"] = from_number.lstrip("+")
    else:
        kw["randomFromNumber"] = True
    if event_url:
        kw["eventUrl"] = [event_url]
    return [Connect(**kw).model_dump(by_alias=True, exclude_none=True, mode="json")]


def phone_ncco(number: str, from_number: str, event_url: str, ring_timeout: int) -> list[dict[str, Any]]:
    """`connect` to one transfer target; `eventType: synchronous` makes Vonage ask `event_url` what to do next when
    the target is busy / does not answer, which is how backups are dialled one after the other."""
    from vonage_voice import Connect, PhoneEndpoint

    c = Connect(endpoint=[PhoneEndpoint(number=number.lstrip("+"))], from_=from_number.lstrip("+"),
                eventType="synchronous", eventUrl=[event_url], timeout=ring_timeout)
    return [c.model_dump(by_alias=True, exclude_none=True, mode="json")]


def talk_ncco(text: str) -> list[dict[str, Any]]:
    return [{"action": "talk", "text": text}]


#: settings.vonage keys → POST /v1/calls fields, with our defaults
CALL_KEYS = {"ring_timeout": ("ringing_timer", 45), "time_limit": ("length_timer", 7200)}
AMD_KEYS = {"enabled": False, "behavior": "continue", "mode": "detect", "beep_timeout": 45}


def call_options(vs: Any) -> tuple[dict[str, Any], bool]:
    """`settings.vonage` → (POST /v1/calls fields, Vonage AMD asked for?), checked against the Voice API's documented
    ranges as the SDK's request model holds them (ringing_timer 1–120, length_timer 1–86400, advanced machine
    detection behavior continue|hangup, mode default|detect|detect_beep, beep_timeout 45–120). Raises CarrierError
    naming the field, e.g. `settings.vonage.amd.beep_timeout`."""
    from pydantic import ValidationError
    from vonage_voice import CreateCallRequest

    f = "settings.vonage"
    vs = {} if vs is None else vs
    amd = vs.get("amd") if isinstance(vs, dict) else None
    for path, section, known in ((f, vs, {*CALL_KEYS, "amd"}), (f"{f}.amd", amd or {}, set(AMD_KEYS))):
        if not isinstance(section, dict):
            raise CarrierError(f"{path}: must be an object", 400, path)
        unknown = sorted(set(section) - known)
        if unknown:
            raise CarrierError(f"{path}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})", 400,
                               f"{path}.{unknown[0]}")
    amd = {**AMD_KEYS, **(amd or {})}
    if not isinstance(amd["enabled"], bool):
        raise CarrierError(f"{f}.amd.enabled: must be true or false", 400, f"{f}.amd.enabled")
    options = {name: vs.get(key, default) for key, (name, default) in CALL_KEYS.items()}
    if amd["enabled"]:
        options["advanced_machine_detection"] = {k: amd[k] for k in ("behavior", "mode", "beep_timeout")}
    try:   # a placeholder call carries the settings through the SDK's own model of the request
        checked = CreateCallRequest(to=[{"type": "phone", "number": "15550100"}], random_from_number=True,
                                    answer_url=["https://example.invalid/answer"], **options)
    except ValidationError as e:
        err = e.errors()[0]
        names = {name: key for key, (name, _d) in CALL_KEYS.items()} | {"advanced_machine_detection": "amd"}
        path = ".".join([f, names.get(str(err["loc"][0]), str(err["loc"][0])), *map(str, err["loc"][1:])])
        raise CarrierError(f"{path}: {err['msg'].lower()} (Vonage Voice API)", 400, path) from None
    out = checked.model_dump(include={*options}, exclude_none=True)
    return out, amd["enabled"]


def amd_result(status: str, sub_state: str | None, duration_ms: int) -> AmdResult | None:
    """Vonage machine detection (event `human` / `machine`, sub_state `beep_start` / `beep_timeout`) → AnsweredBy."""
    if status == "human":
        return AmdResult(AnsweredBy.HUMAN, duration_ms, source="vonage")
    if status == "machine":
        kind = {"beep_start": AnsweredBy.MACHINE_END_BEEP, "beep_timeout": AnsweredBy.MACHINE_END_OTHER}.get(
            sub_state or "", AnsweredBy.MACHINE_START)
        return AmdResult(kind, duration_ms, source="vonage")
    return None


# -- credentials ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VonageCreds:
    application_id: str | None = None
    private_key: str | None = None
    api_key: str | None = None
    api_secret: str | None = None
    signature_secret: str | None = None

    @property
    def has_app(self) -> bool:
        return bool(self.application_id and self.private_key)

    @property
    def has_account(self) -> bool:
        return bool(self.api_key and self.api_secret)


def creds_of(fields: dict[str, Any] | None) -> VonageCreds:
    key = number_setting(fields, "vonage_private_key")
    if isinstance(key, str) and "\\n" in key and "\n" not in key:
        key = key.replace("\\n", "\n")      # a PEM pasted into JSON as one line
    return VonageCreds(number_setting(fields, "vonage_application_id"), key, number_setting(fields, "vonage_api_key"),
                       number_setting(fields, "vonage_api_secret"), number_setting(fields, "vonage_signature_secret"))


def check_private_key(pem: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CarrierError("vonage_private_key: not a PEM private key (paste the application's private.key)",
                           400) from None


# -- per-call state ---------------------------------------------------------------------------------------------
#: call-log `extra` key holding the SHA-256 of the stream token the last NCCO handed out (adoption, docs/deploy.md)
TOKEN_DIGEST = "vonage_stream_token_sha256"


@dataclass
class VonageCallState:
    call: Call
    number: dict[str, Any] | None
    token: str
    rate: int
    uuid: str | None = None
    stream: VonageStream | None = None
    state: str = "connecting"     # connecting → live ⇄ transferring / reconnecting; released once transferred
    transfer_targets: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    watchdog: asyncio.TimerHandle | None = None
    amd_requested: bool = False
    hangup_sent: bool = False
    #: the attended transfer's consultation call while one runs (carriers/socket_consult.py)
    consultation: SocketConsultation | None = None


class VonageLeg(SocketConsultLeg):
    """Hangup / transfer / DTMF through Vonage's REST API (PUT /v1/calls/{uuid}); the socket alone cannot.
    Attended transfer: carriers/vonage_consult.py."""

    def __init__(self, carrier: VonageCarrier, st: VonageCallState) -> None:
        self.carrier = carrier
        self.st = st

    def consult_carrier(self) -> Any:
        return self.carrier.consults

    async def hangup(self, call: Call, reason: str) -> None:
        stream = self.st.stream
        if stream is not None:
            stream.closing_for = "hangup"
            if call.hangup is not None and call.hangup.source is HangupSource.AGENT:
                await stream.drain()
        # the call ends here at once; the REST request finishes in the background (bounded by carrier_timeout)
        self.carrier.background(self.carrier.rest_hangup(self.st))
        if stream is not None and not stream.ws.closed:
            # closing the socket ends the NCCO's connect, which with nothing after it ends the call too
            await stream.ws.close(code=CloseCode.NORMAL, message=b"hangup")

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        st = self.st
        creds = creds_of(st.number)
        if not creds.has_app or not st.uuid:
            raise CarrierError("transfer needs the number's Vonage application id and private key", 400)
        if st.stream is not None:
            await st.stream.drain()
        st.transfer_targets = [request.number, *[n for n in request.backup_numbers if n != request.number]]
        st.attempts = []
        st.state = "transferring"
        if st.stream is not None:
            st.stream.closing_for = "transfer"
        ncco = self.carrier.transfer_attempt_ncco(st, 0)
        await call.record(transfer_target=st.transfer_targets[0])
        try:
            await self.carrier.rest(creds, "PUT", f"/v1/calls/{st.uuid}", call_gone=True,
                                    json={"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})
        except CarrierError:
            st.state = "live"
            if st.stream is not None:
                st.stream.closing_for = None
            raise
        self.carrier.arm_watchdog(st, self.carrier.transfer_timeout, "transfer_timeout")
        call.log.info("transfer started", extra={"targets": len(st.transfer_targets)})


def _preload_sdk() -> None:
    for module in ("vonage_jwt", "vonage_voice"):
        importlib.import_module(module)


def _ncco_models(ncco: list[dict[str, Any]]) -> list[Any]:
    """The SDK's transfer_call_ncco wants model objects; rebuild them from our dicts."""
    from vonage_voice import Connect, PhoneEndpoint, WebsocketEndpoint

    out = []
    for a in ncco:
        eps = []
        for e in a["endpoint"]:
            if e["type"] == "phone":
                eps.append(PhoneEndpoint(number=e["number"]))
            else:
                eps.append(WebsocketEndpoint(uri=e["uri"], contentType=e.get("content-type"),
                                             headers=e.get("headers")))
        kw = {k: v for k, v in a.items() if k in ("eventType", "timeout", "eventUrl", "randomFromNumber")}
        if "from" in a:
            kw["from_"] = a["from"]
        out.append(Connect(endpoint=eps, **kw))
    return out


class VonageStream(MarkedPlayout):
    """One media websocket: first text message, binary L16 both ways, notify/clear, DTMF."""

    internal_mark = INTERNAL_MARK
    close_codes = CloseCode
    drain_errors = (asyncio.TimeoutError, ConnectionError, RuntimeError)

    def __init__(self, carrier: VonageCarrier, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__(ws)   # marks, drain waiters, playout_end
        self.carrier = carrier
        self.request = request
        self.st: VonageCallState | None = None
        self.call: Call | None = None
        self.rate = 16000
        self.frame = 640
        self.closing_for: str | None = None
        self._sender: asyncio.Task[None] | None = None
        self._stopping = False
        self._carry = b""
        self.frames_sent = 0
        self.dtmf_tasks: set[asyncio.Task[None]] = set()
        self.first_message = ""
        self.direct_out = self._send_now if self.direct_ws is not None else None   # engine audio handed over

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.call.log if self.call else ContextLogger(log, {"carrier": "vonage"})

    async def run(self) -> None:
        try:
            await self._await_connected()
            self._sender = asyncio.create_task(self._send_loop(), name=f"vonage-send-{self.live_call.id}")
            await self._read_loop()
        except RelayStream as r:     # another process runs the call's consultation: carry the socket there
            await relay(self.ws, r, [self.first_message], self.carrier.connect_timeout)
        except StreamClosed as e:
            self.log.warning("vonage media socket closed: %s", e.reason, extra={"close_code": int(e.code)})
            if not self.ws.closed:
                await self.ws.close(code=int(e.code), message=e.reason[:120].encode())
        finally:
            await self._finish()

    async def _await_connected(self) -> None:
        try:
            msg = await self.ws.receive(timeout=self.carrier.connect_timeout)
        except TimeoutError:
            raise StreamClosed(CloseCode.CONNECT_TIMEOUT, "no websocket:connected message") from None
        if msg.type != WSMsgType.TEXT:
            raise StreamClosed(CloseCode.BAD_MESSAGE, "the first message must be the websocket:connected JSON")
        try:
            m = safejson.loads(msg.data)
        except safejson.BadJson:
            raise StreamClosed(CloseCode.BAD_MESSAGE, "first message is not JSON") from None
        self.first_message = msg.data        # replayed to the call's owner when the socket is relayed there
        if not isinstance(m, dict) or m.get("event") != "websocket:connected":
            raise StreamClosed(CloseCode.BAD_MESSAGE, "the first message must be event websocket:connected")
        ctype = str(m.get("content-type") or "").replace(" ", "").lower()
        mt = re.fullmatch(r"audio/l16;rate=(\d+)", ctype)
        if not mt or int(mt.group(1)) not in RATES:
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, f"unsupported content-type {ctype[:40]!r}")
        self.rate = int(mt.group(1))
        self.frame = frame_bytes(self.rate)
        call_id = str(m.get("call_id") or self.request.query.get("call_id") or "")
        if m.get("gw_leg") == "consult":       # the target's leg of an attended transfer (vonage_consult.py)
            await self.carrier.consults.claim(self, call_id, str(m.get("gw_token") or ""))
            self.live_call.log.info("vonage consultation socket connected", extra={"rate": self.rate})
            return
        self.st = await self.carrier.claim_stream(self, call_id, str(m.get("gw_token") or ""))
        self.call = self.st.call
        if self.call.bus is None:
            if not self.st.amd_requested:   # Vonage's own AMD reports through the event webhook instead
                maybe_start_amd(self.call)     # outbound + agent AMD on: gateway AMD and voicemail drop (else no-op)
            try:
                await self.call.attach(VonageLeg(self.carrier, self.st), self.rate)
            except Exception as e:
                self.call.log.exception("engine could not start")
                await self.call.end(HangupSource.SYSTEM, "engine_error")
                raise StreamClosed(CloseCode.ENGINE_ERROR, f"engine could not start: {type(e).__name__}") from None
        elif self.call.bus.carrier_rate != self.rate:
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, "reconnected stream changed its sample rate")
        self.st.state = "live"
        self.call.log.info("vonage media socket connected", extra={"rate": self.rate})

    async def _read_loop(self) -> None:
        """Read until the socket closes; messages are handled where they are parsed (carriers/wsdirect.py: no
        task switch per audio frame)."""
        await read_messages(self.ws, self._on_text, self._on_binary)

    def _on_binary(self, data: bytes) -> None:
        """One binary message: 16-bit linear PCM (an odd byte waits for the next message)."""
        if self._carry or len(data) % 2:
            data = self._carry + data
            if len(data) % 2:
                self._carry, data = data[-1:], data[:-1]
            else:
                self._carry = b""
        self.inlet.feed_audio(data)   # the call, or hold / bridge

    def _on_text(self, data: str) -> None:
        try:
            m = safejson.loads(data)
        except safejson.BadJson:
            raise StreamClosed(CloseCode.BAD_MESSAGE, "text message is not JSON") from None
        if not isinstance(m, dict):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "text message is not a JSON object")
        event = m.get("event")
        if event == "websocket:dtmf":
            digit = str(m.get("digit", "")).strip().upper()
            if len(digit) == 1 and digit in _DIGITS:
                dur = m.get("duration")
                self.inlet.feed_event(Dtmf(digit, int(dur) if isinstance(dur, (int, float)) else None))
            else:
                self.log.warning("ignored malformed websocket:dtmf", extra={"digit": digit[:8]})
        elif event == "websocket:notify":
            payload: dict[str, Any] = m["payload"] if isinstance(m.get("payload"), dict) else {}
            self._mark_played(str(payload.get("name", "")))
        elif event == "websocket:cleared":
            self.log.debug("vonage cleared its playback buffer")
        else:
            self.log.debug("ignored vonage websocket event", extra={"event": str(event)[:40]})

    async def _finish(self) -> None:
        self._stopping = True
        await self._stop_sender(self._sender)
        self._release_drain_waiters()
        if not self.ws.closed:
            await self.ws.close(code=CloseCode.NORMAL, message=b"stream over")
        await self.carrier.stream_gone(self)

    # -- sender -------------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        call, st = self.live_call, self.st
        if st is None:
            raise RuntimeError("vonage stream without call state (not connected)")
        nxt: asyncio.Future[tuple[Any, BusItem]] | None = None
        try:
            while not self._stopping:
                nxt = asyncio.ensure_future(self._take())
                await asyncio.wait({nxt})
                (source, item), nxt = nxt.result(), None
                if self._stopping or self.ws.closed or not self._still_ours(source, item):
                    continue
                if isinstance(item, AudioFrame):
                    await self.send_frame(item.pcm)
                elif isinstance(item, Mark):
                    await self.send_engine_mark(item.name)
                elif isinstance(item, Clear):
                    await self.clear()
                elif isinstance(item, SendDtmf):
                    t = asyncio.create_task(self.carrier.rest_dtmf(st, item.digits))
                    self.dtmf_tasks.add(t)
                    t.add_done_callback(self.dtmf_tasks.discard)
        except (ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            if nxt is not None and not nxt.done():
                nxt.cancel()
            raise
        except Exception:
            call.log.exception("vonage media sender failed")
        await self._settle_next(nxt)

    async def send_frame(self, pcm: bytes) -> None:
        """One bus frame (exactly 20 ms at the socket's rate) → one binary message, as Vonage expects.

        Engines often produce speech faster than real time; we stay at most `max_ahead` seconds ahead of playback
        so Vonage's buffer (about 60 s) never overflows and a barge-in has little to throw away."""
        if not await self._pace(self.carrier.max_ahead):
            return   # a barge-in arrived: this frame is dropped, the Clear behind it goes out next
        await send_binary(self.ws, pcm)
        self._played(len(pcm) / 2 / self.rate)
        self.frames_sent += 1

    def _send_now(self, frame: AudioFrame) -> bool:
        """An engine frame handed over while the sender waits for the call's next item (`Call.next_outbound`'s
        `direct`): written now, or False (the frame is queued for the sender instead) when the socket no longer
        carries the call, is closing or read slowly, a barge-in is pending or pacing would hold the frame back."""
        ws, call = self.direct_ws, self.live_call
        if ws is None or self.port is not None or self._stopping \
                or (call.bus is not None and call.bus.clear_pending.is_set()) \
                or self.playout_end - self._now() > self.carrier.max_ahead \
                or not ws.write_bytes_nowait(frame.pcm):
            return False
        self._played(len(frame.pcm) / 2 / self.rate)
        self.frames_sent += 1
        return True

    # -- wire format of marks (notify) and clear; the bookkeeping, `clear()` and `drain()` are MarkedPlayout's ----
    async def _send_mark(self, name: str) -> None:
        await self._send_json({"action": "notify", "payload": {"name": name}})

    async def _send_clear(self) -> None:
        await self._send_json({"action": "clear"})


# -- the carrier ------------------------------------------------------------------------------------------------
class VonageCarrier(ForwardingCarrier):
    name = "vonage"
    providers = ("vonage",)
    number_field = "vonage_phone_number"
    import_fields = (
        ImportField("vonage_phone_number", required=True, e164=True, help="the Vonage virtual number, E.164"),
        ImportField("vonage_application_id", help="Voice application id (needed for hangup/transfer/outbound)"),
        ImportField("vonage_private_key", secret=True, help="the application's private key (PEM)"),
        ImportField("vonage_api_key", help="account API key (checks the number is on the account)"),
        ImportField("vonage_api_secret", secret=True, help="account API secret"),
        ImportField("vonage_signature_secret", secret=True,
                    help="signature secret (signed webhooks): every webhook must carry a JWT signed with it"),
        ImportField("vonage_allow_unsigned_webhooks", kind=bool, default=False,
                    help="opt-out: accept unsigned webhooks (anyone who knows the number can reach the agent)"),
        ImportField("vonage_audio_rate", kind=int, default=16000, choices=RATES,
                    help="websocket audio: audio/l16;rate=16000 or 8000"),
        ImportField("name", help="label"),
    )

    connect_timeout = 10.0        # websocket:connected after the socket opens
    max_ahead = 3.0               # seconds of audio sent ahead of what Vonage has played
    attach_timeout = 90.0         # answer webhook (or outbound create) → media socket
    transfer_timeout = 4 * 3600.0
    ring_timeout = 30

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        #: base URLs of the Voice API and the account API; GATEWAY_VONAGE_API_BASE points both at one stand-in
        #: (tests/fakes/vonage_rest.py), plain http allowed
        base = (os.environ.get("GATEWAY_VONAGE_API_BASE") or "").rstrip("/")
        self.api_base = base or VOICE_API
        self.rest_base = base or ACCOUNT_API
        self.http = CarrierHttp("Vonage", lambda: self.gateway.settings.carrier_timeout)
        self.states: dict[str, VonageCallState] = {}       # by our call id
        self.consults = VonageConsults(self)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- wiring -------------------------------------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        r = app.router
        r.add_route("GET", "/vonage/answer", self.answer_webhook)
        r.add_route("POST", "/vonage/answer", self.answer_webhook)
        r.add_route("GET", "/vonage/events", self.event_webhook)
        r.add_route("POST", "/vonage/events", self.event_webhook)
        r.add_route("GET", "/vonage/transfer_event", self.transfer_event)
        r.add_route("POST", "/vonage/transfer_event", self.transfer_event)
        r.add_get("/vonage/media", self.media)

    async def stop(self) -> None:
        self.gateway.calls.unsubscribe(self._on_call_event)
        for st in list(self.states.values()):
            if st.watchdog is not None:
                st.watchdog.cancel()
            if not st.call.ended.is_set():
                await st.call.end(HangupSource.SYSTEM, "shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.states.clear()
        await self.http.close()

    async def start(self) -> None:
        self.gateway.calls.subscribe(self._on_call_event)
        await super().start()      # forwarded webhooks (carriers/forwarding.py)
        numbers, _ = await self.gateway.store.list_numbers(1, 1_000_000, provider="vonage", with_secrets=True)
        for n in numbers:
            if not creds_of(n).signature_secret:
                allowed = number_setting(n, "vonage_allow_unsigned_webhooks", False) is True
                log.warning("Vonage number accepts UNSIGNED webhooks (vonage_allow_unsigned_webhooks)" if allowed
                            else "Vonage number has no vonage_signature_secret: its webhooks are refused until "
                                 "one is set", extra={"carrier": "vonage", "number_id": n["id"]})
        # the SDK's pydantic models take most of a second to import: do it now, off the event loop, rather than
        # in the first caller's answer webhook
        await asyncio.to_thread(_preload_sdk)

    def _on_call_event(self, kind: str, call: Call) -> None:
        """Ended calls: stop their watchdog; keep their state a while for late webhooks, then forget it. A call
        released to another process (it adopted the stream) is forgotten at once."""
        if kind not in ("call_ended", "call_released") or call.carrier != self.name:
            return
        st = self.states.get(call.id)
        if st is None:
            return
        if st.watchdog is not None:
            st.watchdog.cancel()
            st.watchdog = None
        if st.consultation is not None:     # the target's call ends with the caller's
            st.consultation.abandon()
        if kind == "call_released":     # another process holds the socket now: the call goes on there
            self.states.pop(call.id, None)
            return
        source = call.hangup.source if call.hangup else HangupSource.SYSTEM
        if call.bus is None and source in (HangupSource.AGENT, HangupSource.SYSTEM):
            # ended here before the media socket came (API hangup while ringing, shutdown): cancel it at Vonage
            # too, or the callee's phone goes on ringing and an answer meets a refused socket
            self.background(self.rest_hangup(st))
        self._forget_later(st)

    def url(self, path: str) -> str:
        return self.gateway.settings.public_base + path

    def ws_url(self, path: str) -> str:
        return self.gateway.settings.public_ws_base + path

    def _forget_later(self, st: VonageCallState) -> None:
        def drop() -> None:
            if self.states.get(st.call.id) is st and st.call.ended.is_set():
                del self.states[st.call.id]
        asyncio.get_running_loop().call_later(900, drop)

    def arm_watchdog(self, st: VonageCallState, after: float, reason: str) -> None:
        if st.watchdog is not None:
            st.watchdog.cancel()

        def fire() -> None:
            st.watchdog = None
            if st.call.ended.is_set() or (reason == "stream_never_started" and st.call.bus is not None
                                          and st.state != "reconnecting"):
                return
            st.call.log.warning("vonage call closed by watchdog", extra={"reason": reason})
            t = asyncio.ensure_future(self._watchdog_end(st, reason))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        st.watchdog = asyncio.get_running_loop().call_later(after, fire)

    async def _watchdog_end(self, st: VonageCallState, reason: str) -> None:
        if not await self.gateway.calls.owns(st.call, HangupSource.SYSTEM.value, reason):
            return      # adopted by another process meanwhile: not ours to hang up
        await self.rest_hangup(st)
        await st.call.end(HangupSource.SYSTEM, reason)

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A REST request nobody waits for (hangup): kept until done so shutdown can let it finish."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- REST -----------------------------------------------------------------------------------------------------
    async def rest(self, creds: VonageCreds, method: str, path: str, *, kind: str = "app", call_gone: bool = False,
                   importing: bool = False, **kwargs: Any) -> tuple[int, Any]:
        """One Voice API ("app": application JWT, api_base) or account API ("account": Basic key/secret,
        rest_base) request, bounded by carrier_timeout and mapped like every carrier's (gateway/carrier_rest.py).

        Plain aiohttp rather than the SDK's HTTP client: that one is synchronous (a worker thread per request that
        a timeout cannot stop), retries on its own and only speaks https://. The SDK's models still build and
        check the bodies, and vonage-jwt signs the JWT. `call_gone`: a 404 means the call has ended (409)."""
        if kind == "app":
            from vonage_jwt import JwtClient

            try:
                token = JwtClient(creds.application_id, creds.private_key).generate_application_jwt()
            except Exception as e:
                raise CarrierError(f"the number's stored Vonage private key cannot sign a JWT ({type(e).__name__})",
                                   502) from None
            auth = "Bearer " + (token.decode() if isinstance(token, bytes) else str(token))
            url, what, field = self.api_base + path, "application id / private key", "vonage_private_key"
        else:
            auth = "Basic " + base64.b64encode(f"{creds.api_key}:{creds.api_secret}".encode()).decode("ascii")
            url, what, field = self.rest_base + path, "API key/secret", "vonage_api_secret"
        status, body = await self.http.request(method, url, headers={"Authorization": auth},
                                               accept=(404,) if call_gone else (), importing=importing,
                                               field=field, credentials=what, **kwargs)
        if status == 404:
            raise CarrierError("the Vonage call has already ended (HTTP 404)", 409)
        return status, body

    async def rest_hangup(self, st: VonageCallState) -> None:
        """PUT /v1/calls/{uuid} {"action": "hangup"}, once per call; it works on a ringing call too (cancel)."""
        creds = creds_of(st.number)
        if not creds.has_app or not st.uuid:
            return
        if st.hangup_sent:
            return
        st.hangup_sent = True
        try:
            await self.rest(creds, "PUT", f"/v1/calls/{st.uuid}", call_gone=True, json={"action": "hangup"})
            st.call.log.info("vonage call hung up over REST")
        except CarrierError as e:
            if e.status != 409:     # 409: a call Vonage no longer knows has ended already: fine
                st.call.log.warning("vonage hangup failed: %s", e.message)

    async def rest_dtmf(self, st: VonageCallState, digits: str) -> None:
        """PUT /v1/calls/{uuid}/dtmf: the websocket protocol has no way to send digits."""
        creds = creds_of(st.number)
        if not creds.has_app or not st.uuid:
            st.call.log.warning("sending DTMF needs the Vonage application credentials; digits dropped")
            return
        digits = "".join(d for d in digits.upper() if d in "0123456789*#").strip()
        if not digits:
            return
        try:
            await self.rest(creds, "PUT", f"/v1/calls/{st.uuid}/dtmf", call_gone=True, json={"digits": digits})
        except CarrierError as e:
            st.call.log.warning("vonage DTMF failed: %s", e.message)
        except Exception:
            st.call.log.exception("vonage DTMF failed")

    # -- lookups and checks -------------------------------------------------------------------------------------
    async def _number_for(self, to: str) -> dict[str, Any] | None:
        try:
            e164 = normalize_e164(to)
        except ValueError:
            return None
        return await self.gateway.store.find_number(e164, "vonage", with_secrets=True)

    def signature_ok(self, request: web.Request, number: dict[str, Any] | None) -> bool:
        """Signed webhooks: `Authorization: Bearer <JWT>` signed HS256 with the number's signature secret
        (vonage-jwt). A number without a secret is accepted unsigned only when it was imported with the explicit
        opt-out `vonage_allow_unsigned_webhooks`; otherwise (e.g. a row from before signing was required) the
        webhook is refused, so nobody who merely knows the number gets an NCCO, a call row or a media socket."""
        secret = creds_of(number).signature_secret
        if not secret:
            if number is not None and number_setting(number, "vonage_allow_unsigned_webhooks", False) is True:
                return True
            log.warning("unsigned Vonage webhook refused: the number has no vonage_signature_secret",
                        extra={"carrier": "vonage", "source_ip": request.remote, "path": request.path,
                               "number_id": (number or {}).get("id")})
            return False
        from vonage_jwt import verify_signature

        header = request.headers.get("Authorization", "")
        ok = False
        if header.lower().startswith("bearer "):
            try:
                ok = bool(verify_signature(header[7:].strip(), secret))
            except Exception:
                ok = False
        if not ok:
            log.warning("Vonage webhook with a missing or wrong signed JWT refused",
                        extra={"carrier": "vonage", "source_ip": request.remote, "path": request.path})
        return ok

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json" or raw.lstrip()[:1] in (b"{", b"["):
                try:
                    body = safejson.loads(raw) if raw.strip() else {}
                except safejson.BadJson as e:  # deep nesting, a lone surrogate…: the sender's fault, not a 500
                    raise web.HTTPBadRequest(text=json.dumps({"error": f"request body is not valid JSON: {e}"}),
                                             content_type="application/json") from None
            else:
                try:
                    body = dict(await request.post())
                except Exception:
                    body = {}
            if isinstance(body, dict):
                params.update(body)
        return params

    # -- webhooks -----------------------------------------------------------------------------------------------
    async def answer_webhook(self, request: web.Request) -> web.Response:
        """Inbound call: open the call and answer with the NCCO that connects it to our media socket."""
        p = await self._params(request)
        to, frm, uuid = str(p.get("to") or ""), str(p.get("from") or ""), str(p.get("uuid") or "")
        number = await self._number_for(to)
        if number is None:
            log.warning("answer webhook for a number not imported here", extra={"carrier": "vonage",
                                                                              "to": to[:32]})
            return web.json_response(talk_ncco("The number you have called is not in service."))
        if not self.signature_ok(request, number):
            return web.json_response({"error": "invalid or missing signed-webhook JWT"}, status=401)
        try:
            from_e164 = normalize_e164(frm)
        except ValueError:
            from_e164 = frm[:64]
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number=from_e164, to_number=number["phone_number"],
                number=number, carrier_sid=uuid if _UUID.match(uuid) else None,
                metadata={"vonage_conversation_uuid": str(p.get("conversation_uuid") or "")[:64]})
        except CapacityError:
            return web.json_response(talk_ncco("All lines are busy. Please try again later."))
        st = self._state(call, number, uuid if _UUID.match(uuid) else None)
        self.arm_watchdog(st, self.attach_timeout, "stream_never_started")
        await self._publish_token(st)
        return web.json_response(self.stream_ncco(st))

    def _state(self, call: Call, number: dict[str, Any] | None, uuid: str | None) -> VonageCallState:
        rate = int(number_setting(number, "vonage_audio_rate", 16000) or 16000)
        st = VonageCallState(call, number, secrets.token_urlsafe(18), rate if rate in RATES else 16000, uuid)
        self.states[call.id] = st
        return st

    async def _publish_token(self, st: VonageCallState) -> None:
        """Record the hash of the stream token an NCCO is about to hand out: a websocket that lands on another
        process of the cluster proves itself with it (docs/deploy.md, adoption). In cluster mode the row is
        committed before the NCCO leaves, so the stream cannot overtake it."""
        await st.call.record(extra={TOKEN_DIGEST: token_digest(st.token)})
        if self.gateway.control.clustered:
            await self.gateway.store.flush()

    def stream_ncco(self, st: VonageCallState) -> list[dict[str, Any]]:
        call = st.call
        headers = {"call_id": call.id, "agent_id": str((call.agent or {}).get("id") or ""), "gw_token": st.token}
        return websocket_ncco(self.ws_url(f"/vonage/media?call_id={call.id}"), st.rate, headers,
                              self.url(f"/vonage/events?call_id={call.id}&leg=websocket"),
                              from_number=call.to_number if call.direction == "inbound" else call.from_number)

    async def event_webhook(self, request: web.Request) -> web.Response:
        """Call status (started, ringing, answered, completed, busy, timeout, failed…), AMD results; with `leg=`
        the events of our websocket leg or of an attended transfer's consultation call (`EVENT_LEGS`: any other
        `leg` is bad input, 400 naming it). A call not held here is read from the call log once: its number
        authenticates the event, its owner carries it out, or (no live owner) its row records it."""
        p = await self._params(request)
        status = str(p.get("status") or "").lower()
        uuid = str(p.get("uuid") or "")
        leg = request.query.get("leg", "")
        if leg not in EVENT_LEGS:
            return web.json_response({"error": f"unknown leg {leg[:40]!r} (one of: websocket, consult, consult_ws)",
                                      "field": "leg"}, status=400)
        st = self.states.get(request.query.get("call_id", ""))
        call = st.call if st else (self.gateway.calls.find_by_sid(uuid) if uuid and not leg else None)
        if st is None and call is not None:
            st = self.states.get(call.id)
        row: dict[str, Any] | None = None
        number = st.number if st else (call.number if call else None)
        if st is None and call is None:    # a call another process of the cluster holds, or one that has ended
            row = await self.call_row(request.query.get("call_id", ""), uuid if not leg else "")
            number = await self.number_of_row(row)
            elsewhere = await self._elsewhere(request, p, leg or "event", row, number)
            if elsewhere is not None:
                return elsewhere
        if leg in ("consult", "consult_ws"):
            signed = self.signed_state(request)
            if isinstance(signed, web.Response):
                return signed
            await self.consults.event(signed, p, leg)
            return web.Response(status=204)
        if leg == "websocket":
            if st is not None and self._ws_leg_failed(st, status) and self.signature_ok(request, st.number):
                await self._ws_leg_event(st, status)
            return web.Response(status=204)
        if number is None:
            return web.Response(status=204)        # no call of ours, nothing to authenticate against: ignore
        if not self.signature_ok(request, number):
            return web.json_response({"error": "invalid or missing signed-webhook JWT"}, status=401)
        if call is None or call.ended.is_set():
            if row is None and uuid:
                row = await self.call_row("", uuid)
            if row is not None:
                await self.gateway.store.update_call(row["id"], extra=self._event_extra(p))
            return web.Response(status=204)
        await self._call_event(call, st, p)
        return web.Response(status=204)

    async def _elsewhere(self, request: web.Request, p: dict[str, Any], kind: str, row: dict[str, Any] | None,
                         number: dict[str, Any] | None) -> web.Response | None:
        """A webhook about the call of `row` (read once by the caller, with its `number`), which this process does
        not hold: authenticated against the number, then carried out by the process that holds it
        (carriers/forwarding.py); what to answer (401, or the owner's answer: its NCCO, else 204), or None when
        no other live process holds the call."""
        if row is None or number is None:
            return None
        if not self.signature_ok(request, number):
            return web.json_response({"error": "invalid or missing signed-webhook JWT"}, status=401)
        fields = forwarded_fields(p, FORWARDED_FIELDS)
        query = {k: v[:200] for k, v in request.query.items() if k in ("attempt", "leg")}
        answer = await self.forward(str(row["call_uuid"]), {"kind": kind, "params": fields, "query": query}, row)
        if answer is None:
            return None
        ncco = answer.get("ncco")
        return web.json_response(ncco) if isinstance(ncco, list) else web.Response(status=204)

    def forwarded_target(self, call_id: str) -> VonageCallState | None:
        st = self.states.get(call_id)
        return st if st is not None and not st.call.ended.is_set() else None

    async def on_forwarded(self, st: VonageCallState, args: dict[str, Any]) -> dict[str, Any]:
        """An event or transfer step another process received about a call held here."""
        kind = str(args.get("kind") or "")
        p: dict[str, Any] = str_dict(args.get("params"))
        query = str_dict(args.get("query"))
        if kind == "event":
            await self._call_event(st.call, st, p)
        elif kind == "websocket":
            status = str(p.get("status") or "").lower()
            if self._ws_leg_failed(st, status):
                await self._ws_leg_event(st, status)
        elif kind in ("consult", "consult_ws"):
            await self.consults.event(st, p, kind)
        elif kind == "transfer":
            ncco = await self._transfer_step(st, p, query.get("attempt", "0"))
            return {"ncco": ncco} if ncco is not None else {}
        else:
            raise UnknownWebhook("Vonage", kind)
        return {}

    @staticmethod
    def _ws_leg_failed(st: VonageCallState, status: str) -> bool:
        """Our websocket leg could not be opened: the call would wait for a socket that never comes."""
        return status in TERMINAL and status != "completed" and st.call.bus is None and not st.call.ended.is_set()

    async def _ws_leg_event(self, st: VonageCallState, status: str) -> None:
        st.call.log.warning("vonage could not open the media websocket", extra={"status": status})
        await self.rest_hangup(st)
        await st.call.end(HangupSource.CARRIER, f"stream_{status}"[:64])

    @staticmethod
    def _event_extra(p: dict[str, Any]) -> dict[str, Any]:
        return {"vonage_event": {k: str(p.get(k))[:100] for k in ("status", "timestamp", "duration", "price",
                                                                  "rate", "network", "detail", "sub_state",
                                                                  "reason") if p.get(k) not in (None, "")}}

    async def _call_event(self, call: Call, st: VonageCallState | None, p: dict[str, Any]) -> None:
        """An (authenticated) event of a call held here."""
        status = str(p.get("status") or "").lower()
        uuid = str(p.get("uuid") or "")
        if st is not None and uuid and st.uuid is None and _UUID.match(uuid):
            st.uuid = uuid
            st.call.set_carrier_sid(uuid)
            await st.call.record(carrier_sid=uuid)
        await call.record(extra=self._event_extra(p))
        await call.emit("vonage:event", {"status": status})
        if status == "ringing" and call.bus is None:
            await call.record(call_status="ringing")
        elif status in ("human", "machine"):
            since = call.answered or call.created
            result = amd_result(status, str(p.get("sub_state") or "") or None, int((time.monotonic() - since) * 1000))
            if result is not None:
                await self._report_amd(call, result)
        elif status in TERMINAL:
            if st is not None and st.state == "transferring":
                if call.transfer_result is None:
                    await call.transfer_finished(TransferResult(self._current_target(st), "canceled"))
                await call.end(HangupSource.USER, "caller_hangup")
            elif call.bus is None:
                await call.end(HangupSource.CARRIER, status, status=TERMINAL[status])
            else:
                source = HangupSource.USER if status == "completed" else HangupSource.CARRIER
                await call.end(source, "caller_hangup" if status == "completed" else status)

    async def _report_amd(self, call: Call, result: AmdResult) -> None:
        """Through the AMD controller when one runs (agent voicemail behaviour), else straight to the call."""
        await report_amd(call, result)

    # -- transfer -----------------------------------------------------------------------------------------------
    @staticmethod
    def _current_target(st: VonageCallState) -> str | None:
        n = len(st.attempts)
        return st.transfer_targets[min(n, len(st.transfer_targets) - 1)] if st.transfer_targets else None

    def transfer_attempt_ncco(self, st: VonageCallState, attempt: int) -> list[dict[str, Any]]:
        call = st.call
        opts = ((call.agent or {}).get("settings") or {}).get("transfer") or {}
        ring = int(opts.get("ring_timeout") or self.ring_timeout)
        caller_id = call.to_number if call.direction == "inbound" else call.from_number
        return phone_ncco(st.transfer_targets[attempt], caller_id,
                          self.url(f"/vonage/transfer_event?call_id={call.id}&attempt={attempt}"), ring)

    def signed_state(self, request: web.Request) -> VonageCallState | web.Response:
        """The call state `?call_id=` names, when the webhook is signed for its number; else what to answer (204: no
        such call, 401: not signed)."""
        st = self.states.get(request.query.get("call_id", ""))
        if st is None:
            return web.Response(status=204)
        if not self.signature_ok(request, st.number):
            return web.json_response({"error": "invalid or missing signed-webhook JWT"}, status=401)
        return st

    async def transfer_event(self, request: web.Request) -> web.Response:
        """Events of a transfer attempt (eventType synchronous): answer → done; failure → next backup, or back to
        the agent on a new media socket when every number failed."""
        p = await self._params(request)
        call_id = request.query.get("call_id", "")
        if call_id not in self.states:     # a call another process of the cluster holds?
            row = await self.call_row(call_id, "") if call_id else None
            elsewhere = await self._elsewhere(request, p, "transfer", row, await self.number_of_row(row))
            if elsewhere is not None:
                return elsewhere
        st = self.signed_state(request)
        if isinstance(st, web.Response):
            return st
        ncco = await self._transfer_step(st, p, request.query.get("attempt", "0"))
        return web.json_response(ncco) if ncco is not None else web.Response(status=204)

    async def _transfer_step(self, st: VonageCallState, p: dict[str, Any], attempt_text: str
                             ) -> list[dict[str, Any]] | None:
        """What a transfer attempt's event does: the NCCO Vonage is to run next (next backup number, or the
        caller back on a new socket), or None (204)."""
        call = st.call
        status = str(p.get("status") or "").lower()
        try:
            attempt = int(attempt_text)
        except ValueError:
            attempt = 0
        if st.state != "transferring" or call.ended.is_set() or not st.transfer_targets:
            return None
        target = st.transfer_targets[min(attempt, len(st.transfer_targets) - 1)]
        if status == "answered":
            st.attempts.append({"number": target, "status": status})
            st.state = "released"
            if st.watchdog is not None:
                st.watchdog.cancel()
            await call.record(extra={"transfer_attempts": list(st.attempts)})
            if call.transfer_result is None:
                await call.transfer_finished(TransferResult(target, "completed"))
            await call.end(HangupSource.AGENT, "transferred")
            return None
        if status not in TRANSFER_FAILED:
            return None
        st.attempts.append({"number": target, "status": status})
        await call.record(extra={"transfer_attempts": list(st.attempts)})
        if attempt + 1 < len(st.transfer_targets):
            await call.record(transfer_target=st.transfer_targets[attempt + 1])
            return self.transfer_attempt_ncco(st, attempt + 1)
        await call.transfer_finished(TransferResult(target, {"unanswered": "no-answer", "timeout": "no-answer",
                                                             "cancelled": "canceled"}.get(status, status)))
        st.state = "reconnecting"
        st.token = secrets.token_urlsafe(18)
        self.arm_watchdog(st, self.attach_timeout, "stream_not_reconnected")
        await self._publish_token(st)
        return self.stream_ncco(st)

    # -- media socket -------------------------------------------------------------------------------------------
    async def media(self, request: web.Request) -> web.StreamResponse:
        ws = DirectWebSocket(timeout=2.0, heartbeat=None, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        await VonageStream(self, ws, request).run()
        return ws

    async def claim_stream(self, stream: VonageStream, call_id: str, token: str) -> VonageCallState:
        st = self.states.get(call_id)
        if st is None and call_id:
            st = await self._adopt(call_id, token)
        if st is None or st.call.ended.is_set():
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "no call is waiting for this stream")
        if not hmac.compare_digest(token.encode(), st.token.encode()):
            raise StreamClosed(CloseCode.BAD_TOKEN, "stream token does not match")
        if st.stream is not None or st.state not in ("connecting", "reconnecting"):
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "this call already has a stream")
        st.token = secrets.token_urlsafe(18)       # one use only
        await st.call.record(extra={TOKEN_DIGEST: token_digest(st.token)})   # here and on every other process
        if st.watchdog is not None:
            st.watchdog.cancel()
            st.watchdog = None
        st.stream = stream
        return st

    async def _adopt(self, call_id: str, token: str) -> VonageCallState | None:
        """Take over a call whose answer webhook another process of the cluster answered: the socket's token must
        match the hash that process published before the row moves here."""
        store = self.gateway.store
        row = await store.find_call(call_uuid=call_id, flush=False)   # another process's row
        if row is None or row["channel_type"] != self.name or row["ended_at"] is not None:
            return None
        want = (row.get("extra") or {}).get(TOKEN_DIGEST)
        if not isinstance(want, str) or not hmac.compare_digest(token_digest(token).encode(), want.encode()):
            raise StreamClosed(CloseCode.BAD_TOKEN, "stream token does not match")
        number = await store.get_number(row["phone_number_id"], with_secrets=True) if row["phone_number_id"] else None
        call = await self.gateway.calls.adopt(row)
        if call is None:
            return None
        st = self._state(call, number, row["carrier_sid"])
        st.token = token                           # proven above; claim_stream rotates it
        self.arm_watchdog(st, self.attach_timeout, "stream_never_started")
        return st

    async def stream_gone(self, stream: VonageStream) -> None:
        if stream.consultation is not None:     # the target's socket of an attended transfer
            await stream.consultation.stream_gone(stream)
            return
        st = stream.st
        if st is None or st.stream is not stream:
            return
        st.stream = None
        call = st.call
        if call.ended.is_set() or st.state in ("transferring", "reconnecting", "released"):
            return
        if stream.closing_for is not None:
            return           # our hangup/transfer: its initiator settles the call
        # Vonage closes the socket when the caller hangs up (the event webhook says `completed` right after)
        code = stream.ws.close_code
        if code in (None, 1000, 1001):
            await call.end(HangupSource.USER, "caller_hangup")
        else:
            await call.end(HangupSource.CARRIER, "stream_closed")

    # -- import / test / outbound -------------------------------------------------------------------------------
    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        creds = creds_of(fields)
        phone = fields[self.number_field]
        if bool(creds.application_id) != bool(creds.private_key):
            raise CarrierError("give both vonage_application_id and vonage_private_key (or neither)", 400)
        if bool(creds.api_key) != bool(creds.api_secret):
            raise CarrierError("give both vonage_api_key and vonage_api_secret (or neither)", 400)
        if not creds.has_app and not creds.has_account:
            raise CarrierError("Vonage credentials needed: vonage_application_id + vonage_private_key, "
                               "or vonage_api_key + vonage_api_secret", 400)
        out = dict(fields)
        if creds.private_key:
            out["vonage_private_key"] = creds.private_key
        if creds.has_app:
            check_private_key(creds.private_key or "")   # (has_app: there is one)
            await self._check_app(creds)
        if creds.has_account:
            owned = await self._owned_number(creds, phone)
            if owned is None:
                raise CarrierError(f"number {phone} not found on Vonage account {creds.api_key}", 400)
            linked = owned.get("app_id")
            if creds.application_id and linked and linked != creds.application_id:
                raise CarrierError(f"number {phone} is linked to Vonage application {linked}, not "
                                   f"{creds.application_id}: link it to this application", 400)
            if linked:
                out["vonage_linked_application_id"] = linked
        if not creds.signature_secret:
            if fields.get("vonage_allow_unsigned_webhooks") is not True:
                raise CarrierError("vonage_signature_secret: required: turn on signed webhooks for the Vonage "
                                   "application and give its signature secret (or, knowingly, set "
                                   "vonage_allow_unsigned_webhooks: true)", 400, field="vonage_signature_secret")
            log.warning("Vonage number imported WITHOUT webhook signatures (vonage_allow_unsigned_webhooks): anyone "
                        "who knows it can open a call with the agent", extra={"carrier": "vonage", "number": phone})
        rate = out.get("vonage_audio_rate")
        if rate not in (None, "") and int(rate) not in RATES:
            raise CarrierError(f"vonage_audio_rate must be one of {RATES}", 400)
        return out

    async def _check_app(self, creds: VonageCreds) -> None:
        """A JWT-authenticated read (GET /v1/calls?page_size=1): 401 means wrong application id / key."""
        await self.rest(creds, "GET", "/v1/calls", params={"page_size": "1"}, importing=True)

    async def _owned_number(self, creds: VonageCreds, phone: str) -> Any:
        digits = re.sub(r"\D", "", phone)
        _status, body = await self.rest(creds, "GET", "/account/numbers", kind="account", importing=True,
                                        params={"pattern": digits, "search_pattern": "1"})
        numbers = body.get("numbers") if isinstance(body, dict) else None
        return next((n for n in numbers or [] if isinstance(n, dict)
                     and re.sub(r"\D", "", str(n.get("msisdn") or "")) == digits), None)

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        creds = creds_of(fields)
        if creds.has_app:
            try:
                check_private_key(creds.private_key or "")   # (has_app: there is one)
                await self._check_app(creds)
                steps.append({"step": "application", "ok": True, "detail": "JWT accepted by the Voice API"})
            except CarrierError as e:
                steps.append({"step": "application", "ok": False, "detail": e.message})
        if creds.has_account:
            try:
                owned = await self._owned_number(creds, fields[self.number_field])
                steps.append({"step": "number", "ok": owned is not None,
                              "detail": "number found on the account" if owned else "number not on this account"})
            except CarrierError as e:
                steps.append({"step": "number", "ok": False, "detail": e.message})
        if not steps:
            steps.append({"step": "credentials", "ok": False, "detail": "no Vonage credentials"})
        return {"ok": all(s["ok"] for s in steps), "carrier": self.name, "steps": steps,
                "webhooks": {"answer_url": self.url("/vonage/answer"), "event_url": self.url("/vonage/events")}}

    def check_agent_settings(self, settings: dict[str, Any]) -> None:
        if "vonage" in settings:
            call_options(settings["vonage"])

    async def dispatch(self, call: Call, number: dict[str, Any], to_number: str) -> None:
        """Outbound: POST /v1/calls with the NCCO inline (no answer webhook), events to us, Vonage AMD if asked."""
        from vonage_voice import CreateCallRequest, Phone, ToPhone

        creds = creds_of(number)
        if not creds.has_app:
            raise CarrierError("outbound calls need the number's vonage_application_id and vonage_private_key", 400)
        try:
            options, amd = call_options(((call.agent or {}).get("settings") or {}).get("vonage"))
        except CarrierError as e:    # an agent saved before its settings were checked
            raise CarrierError(f"agent {(call.agent or {}).get('id')}: {e.message}; fix the agent's settings", 422,
                               "agent_id") from None
        st = self._state(call, number, None)
        await self._publish_token(st)
        st.amd_requested = amd
        body = CreateCallRequest(
            to=[ToPhone(number=to_number.lstrip("+"))], from_=Phone(number=number["phone_number"].lstrip("+")),
            ncco=_ncco_models(self.stream_ncco(st)), event_url=[self.url(f"/vonage/events?call_id={call.id}")],
            **options).model_dump(by_alias=True, exclude_none=True, mode="json")
        try:
            _status, resp = await self.rest(creds, "POST", "/v1/calls", json=body)
        except CarrierError:
            self.states.pop(call.id, None)
            raise
        uuid = str((resp or {}).get("uuid") or "")
        if not _UUID.match(uuid):
            self.states.pop(call.id, None)
            raise CarrierError("Vonage accepted the call but returned no uuid", 502)
        st.uuid = uuid
        call.set_carrier_sid(uuid)
        await call.record(carrier_sid=uuid, call_status="initiated",
                          extra={"vonage_conversation_uuid": str(resp.get("conversation_uuid") or "")[:64],
                                 "vonage_amd": amd})
        if call.ended.is_set():      # hung up while Vonage was creating it: cancel it there too
            self.background(self.rest_hangup(st))
            return
        self.arm_watchdog(st, self.attach_timeout + options["ringing_timer"], "stream_never_started")
        call.log.info("vonage outbound call created", extra={"uuid": uuid})
