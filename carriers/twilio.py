"""Twilio Programmable Voice: voice/status/AMD/transfer webhooks, bidirectional Media Streams, REST calls.

Inbound: Twilio POSTs /twilio/voice → we answer `<Connect><Stream url=…/twilio/media>` with our call id as a
`<Parameter>`; the stream's `start` attaches the call. Outbound: `calls.create(twiml=<Connect><Stream>…)`, with
Twilio's async AMD when the agent wants it. Hangup and transfer update the live call over REST.

Every webhook is checked with `twilio.request_validator.RequestValidator` against the imported number's auth
token, over the URL rebuilt from `settings.public_base` (what Twilio actually requested, whatever proxy sits in
between). REST goes through the official SDK with its aiohttp client (`AsyncTwilioHttpClient`), so nothing blocks
the event loop. Sources: see docs/twilio.md.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse
from yarl import URL

from gateway.amd.controller import AmdController, controller_for, maybe_start_amd, report_amd
from gateway.amd.settings import amd_settings
from gateway.call import Call, utcnow
from gateway.callmanager import CapacityError
from gateway.carrier import CarrierError, ImportField
from gateway.carrier_rest import refusal, unreachable
from gateway.consult import DelegatingConsultLeg
from gateway.frames import AmdResult, AnsweredBy, ConsultRequest, HangupSource, TransferRequest, TransferResult
from gateway.numbers import normalize_e164
from gateway.publicurl import unreachable_reason
from gateway.store.derived import DerivedCache

from .forwarding import ForwardingCarrier, UnknownWebhook, forwarded_fields, str_dict
from .mediasocket import StreamClosed
from .numberfields import number_settings
from .streamrelay import RelayStream, to_owner
from .twilio_consult import TwilioConsultation
from .twilio_media import RATE, CloseCode, MediaStream
from .wsdirect import DirectWebSocket

log = logging.getLogger("carriers.twilio")


_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_FINAL = ("completed", "busy", "no-answer", "failed", "canceled")
_FAILED_DIAL = ("busy", "no-answer", "failed")
#: the form fields the call callbacks read: what one forwarded to the process holding the call carries
FORWARDED_FIELDS = ("CallSid", "AccountSid", "CallStatus", "CallDuration", "AnsweredBy", "MachineDetectionDuration",
                    "DialCallStatus")
_END_SOURCE = {"completed": HangupSource.USER, "busy": HangupSource.USER, "no-answer": HangupSource.USER,
               "failed": HangupSource.CARRIER, "canceled": HangupSource.SYSTEM}


@dataclass(frozen=True)
class TwilioCreds:
    """REST credentials of one account; SignalWire adds its space host and a webhook signing key of its own."""

    account_sid: str
    auth_token: str
    signing_key: str | None = None
    space: str | None = None

    @property
    def signing_secret(self) -> str:
        """The key webhooks are signed with: Twilio's auth token, SignalWire's signing key when it has one."""
        return self.signing_key or self.auth_token


def creds_of(number: dict[str, Any] | None) -> TwilioCreds | None:
    """Account SID and auth token of a stored number (config + secrets columns, or a flat import dict)."""
    merged = number_settings(number)
    sid = merged.get("account_sid")
    token = merged.get("account_token") or merged.get("auth_token")
    return TwilioCreds(str(sid), str(token)) if sid and token else None


def _xml(resp: VoiceResponse, status: int = 200) -> web.Response:
    return web.Response(text=str(resp), status=status, content_type="text/xml")


def _ok() -> web.Response:
    return web.Response(text="", status=200)


def _forbidden() -> web.Response:
    return web.Response(text="invalid or missing request signature\n", status=403)


def _agent_settings(call: Call) -> dict[str, Any]:
    return (call.agent or {}).get("settings") or {}


def wants_twilio_amd(agent: dict[str, Any] | None, provider: str = "twilio") -> bool:
    """Ask the carrier (Twilio, or SignalWire's compatible AMD: `provider`) for AMD? With `amd.enabled` the agent's
    `amd.provider` decides (`provider` | "gateway"); without it, voicemail.enabled asks the carrier (unless the
    provider is explicitly "gateway")."""
    try:
        s = amd_settings(agent)
    except ValueError:
        return False
    if s.enabled:
        return s.provider == provider
    explicit = (((agent or {}).get("settings") or {}).get("amd") or {}).get("provider")
    return s.voicemail and explicit != "gateway"


def _text(form: Mapping[str, object], key: str) -> str | None:
    """A webhook form field as text: Twilio posts text only, so a file or a missing field is None."""
    v = form.get(key)
    return v if isinstance(v, str) else None


_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar("twilio_retry_after", default=None)


class BoundedTwilioHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client with the timeout actually applied: `AsyncTwilioHttpClient` accepts a timeout in its
    constructor but never passes it to aiohttp (whose default is 5 minutes), so a hung Twilio API would hold a
    dispatch or hangup that long. The bound is read per request (`carrier_timeout`)."""

    def __init__(self, timeout: Any, carrier: str = "Twilio") -> None:
        super().__init__()
        self.bound = timeout
        self.carrier = carrier

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        timeout = self.bound()
        try:
            async with asyncio.timeout(timeout):
                response = await super().request(method, url, *args, **kwargs)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise unreachable(self.carrier, e, timeout, URL(url).host or "") from None
        # the SDK's exception drops the headers: keep Retry-After where twilio_refusal (same task) can read it
        _retry_after.set((response.headers or {}).get("Retry-After") if response.status_code == 429 else None)
        return response


def twilio_refusal(e: TwilioRestException, *, importing: bool = False, carrier: str = "Twilio",
                   field: str = "account_token", credentials: str = "account SID / auth token") -> CarrierError:
    """A Twilio (or Twilio-compatible: `carrier`) error answer mapped like every carrier's
    (gateway/carrier_rest.py), the carrier's code quoted; `field` names the secret at fault on import."""
    detail = f"{e.msg} ({e.code})" if e.code else str(e.msg or "")
    return refusal(carrier, e.status, detail, retry_after=_retry_after.get(), importing=importing,
                   field=field, credentials=credentials)


class TwilioLeg(DelegatingConsultLeg):
    """The Twilio side of one call: REST control of the call SID and the current media stream (if any)."""

    #: a transfer's text message is said by Twilio itself (<Say> before <Dial>), in its own voice
    says_text = True

    def __init__(self, carrier: TwilioCarrier, call: Call, creds: TwilioCreds) -> None:
        self.carrier = carrier
        self.call = call
        self.creds = creds
        # connecting → live ⇄ transferring/reconnecting; released = Twilio goes on without us (transfer, voicemail)
        self.state = "connecting"
        self.stream: MediaStream | None = None
        self.completed = False
        self.released = False
        self.transfer_targets: list[str] = []
        self.transfer_attempts: list[dict[str, Any]] = []
        #: the attended transfer's consultation call while one runs (carriers/twilio_consult.py)
        self.consultation: TwilioConsultation | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def sid(self) -> str | None:
        return self.call.carrier_sid

    def arm_watchdog(self, timeout: float, reason: str) -> None:
        """End the call if no media stream arrives in time (Twilio never connected, or a reconnect failed), or if a
        transfer never reports back (its callbacks lost): a call must not stay open in the gateway forever."""
        self.disarm_watchdog()
        watching = self.state

        async def fire() -> None:
            await asyncio.sleep(timeout)
            if not self.call.is_active or self.state != watching:
                return
            if watching == "transferring":
                log.warning("transfer never reported back",
                            extra={"carrier": self.carrier.name, "call_id": self.call.id})
                self.released = True   # the caller may well be talking to the target: do not cut them off
                if self.call.transfer_result is None:
                    target = self.carrier._current_target(self)
                    await self.call.transfer_finished(TransferResult(target, "unknown"))
                await self.call.end(HangupSource.SYSTEM, reason)
            elif self.stream is None:
                if not await self.call.manager.owns(self.call, HangupSource.CARRIER.value, reason):
                    return      # the stream reached another process, which adopted the call
                log.warning("no media stream for the call",
                            extra={"carrier": self.carrier.name, "call_id": self.call.id, "reason": reason})
                await self.complete_at_twilio()
                await self.call.end(HangupSource.CARRIER, reason, status="failed")

        self._watchdog = asyncio.create_task(fire(), name=f"twilio-watchdog-{self.call.id}")

    def disarm_watchdog(self) -> None:
        if self._watchdog is not None and not self._watchdog.done() and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None

    def _shielded(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run a REST action so that cancelling the media sender (socket gone) cannot abort it half-way."""
        return asyncio.shield(self.carrier.spawn(coro, report=False))

    # -- CallLeg ------------------------------------------------------------------------------------------------
    async def hangup(self, call: Call, reason: str) -> None:
        if self.state == "transferring" and reason == "shutdown":
            # the gateway stops (drain timeout, stop) while Twilio runs the transfer's <Dial>: the caller may be
            # talking to the target already, and the call needs nothing of this process any more. Let Twilio go
            # on (as the transfer watchdog does) instead of completing the call under the conversation.
            self.released = True
            self.disarm_watchdog()
            log.warning("stopping during a transfer: the call is left to Twilio",
                        extra={"carrier": self.carrier.name, "call_id": call.id})
            if call.transfer_result is None:
                await call.transfer_finished(TransferResult(self.carrier._current_target(self), "unknown"))
            return
        if call.hangup is not None and call.hangup.source is HangupSource.AGENT:
            await self._shielded(self._hangup_after_goodbye())
        else:
            # API / system: the call ends here at once; the REST request finishes in the background, bounded by
            # carrier_timeout (shutdown waits for it)
            self.carrier.spawn(self.complete_at_twilio(), report=False)

    async def _hangup_after_goodbye(self) -> None:
        if self.stream is not None:
            await self.stream.drain()   # let the goodbye play out before the line drops
        await self.complete_at_twilio()

    async def complete_at_twilio(self) -> None:
        """REST `Status=completed`; a call Twilio no longer knows (404 / 20404) has already ended: fine."""
        if self.completed or self.released or not self.sid:
            return      # no CallSid yet: dispatch completes the call once Twilio has created it
        self.completed = True
        try:
            await self.carrier.client(self.creds).calls(self.sid).update_async(status="completed")
            log.info("twilio call completed over REST", extra={"carrier": self.carrier.name, "call_id": self.call.id})
        except TwilioRestException as e:
            if e.status == 404 or e.code == 20404:
                log.info("twilio call had already ended", extra={"carrier": self.carrier.name, "call_id": self.call.id})
                return
            log.warning("twilio refused the hangup: %s (%s)", e.msg, e.code,
                        extra={"carrier": self.carrier.name, "call_id": self.call.id, "status": e.status})
        except CarrierError as e:  # no answer in time / network: the call still ends when Twilio's stream does
            log.warning("twilio hangup request failed: %s", e.message,
                        extra={"carrier": self.carrier.name, "call_id": self.call.id})

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        await self._shielded(self._transfer(call, request))

    async def _transfer(self, call: Call, request: TransferRequest) -> None:
        if self.stream is not None:
            await self.stream.drain()   # what the engine said before asking to transfer is heard first
        self.transfer_targets = [request.number, *[n for n in request.backup_numbers if n != request.number]]
        self.transfer_attempts = []
        previous = self.state
        self.state = "transferring"
        try:
            await self.update_twiml(self.carrier.dial_twiml(call, 0, self.transfer_targets[0], request.message))
        except Exception:
            self.state = previous
            raise
        opts = _agent_settings(call).get("transfer") or {}
        per_target = int(opts.get("timeout") or self.carrier.dial_timeout)
        self.arm_watchdog((per_target + 15) * len(self.transfer_targets) + 60, "transfer_timeout")
        log.info("transfer started", extra={"carrier": self.carrier.name, "call_id": call.id,
                                            "targets": len(self.transfer_targets)})

    # -- ConsultingLeg (gateway/consult.py) ----------------------------------------------------------------------
    async def consult(self, call: Call, request: ConsultRequest) -> None:
        if self.consultation is not None:
            raise CarrierError("a consultation call is already running", 409)
        consultation = TwilioConsultation(self, request.number)
        caller_stream = self.stream
        self.consultation = consultation
        try:
            await consultation.start()
        except Exception:
            self.consultation = None
            raise
        if caller_stream is not None and self.stream is caller_stream:
            # Twilio runs the conference TwiML now; our side of the caller's stream ends with it
            self.stream = None
            await caller_stream.ws.close()

    async def update_twiml(self, twiml: VoiceResponse) -> None:
        if not self.sid:
            raise CarrierError(f"the {self.carrier.label} call has no CallSid yet", 409)
        try:
            await self.carrier.client(self.creds).calls(self.sid).update_async(twiml=str(twiml))
        except TwilioRestException as e:
            if e.status == 404 or e.code == 20404:
                raise CarrierError(f"the {self.carrier.label} call has already ended", 409) from None
            raise self.carrier.refusal(e) from None

    async def leave_voicemail(self, message: str | None) -> None:
        """After the beep (AMD DetectMessageEnd): Twilio <Say>s a text (or <Play>s an http(s) URL), then <Hangup/>.

        Twilio plays it even though our stream ends, and no TTS is needed in the gateway or the engine."""
        call = self.call
        self.state = "voicemail"
        message = (message or "").strip()
        twiml = VoiceResponse()
        kind = "none"
        if message and re.match(r"^https?://", message):
            twiml.play(message)
            kind = "audio"
        elif message:
            twiml.say(message)
            kind = "text"
        twiml.hangup()
        try:
            await self.update_twiml(twiml)
            self.released = True
        except CarrierError as e:
            log.warning("voicemail drop failed: %s", e.message,
                        extra={"carrier": self.carrier.name, "call_id": call.id})
            await self.complete_at_twilio()
        await call.record(voicemail_type=kind)
        await call.emit("call:voicemail_started", {"type": kind, "via": self.carrier.name})
        await call.end(HangupSource.SYSTEM, "voicemail")

    async def stream_gone(self, stream: MediaStream) -> None:
        """The websocket closed: the caller left, or Twilio moved on to our transfer / voicemail TwiML."""
        if self.stream is not stream:
            return
        self.stream = None
        call = self.call
        if not call.is_active:
            return
        if self.state == "consulting":   # the caller waits in the conference; or the target's stream ended
            if self.consultation is not None and self.consultation.stream is stream:
                await self.consultation.target_gone()
            return
        if self.state in ("transferring", "voicemail", "reconnecting"):
            return
        source, reason = stream.end_source()
        await call.end(source, reason)


class TwilioCarrier(ForwardingCarrier):
    name = "twilio"
    providers = ("twilio",)
    import_fields: tuple[ImportField, ...] = (
        ImportField("phone_number", str, required=True, e164=True, help="the Twilio number, E.164"),
        ImportField("account_sid", str, required=True, help="Twilio Account SID (AC…)"),
        ImportField("account_token", str, required=True, secret=True, help="Twilio Auth Token"),
        ImportField("name", str, help="a label for this number"),
        ImportField("configure_webhooks", bool, default=False,
                    help="point the number's voice URL and status callback at this gateway"),
        ImportField("force_webhooks", bool, default=False,
                    help="configure the webhooks even when the public URL is loopback, private or not https "
                         "(a tunnel or a local stand-in)"),
    )

    #: seconds a new media websocket may take to send `start`
    start_timeout = 5.0
    #: seconds between our TwiML answer and the media stream arriving (inbound / after a failed transfer)
    connect_timeout = 30.0
    #: seconds an outbound call may ring before its stream must be up
    outbound_timeout = 120.0
    #: seconds each transfer target rings (<Dial timeout>)
    dial_timeout = 30

    # -- what a Twilio-compatible carrier (carriers/signalwire.py) changes -------------------------------------------
    #: the carrier's name in messages
    label = "Twilio"
    #: `settings.amd.provider` that asks this carrier's own AMD
    amd_provider = "twilio"
    #: what an account id looks like, and how to say so
    account_sid_pattern = _ACCOUNT_SID
    account_sid_rule = "account_sid must be AC followed by 32 hexadecimal characters"
    #: import fields holding the account id and its REST secret (named in errors)
    sid_field, token_field = "account_sid", "account_token"
    credentials_label = "account SID / auth token"
    #: webhook signature headers, the first one present is checked
    signature_headers: tuple[str, ...] = (SIGNATURE_HEADER,)
    #: environment variable pointing the REST API at a stand-in
    api_base_env = "GATEWAY_TWILIO_API_BASE"

    def path(self, leaf: str) -> str:
        """This carrier's URL for one webhook or the media socket: /twilio/voice, /signalwire/voice…"""
        return f"/{self.name}/{leaf}"

    def creds_of(self, number: dict[str, Any] | None) -> TwilioCreds | None:
        return creds_of(number)

    def rest_base(self, creds: TwilioCreds) -> str | None:
        """Base URL of the 2010-04-01 REST API for this account (None: the SDK's own, https://api.twilio.com)."""
        return self.api_base_url.rstrip("/") if self.api_base_url else None

    def refusal(self, e: TwilioRestException, *, importing: bool = False) -> CarrierError:
        return twilio_refusal(e, importing=importing, carrier=self.label, field=self.token_field,
                              credentials=self.credentials_label)

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        #: REST base URL override (tests, Twilio-compatible mocks); default https://api.twilio.com
        self.api_base_url: str | None = os.environ.get(self.api_base_env) or None
        self.legs: dict[str, TwilioLeg] = {}
        self._http: BoundedTwilioHttpClient | None = None
        self._clients: dict[tuple[str, str, str | None], Client] = {}
        #: {account sid: its numbers' auth tokens}; dropped with the store's cached numbers, also when another
        #: process of the cluster wrote one (gateway/store/derived.py)
        self._tokens: DerivedCache[dict[str, set[str]]] = DerivedCache(self._load_tokens, 60.0)
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], report: bool = True) -> asyncio.Task[None]:
        """A background REST action, kept until done so shutdown can wait for it; its failure is logged when
        nobody awaits it (`report`)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if report and not t.cancelled() and t.exception() is not None:
                log.error("twilio background action failed", exc_info=t.exception(), extra={"carrier": self.name})
        task.add_done_callback(done)
        return task

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app.router.add_post(self.path("voice"), self.voice_webhook)
        app.router.add_get(self.path("media"), self.media_websocket)
        app.router.add_post(self.path("status"), self.status_webhook)
        app.router.add_post(self.path("amd"), self.amd_webhook)
        app.router.add_post(self.path("transfer_status"), self.transfer_webhook)
        app.router.add_post(self.path("transfer_leg"), self.transfer_leg_webhook)
        app.router.add_post(self.path("consult_status"), self.consult_status_webhook)

    async def start(self) -> None:
        self.gateway.calls.subscribe(self._on_call_event)
        await super().start()      # forwarded webhooks (carriers/forwarding.py)
        sdk_log = logging.getLogger("twilio.async_http_client")
        if sdk_log.level == logging.NOTSET:
            sdk_log.setLevel(logging.WARNING)   # the SDK logs ~10 INFO lines per REST request; ours say what matters

    async def stop(self) -> None:
        self.gateway.calls.unsubscribe(self._on_call_event)
        for leg in list(self.legs.values()):
            if leg.call.is_active:
                await leg.call.request_hangup(HangupSource.SYSTEM, "shutdown", immediate=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._clients.clear()

    def _on_call_event(self, kind: str, call: Call) -> None:
        if kind not in ("call_ended", "call_released") or call.carrier != self.name:
            return
        leg = self.legs.pop(call.id, None)
        if leg is None:
            return
        leg.disarm_watchdog()
        if kind == "call_released":     # another process holds the stream now: the call goes on there
            return
        if leg.consultation is not None:    # the call ended during a consultation: the target's call ends too
            self.spawn(leg.consultation.end_target_call())
        source = call.hangup.source if call.hangup else HangupSource.SYSTEM
        if source in (HangupSource.AGENT, HangupSource.SYSTEM) and not (leg.completed or leg.released):
            # ended on our side before the leg could act (API hangup while ringing, watchdog, shutdown)
            self.spawn(leg.complete_at_twilio())

    # -- REST ---------------------------------------------------------------------------------------------------
    def client(self, creds: TwilioCreds) -> Client:
        """One SDK client per account, all sharing one aiohttp session (created inside the running loop)."""
        if self._http is None:
            self._http = BoundedTwilioHttpClient(lambda: self.gateway.settings.carrier_timeout, self.label)
        base = self.rest_base(creds)
        key = (creds.account_sid, creds.auth_token, base)
        c = self._clients.get(key)
        if c is None:
            c = Client(creds.account_sid, creds.auth_token, http_client=self._http)
            if base:
                c.api.base_url = base
            self._clients[key] = c
        return c

    async def _creds_for_number(self, number: dict[str, Any]) -> TwilioCreds:
        creds = self.creds_of(number)
        if creds is None and number.get("id") is not None:
            creds = self.creds_of(await self.gateway.store.get_number(number["id"], with_secrets=True))
        if creds is None:
            raise CarrierError(f"number {number.get('phone_number')} has no {self.label} {self.sid_field}/"
                               f"{self.token_field}", 409)
        return creds

    # -- URLs and TwiML -----------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.gateway.settings.public_base + path

    def stream_twiml(self, call: Call) -> VoiceResponse:
        resp = VoiceResponse()
        stream = resp.connect().stream(url=self.gateway.settings.public_ws_base + self.path("media"))
        stream.parameter(name="call_id", value=call.id)
        stream.parameter(name="agent_id", value=str((call.agent or {}).get("id") or ""))
        return resp

    def dial_twiml(self, call: Call, attempt: int, target: str, message: str | None = None) -> VoiceResponse:
        resp = VoiceResponse()
        if message:
            resp.say(message)
        q = f"?call_id={call.id}&attempt={attempt}"
        opts = _agent_settings(call).get("transfer") or {}
        timeout = int(opts.get("timeout") or self.dial_timeout)
        dial = resp.dial(action=self.url(self.path("transfer_status") + q), method="POST", timeout=timeout)
        dial.number(target, status_callback_event="answered", status_callback=self.url(self.path("transfer_leg") + q),
                    status_callback_method="POST")
        return resp

    # -- signatures ---------------------------------------------------------------------------------------------
    def signature_ok(self, request: web.Request, params: Any, tokens: list[str], *, ws: bool = False) -> bool:
        sig = self.signature_of(request)
        if not sig or not tokens:
            return False
        base = self.gateway.settings.public_ws_base if ws else self.gateway.settings.public_base
        url = base + request.raw_path
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        return any(RequestValidator(t).validate(url, params, sig, algorithm) for t in tokens)

    def signature_of(self, request: web.Request) -> str | None:
        return next((request.headers[h] for h in self.signature_headers if h in request.headers), None)

    async def account_tokens(self, account_sid: str | None) -> list[str]:
        """Auth tokens stored for an account (any of its imported numbers); cached, refreshed on import/delete."""
        if not account_sid or not self.account_sid_pattern.match(account_sid):
            return []
        tokens = await self._tokens.get(self.gateway.store)
        if account_sid not in tokens:   # imported where no notification reached this process: read again
            self._tokens.clear()
            tokens = await self._tokens.get(self.gateway.store)
        return sorted(tokens.get(account_sid, ()))

    async def _load_tokens(self) -> dict[str, set[str]]:
        tokens: dict[str, set[str]] = {}
        page = 1
        while True:
            rows, total = await self.gateway.store.list_numbers(page, 500, provider=self.name, with_secrets=True)
            for row in rows:
                c = self.creds_of(row)
                if c:
                    tokens.setdefault(c.account_sid, set()).add(c.signing_secret)
            if page * 500 >= total or not rows:
                break
            page += 1
        return tokens

    async def _call_and_tokens(self, request: web.Request, form: Any) -> tuple[Call | None, list[str]]:
        """The live call a callback is about (by our call_id, else CallSid) and the tokens to check it with."""
        call_id = request.query.get("call_id")
        call = self.gateway.calls.get(call_id) if call_id else None
        if call is None and form.get("CallSid"):
            call = self.gateway.calls.find_by_sid(form.get("CallSid"))
        if call is not None and call.carrier != self.name:
            call = None
        leg = self.legs.get(call.id) if call else None
        if leg is not None:
            return call, [leg.creds.signing_secret]
        return call, await self.account_tokens(_text(form, "AccountSid"))

    # -- inbound call -------------------------------------------------------------------------------------------
    async def voice_webhook(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            to_number = normalize_e164(_text(form, "To") or "")
        except ValueError:
            to_number = None
        number = await self.gateway.store.find_number(to_number, self.name, with_secrets=True) if to_number else None
        creds = self.creds_of(number)
        tokens = [creds.signing_secret] if creds else await self.account_tokens(_text(form, "AccountSid"))
        if not self.signature_ok(request, form, tokens):
            log.warning("rejected unsigned or badly signed voice webhook",
                        extra={"carrier": self.name, "call_sid": form.get("CallSid"), "known_number": bool(number)})
            return _forbidden()
        existing = self.gateway.calls.find_by_sid(_text(form, "CallSid") or "")
        if existing is not None and existing.carrier == self.name and existing.id in self.legs:
            return _xml(self.stream_twiml(existing))   # Twilio retried the webhook: same call, same answer
        from_raw = _text(form, "From") or ""
        try:
            from_number = normalize_e164(from_raw)
        except ValueError:
            from_number = from_raw or "anonymous"
        public_number = {k: v for k, v in number.items() if k != "secrets"} if number else None
        meta = {"account_sid": form.get("AccountSid"), "caller_name": form.get("CallerName"),
                "from_country": form.get("FromCountry")}
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number=from_number,
                to_number=to_number or _text(form, "To") or "",
                number=public_number, carrier_sid=_text(form, "CallSid"), status="ringing",
                metadata={k: v for k, v in meta.items() if v})
        except CapacityError:
            log.warning("gateway at capacity: rejecting call", extra={"carrier": self.name})
            resp = VoiceResponse()
            resp.reject(reason="busy")
            return _xml(resp)
        if number is None or creds is None:
            await call.emit("phone_call:rejected", {"reason": "unknown_number", "to_number": form.get("To")})
            await call.end(HangupSource.SYSTEM, "unknown_number", status="rejected")
            resp = VoiceResponse()
            resp.reject()
            return _xml(resp)
        leg = TwilioLeg(self, call, creds)
        self.legs[call.id] = leg
        leg.arm_watchdog(self.connect_timeout, "stream_not_connected")
        log.info("inbound call", extra={"carrier": self.name, "call_id": call.id, "call_sid": form.get("CallSid")})
        return _xml(self.stream_twiml(call))

    # -- media --------------------------------------------------------------------------------------------------
    async def media_websocket(self, request: web.Request) -> web.WebSocketResponse:
        # no permessage-deflate: base64 μ-law barely compresses and deflate would cost more CPU than everything else
        ws = DirectWebSocket(max_msg_size=256 * 1024, autoping=True, compress=False)
        await ws.prepare(request)
        stream = MediaStream(self, ws, request)
        try:
            await stream.run()
        except Exception:
            log.exception("twilio media stream failed", extra={"carrier": self.name, "stream_sid": stream.stream_sid})
            if not ws.closed:
                await ws.close(code=1011, message=b"internal error")
        return ws

    async def claim_stream(self, stream: MediaStream, call_id: Any, call_sid: Any,
                           account_sid: Any) -> tuple[Call, TwilioLeg]:
        """A `start` names our call: check it belongs to this stream, then attach (or re-attach) the media. A call
        answered by another process of the cluster is adopted first (docs/deploy.md)."""
        call = self.gateway.calls.get(call_id) if isinstance(call_id, str) else None
        if call is None and isinstance(call_id, str) and call_id:
            call = await self._adopt(stream, call_id, call_sid)
        leg = self.legs.get(call_id) if call is not None else None
        if call is None or leg is None or not call.is_active:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "customParameters.call_id names no call waiting for media")
        consultation = leg.consultation
        if consultation is not None and consultation.sid and call_sid == consultation.sid:
            return await self._claim_consult_stream(stream, call, leg, consultation)
        if leg.stream is not None:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the call already has a media stream")
        if call.carrier_sid and call_sid and call_sid != call.carrier_sid:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "start.callSid does not match the call")
        if self.signature_of(stream.request) is not None and not self.signature_ok(
                stream.request, {}, [leg.creds.signing_secret], ws=True):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "the upgrade's signature does not match")
        if not call.carrier_sid and isinstance(call_sid, str):
            call.set_carrier_sid(call_sid)
            await call.record(carrier_sid=call_sid)
        leg.stream = stream
        leg.disarm_watchdog()
        if call.bus is None:
            maybe_start_amd(call)     # before attach, so an AMD gate holds the engine's first words
            await call.attach(leg, RATE)
        else:
            log.info("media stream re-attached", extra={"carrier": self.name, "call_id": call.id})
        leg.state = "live"
        call.metadata.setdefault("stream_sid", stream.stream_sid)
        return call, leg

    async def _claim_consult_stream(self, stream: MediaStream, call: Call, leg: TwilioLeg,
                                    consultation: TwilioConsultation) -> tuple[Call, TwilioLeg]:
        """The attended transfer's target answered: its stream (same account, its own CallSid) carries the call's
        media until the transfer completes or the caller is taken back."""
        if consultation.stream is not None or leg.state != "consulting":
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the consultation call already has a media stream")
        if self.signature_of(stream.request) is not None and not self.signature_ok(
                stream.request, {}, [leg.creds.signing_secret], ws=True):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "the upgrade's signature does not match")
        leg.stream = stream
        await consultation.answered(stream)
        return call, leg

    async def _adopt(self, stream: MediaStream, call_id: str, call_sid: Any) -> Call | None:
        """Take over a call whose voice webhook another process answered (its stream URL named this node): the
        stream must match the row (CallSid) and carry a valid signature for the number's account before the call
        moves here; the leg is rebuilt from the number's credentials."""
        store = self.gateway.store
        row = await store.find_call(call_uuid=call_id, flush=False)   # another process's row: nothing to flush
        if row is None or row["channel_type"] != self.name or row["ended_at"] is not None:
            return None
        consulting = False
        if row["carrier_sid"] and call_sid and call_sid != row["carrier_sid"]:
            # an attended transfer's target (its own CallSid, recorded by the owner when it dialled it)?
            if call_sid != (row.get("extra") or {}).get("consult_call_sid"):
                raise StreamClosed(CloseCode.UNKNOWN_CALL, "start.callSid does not match the call")
            consulting = True
        number = await store.get_number(row["phone_number_id"], with_secrets=True) if row["phone_number_id"] else None
        creds = self.creds_of(number)
        if creds is None:
            return None
        if self.signature_of(stream.request) is not None and not self.signature_ok(
                stream.request, {}, [creds.signing_secret], ws=True):
            raise StreamClosed(CloseCode.BAD_SIGNATURE, "the upgrade's signature does not match")
        if consulting:
            # the owner's engine is talking with the agent's side of this call: the target's stream goes there
            raise await self._relay_target(stream, row)
        call = await self.gateway.calls.adopt(row)
        if call is None:
            return None
        leg = self.legs[call.id] = TwilioLeg(self, call, creds)
        leg.arm_watchdog(self.connect_timeout, "stream_not_connected")   # disarmed once the stream attaches
        return call

    async def _relay_target(self, stream: MediaStream, row: dict[str, Any]) -> RelayStream:
        """Where the consultation target's stream of a call held by another process goes (carriers/streamrelay.py):
        the owner's private URL, with the upgrade's signature headers so the owner checks it as its own."""
        headers = {h: stream.request.headers[h] for h in (*self.signature_headers, SIGNATURE_SETTINGS_HEADER)
                   if h in stream.request.headers}
        target = await to_owner(self.gateway, row["owner"], stream.request, headers)
        if target is None:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "the call's owner is not reachable for its consultation stream")
        return target

    # -- callbacks about a call (status, AMD, transfer, consultation) -------------------------------------------
    # Each is authenticated where it arrives; when another process of the cluster holds the call, that process
    # carries it out (control op `<carrier>:webhook`) and its answer (TwiML or an empty 200) goes back to Twilio.
    async def status_webhook(self, request: web.Request) -> web.Response:
        return await self._callback(request, "status")

    async def amd_webhook(self, request: web.Request) -> web.Response:
        return await self._callback(request, "amd")

    async def transfer_leg_webhook(self, request: web.Request) -> web.Response:
        return await self._callback(request, "transfer_leg")

    async def transfer_webhook(self, request: web.Request) -> web.Response:
        """<Dial action>: the attempt's DialCallStatus decides: done, next backup number, or back to the agent."""
        return await self._callback(request, "transfer")

    async def consult_status_webhook(self, request: web.Request) -> web.Response:
        """Status callback of an attended transfer's consultation call (busy, no answer, hung up)."""
        return await self._callback(request, "consult_status")

    async def _callback(self, request: web.Request, kind: str) -> web.Response:
        form = await request.post()
        call, tokens = await self._call_and_tokens(request, form)
        if not self.signature_ok(request, form, tokens):
            return _forbidden()
        fields = forwarded_fields({k: v for k, v in form.items() if isinstance(v, str)}, FORWARDED_FIELDS)
        query = {k: v[:200] for k, v in request.query.items()}
        if call is None:
            call_id = query.get("call_id") or await self.call_id_of_sid(fields.get("CallSid") or "")
            forwarded = await self.forward(call_id, {"kind": kind, "form": fields, "query": query})
            if forwarded is not None:
                twiml = forwarded.get("twiml")
                return web.Response(text=twiml, content_type="text/xml") if isinstance(twiml, str) else _ok()
        twiml = await self._carry_out(kind, call, fields, query)
        return web.Response(text=twiml, content_type="text/xml") if twiml is not None else _ok()

    def forwarded_target(self, call_id: str) -> Call | None:
        call = self.gateway.calls.get(call_id)
        return call if call is not None and call.carrier == self.name else None

    async def on_forwarded(self, target: Call, args: dict[str, Any]) -> dict[str, Any]:
        """A callback another process received about a call held here (op `<carrier>:webhook`)."""
        twiml = await self._carry_out(str(args.get("kind") or ""), target, str_dict(args.get("form")),
                                      str_dict(args.get("query")))
        return {"success": True, "twiml": twiml}

    async def _carry_out(self, kind: str, call: Call | None, form: dict[str, str],
                         query: dict[str, str]) -> str | None:
        """What a callback does to `call` (None: no process holds it); TwiML to answer with, or None (empty 200)."""
        if kind == "status":
            await self._on_status(call, form, query)
            return None
        if kind == "amd":
            if call is not None:
                await self._on_amd(call, form)
            return None
        if kind == "transfer_leg":
            leg = self.legs.get(call.id) if call else None
            if call is not None and leg is not None and form.get("CallStatus") in ("in-progress", "answered"):
                await self._transfer_succeeded(call, leg, self._target(leg, query))
            return None
        if kind == "transfer":
            return str(await self._on_dial_action(call, form, query))
        if kind == "consult_status":
            leg = self.legs.get(call.id) if call else None
            consultation = leg.consultation if leg is not None else None
            if consultation is not None and consultation.sid and consultation.sid == form.get("CallSid"):
                await consultation.status(form.get("CallStatus") or "")
            return None
        raise UnknownWebhook(self.label, kind)

    async def _on_status(self, call: Call | None, form: dict[str, str], query: dict[str, str]) -> None:
        status = form.get("CallStatus") or ""
        duration = form.get("CallDuration")
        extra: dict[str, Any] = {"twilio_status": status}
        if duration is not None and duration.isdigit():
            extra["twilio_call_duration"] = int(duration)
        if call is None:
            await self._update_ended(form, query, status, extra)
            return
        leg = self.legs.get(call.id)
        if status in ("queued", "initiated", "ringing"):
            if not call.answered:
                await call.record(call_status=status, extra=extra)
        elif status == "in-progress":
            if not call.answered:
                await call.record(call_status="in-progress", answered_at=utcnow(), extra=extra)
        elif status in _FINAL:
            if leg is not None and leg.state == "transferring" and call.transfer_result is None:
                await call.transfer_finished(TransferResult(self._current_target(leg), "canceled"))
            if leg is not None:
                leg.completed = True   # Twilio says it is over: nothing to hang up
            await call.record(extra=extra)
            await call.end(_END_SOURCE[status], "caller_hangup" if status == "completed" else status, status=status)
        else:
            log.warning("unknown CallStatus %r", status, extra={"carrier": self.name, "call_id": call.id})

    async def _update_ended(self, form: dict[str, str], query: dict[str, str], status: str,
                            extra: dict[str, Any]) -> None:
        """A callback about a call that is no longer live (transferred, ended by the stream): keep the log true."""
        store = self.gateway.store
        row = None
        if query.get("call_id"):
            row = await store.find_call(call_uuid=query["call_id"])
        if row is None and form.get("CallSid"):
            row = await store.find_call(carrier_sid=form["CallSid"])
        if row is None:
            return
        fields: dict[str, Any] = {"extra": extra}
        if status in _FINAL and row.get("call_status") not in _FINAL:
            fields["call_status"] = status
        await store.update_call(row["id"], **fields)

    async def _on_amd(self, call: Call, form: dict[str, str]) -> None:
        try:
            answered_by = AnsweredBy(form.get("AnsweredBy", "unknown"))
        except ValueError:
            answered_by = AnsweredBy.UNKNOWN
        try:
            duration_ms = int(float(form.get("MachineDetectionDuration") or 0))
        except ValueError:
            duration_ms = 0
        result = AmdResult(answered_by, duration_ms, source=self.name)
        leg = self.legs.get(call.id)
        if controller_for(call) is not None or leg is None:
            await report_amd(call, result)          # the agent's AMD controller acts (gate, WAV, text, fax…)
            return
        # Twilio AMD asked for by voicemail.enabled alone (no AMD controller): the voicemail drop is ours
        vm = _agent_settings(call).get("voicemail") or {}
        message = str(vm.get("message") or "").strip()
        if answered_by.is_machine and message.lower().endswith(".wav") and not re.match(r"^https?://", message):
            # a local WAV file Twilio cannot fetch: the AMD controller plays it through the stream
            settings = replace(amd_settings(call.agent), enabled=True, provider=self.amd_provider)
            AmdController(call, settings, external=True).start()
            await report_amd(call, result)
            return
        await call.set_amd(result)
        if answered_by.is_machine:
            self.spawn(leg.leave_voicemail(message))
        elif answered_by is AnsweredBy.FAX:
            await call.request_hangup(HangupSource.SYSTEM, "fax")

    # -- transfer callbacks -------------------------------------------------------------------------------------
    @staticmethod
    def _current_target(leg: TwilioLeg) -> str | None:
        n = len(leg.transfer_attempts)
        return leg.transfer_targets[min(n, len(leg.transfer_targets) - 1)] if leg.transfer_targets else None

    @staticmethod
    def _target(leg: TwilioLeg, query: dict[str, str]) -> str | None:
        try:
            return leg.transfer_targets[int(query.get("attempt", "0"))]
        except (ValueError, IndexError):
            return None

    async def _transfer_succeeded(self, call: Call, leg: TwilioLeg, target: str | None) -> None:
        leg.released = True   # the caller now talks to the target through Twilio; the agent is done
        if call.transfer_result is None:
            await call.transfer_finished(TransferResult(target, "completed"))
        await call.end(HangupSource.AGENT, "transferred")

    async def _on_dial_action(self, call: Call | None, form: dict[str, str], query: dict[str, str]) -> VoiceResponse:
        hang = VoiceResponse()
        hang.hangup()
        leg = self.legs.get(call.id) if call else None
        if call is None or leg is None:
            return hang
        dial_status = form.get("DialCallStatus")
        status = "failed" if dial_status is None else dial_status
        try:
            attempt = int(query.get("attempt", "0"))
        except ValueError:
            attempt = 0
        target = self._target(leg, query)
        leg.transfer_attempts.append({"number": target, "status": status})
        await call.record(extra={"transfer_attempts": list(leg.transfer_attempts)})
        log.info("transfer attempt finished", extra={"carrier": self.name, "call_id": call.id, "attempt": attempt,
                                                     "dial_status": status})
        if status in ("completed", "answered"):
            await self._transfer_succeeded(call, leg, target)
            return hang
        if status in _FAILED_DIAL and attempt + 1 < len(leg.transfer_targets):
            nxt = leg.transfer_targets[attempt + 1]
            await call.record(transfer_target=nxt)
            return self.dial_twiml(call, attempt + 1, nxt)
        await call.transfer_finished(TransferResult(target, status))
        if status == "canceled":
            return hang
        # nobody took the call: give the caller back to the agent on a new stream of the same call
        leg.state = "reconnecting"
        leg.arm_watchdog(self.connect_timeout, "stream_not_reconnected")
        return self.stream_twiml(call)

    # -- outbound -----------------------------------------------------------------------------------------------
    def check_agent_settings(self, settings: dict[str, Any]) -> None:
        """`settings.transfer.timeout` becomes <Dial timeout>, which Twilio wants as a positive whole number of
        seconds (warning 13212, https://www.twilio.com/docs/api/errors/13212)."""
        transfer = settings.get("transfer")
        timeout = transfer.get("timeout") if isinstance(transfer, dict) else None
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
            raise CarrierError("settings.transfer.timeout: must be a positive whole number of seconds (Twilio "
                               "<Dial timeout>)", 400, "settings.transfer.timeout")

    async def dispatch(self, call: Call, number: dict[str, Any], to_number: str) -> None:
        creds = await self._creds_for_number(number)
        leg = TwilioLeg(self, call, creds)
        self.legs[call.id] = leg
        q = f"?call_id={call.id}"
        kwargs: dict[str, Any] = dict(
            to=to_number, from_=number["phone_number"], twiml=str(self.stream_twiml(call)),
            status_callback=self.url(self.path("status") + q), status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"])
        amd = wants_twilio_amd(call.agent, self.amd_provider)
        if amd:
            kwargs.update(machine_detection="DetectMessageEnd", async_amd="true",
                          async_amd_status_callback=self.url(self.path("amd") + q),
                          async_amd_status_callback_method="POST")
        try:
            created = await self.client(creds).calls.create_async(**kwargs)
        except (TwilioRestException, CarrierError) as e:
            self.legs.pop(call.id, None)
            leg.completed = True
            raise (self.refusal(e) if isinstance(e, TwilioRestException) else e) from None
        call.set_carrier_sid(created.sid)
        await call.record(carrier_sid=created.sid, call_status=created.status or "queued",
                          extra={"twilio_amd": amd})
        if call.ended.is_set():     # hung up while Twilio was creating it: cancel it there too
            self.spawn(leg.complete_at_twilio(), report=False)
            return
        leg.arm_watchdog(self.outbound_timeout, "outbound_not_connected")
        log.info("outbound call placed", extra={"carrier": self.name, "call_id": call.id, "call_sid": created.sid,
                                                "amd": amd})

    # -- import -------------------------------------------------------------------------------------------------
    async def _check_account(self, creds: TwilioCreds) -> Any:
        if not self.account_sid_pattern.match(creds.account_sid):
            raise CarrierError(self.account_sid_rule, 422, self.sid_field)
        try:
            account = await self.client(creds).api.v2010.accounts(creds.account_sid).fetch_async()
        except TwilioRestException as e:
            raise self.refusal(e, importing=True) from None
        if account.status and account.status != "active":
            raise CarrierError(f"{self.label} account {creds.account_sid} is {account.status}", 422)
        return account

    async def _find_number(self, creds: TwilioCreds, phone: str) -> Any:
        try:
            found = await self.client(creds).incoming_phone_numbers.list_async(phone_number=phone, limit=1)
        except TwilioRestException as e:
            raise self.refusal(e, importing=True) from None
        return found[0] if found else None

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        creds = self.creds_of(fields)
        if creds is None:
            raise CarrierError(f"{self.sid_field} and {self.token_field} are required", 422)
        if fields.get("configure_webhooks") and not fields.get("force_webhooks"):
            problem = unreachable_reason(self.url(self.path("voice")))
            if problem:   # a real number's VoiceUrl would point where Twilio cannot go: inbound calls would fail
                raise CarrierError(
                    f"configure_webhooks: {self.label} could not reach this gateway's public URL ({problem}); start "
                    "the gateway with --public-url https://your-host, or send force_webhooks: true", 400,
                    "configure_webhooks")
        phone = fields["phone_number"]
        await self._check_account(creds)
        incoming = await self._find_number(creds, phone)
        if incoming is None:
            raise CarrierError(f"number {phone} is not on account {creds.account_sid}", 422)
        out = dict(fields)
        out["number_sid"] = incoming.sid
        if fields.get("configure_webhooks"):
            try:
                await self.client(creds).incoming_phone_numbers(incoming.sid).update_async(
                    voice_url=self.url(self.path("voice")), voice_method="POST",
                    status_callback=self.url(self.path("status")), status_callback_method="POST")
            except TwilioRestException as e:
                raise self.refusal(e, importing=True) from None
            out["webhooks_configured_to"] = self.url(self.path("voice"))
        return out

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Credentials, number ownership and where the number's voice webhook points, one verdict each."""
        steps: list[dict[str, Any]] = []
        creds = self.creds_of(fields)
        if creds is None:
            raise CarrierError(f"{self.sid_field} and {self.token_field} are required", 422)
        try:
            account = await self._check_account(creds)
            steps.append({"step": "credentials", "ok": True,
                          "detail": f"account {creds.account_sid} ({account.friendly_name or 'unnamed'}) is active"})
        except CarrierError as e:
            steps.append({"step": "credentials", "ok": False, "detail": e.message})
            return {"ok": False, "steps": steps}
        phone = fields.get("phone_number")
        incoming = await self._find_number(creds, phone) if phone else None
        if incoming is None:
            steps.append({"step": "number", "ok": False, "detail": f"number {phone} is not on account "
                                                                   f"{creds.account_sid}"})
            return {"ok": False, "steps": steps}
        steps.append({"step": "number", "ok": True, "detail": f"{phone} is {incoming.sid}"})
        want = self.url(self.path("voice"))
        here = (incoming.voice_url or "") == want
        detail = f"voice URL is {incoming.voice_url or 'not set'}" + ("" if here else f"; expected {want}")
        steps.append({"step": "voice_webhook", "ok": here, "detail": detail})
        return {"ok": all(s["ok"] for s in steps), "steps": steps}
