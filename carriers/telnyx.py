"""Telnyx Call Control v2: signed JSON webhooks, REST commands, and the media-streaming websocket.

Inbound: Telnyx POSTs `call.initiated` to /telnyx/webhook; we open the call and send `answer` with
`stream_url=wss://PUBLIC/telnyx/media?call_id=…&token=…`, `stream_bidirectional_mode: rtp` and the number's
`audio_format` both ways: PCMU (default) or PCMA at 8 kHz, or L16 (RFC 3551 linear PCM, network byte order) at 8 or
16 kHz (`stream_codec`, `stream_bidirectional_codec`, `stream_bidirectional_sampling_rate`). Telnyx falls back to
the call's own codec when it cannot transcode, so the stream takes whichever of these `start` announces.
Telnyx opens the socket: `connected`, `start` {stream_id, start:{call_control_id, media_format:{encoding,
sample_rate, channels}}}, `media` {media:{track, chunk, timestamp, payload}} (base64 RTP payload, no header),
`dtmf` {dtmf:{digit}}, `mark` {mark:{name}} (echoed once the audio before it has played), `error`, `stop`. We send
`media` {media:{payload}}, `mark` and `clear`. The stream is carriers/twilio_media.py's with these names.

Hangup, transfer and re-streaming after a failed transfer are Call Control commands
(`POST /v2/calls/{call_control_id}/actions/{hangup|transfer|streaming_start}`); outbound is `POST /v2/calls` with the
stream and, when the agent asks for `settings.amd.provider: "telnyx"`, Telnyx's `answering_machine_detection`
(results in `call.machine.detection.ended` / `call.machine.greeting.ended`). Our call id travels in
`client_state` (base64), transfer legs carry `xfer:<call id>:<attempt>` in `target_leg_client_state`.

Every webhook must carry `telnyx-signature-ed25519` over `"{telnyx-timestamp}|{raw body}"`, verified with the
account's Ed25519 public key (`cryptography`) and a timestamp no older than `signature_tolerance`. REST goes
through gateway/carrier_rest.py (bounded, mapped). Sources: docs/telnyx.md.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import safejson
from gateway.amd import report_amd
from gateway.amd.settings import amd_settings
from gateway.call import utcnow
from gateway.callmanager import CapacityError
from gateway.carrier import CarrierError, ImportField
from gateway.carrier_rest import CarrierHttp, problem_detail
from gateway.frames import AmdResult, AnsweredBy, HangupSource, TransferResult
from gateway.numbers import normalize_e164
from gateway.store.derived import DerivedCache
from voicecodecs import alaw_to_pcm16, l16_to_pcm16, pcm16_to_alaw, pcm16_to_l16, pcm16_to_ulaw, ulaw_to_pcm16

from .forwarding import forwarded_fields
from .mediasocket import StreamClosed, start_object
from .numberfields import number_settings
from .restcall import LegState, RestCallCarrier
from .socket_consult import SocketConsultation
from .twilio_media import CloseCode, MediaStream

log = logging.getLogger("carriers.telnyx")

API = "https://api.telnyx.com"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
#: Call Control error code for a command on a call that has ended (https://developers.telnyx.com/api/errors/90018)
CALL_ENDED = "90018"
#: hangup_cause of a transfer leg → our transfer outcome
TRANSFER_CAUSE = {"user_busy": "busy", "timeout": "no-answer", "no_answer": "no-answer",
                  "call_rejected": "failed", "originator_cancel": "canceled"}
#: Telnyx AMD results → AnsweredBy
AMD_RESULT = {"human": AnsweredBy.HUMAN, "human_residence": AnsweredBy.HUMAN, "human_business": AnsweredBy.HUMAN,
              "machine": AnsweredBy.MACHINE_START, "fax_detected": AnsweredBy.FAX, "silence": AnsweredBy.UNKNOWN,
              "not_sure": AnsweredBy.UNKNOWN, "beep_detected": AnsweredBy.MACHINE_END_BEEP,
              "ended": AnsweredBy.MACHINE_END_OTHER}
#: the payload fields a call's events are read for: what a webhook forwarded to the owning process carries
FORWARDED_FIELDS = ("call_control_id", "hangup_cause", "hangup_source", "result", "failure_reason")


def telnyx_detail(body: Any) -> str:
    """Telnyx error bodies: {"errors": [{"code", "title", "detail"}]}."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        e = body["errors"][0] if isinstance(body["errors"][0], dict) else {}
        text = "; ".join(str(e[k]) for k in ("title", "detail") if e.get(k))
        return f"{text} ({e['code']})" if e.get("code") else text
    return problem_detail(body)


def encode_state(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def decode_state(value: Any) -> str:
    try:
        return base64.b64decode(str(value or ""), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def load_public_key(text: Any) -> Ed25519PublicKey:
    """The account's public key as shown in the portal (base64 of the 32 raw bytes)."""
    try:
        raw = base64.b64decode(str(text or "").strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise CarrierError("public_key: not a base64 Ed25519 public key (Mission Control → Keys & Credentials → "
                           "Public Key)", 422, "public_key") from None


#: the stream formats we take (`audio_format` of a number): Telnyx codec name, sample rate, decode, encode. Telnyx
#: also lists G722, OPUS and AMR-WB (its SDKs' StreamCodec enum), which need codecs the gateway does not carry.
AUDIO_FORMATS: dict[str, tuple[str, int, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "PCMU/8000": ("PCMU", 8000, ulaw_to_pcm16, pcm16_to_ulaw),
    "PCMA/8000": ("PCMA", 8000, alaw_to_pcm16, pcm16_to_alaw),
    "L16/8000": ("L16", 8000, l16_to_pcm16, pcm16_to_l16),
    "L16/16000": ("L16", 16000, l16_to_pcm16, pcm16_to_l16),
}
DEFAULT_FORMAT = "PCMU/8000"


def audio_format(number: dict[str, Any] | None) -> str:
    fmt = number_settings(number).get("audio_format")
    return fmt if fmt in AUDIO_FORMATS else DEFAULT_FORMAT


class TelnyxStream(MediaStream):
    """Telnyx's media socket: Twilio's protocol with `stream_id`, `call_control_id` and no stream id on output."""

    internal_mark = "gw-tnx-"

    async def _on_start(self, m: dict[str, Any]) -> None:
        start = start_object(m, CloseCode)
        sid = m.get("stream_id") or start.get("stream_id")
        self.stream_sid = str(sid)[:64] if sid else None
        fmt = start.get("media_format") or {}
        if fmt:
            try:
                key = f"{str(fmt.get('encoding', '')).upper()}/{int(fmt.get('sample_rate') or 0)}"
                mono = int(fmt.get("channels") or 1) == 1
            except (TypeError, ValueError):
                key, mono = "", False
            if key not in AUDIO_FORMATS or not mono:
                raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, f"unsupported media_format {str(fmt)[:80]}")
            _, self.rate, self.decode, self.encode = AUDIO_FORMATS[key]
        self._prefix = '{"event":"media","media":{"payload":"'
        self.call, self.leg = await self.carrier.claim_stream(self, start.get("call_control_id"))

    def _on_other(self, event: str, m: dict[str, Any]) -> None:
        if event == "error":
            payload: dict[str, Any] = m["payload"] if isinstance(m.get("payload"), dict) else {}
            log.warning("telnyx stream error: %s", str(payload.get("title") or payload)[:200],
                        extra={"carrier": "telnyx", "call_id": self.call.id if self.call else None})
            return
        super()._on_other(event, m)

    async def _send_mark(self, name: str) -> None:
        await self._send_json({"event": "mark", "mark": {"name": name}})

    async def _send_clear(self) -> None:
        await self._send_json({"event": "clear"})


class TelnyxCarrier(RestCallCarrier):
    name = "telnyx"
    label = "Telnyx"
    providers = ("telnyx",)
    stream_class = TelnyxStream
    import_fields = (
        ImportField("phone_number", str, required=True, e164=True, help="the Telnyx number, E.164"),
        ImportField("api_key", str, required=True, secret=True, help="Telnyx API key (V2)"),
        ImportField("public_key", str, required=True,
                    help="the account's Ed25519 public key (base64): webhooks are verified with it"),
        ImportField("connection_id", str, help="Call Control application id for outbound calls (default: the "
                                               "number's own connection)"),
        ImportField("audio_format", str, default=DEFAULT_FORMAT, choices=tuple(AUDIO_FORMATS),
                    help="the stream's audio both ways: G.711 μ-law or A-law 8 kHz, or L16 8 / 16 kHz"),
        ImportField("name", str, help="a label for this number"),
    )

    #: seconds a webhook's telnyx-timestamp may be off (replays older than this are refused)
    signature_tolerance = 300

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        #: Call Control API base; GATEWAY_TELNYX_API_BASE points it at a stand-in (tests/fakes/telnyx_rest.py)
        self.api_base = (os.environ.get("GATEWAY_TELNYX_API_BASE") or API).rstrip("/")
        self.http = CarrierHttp("Telnyx", lambda: self.gateway.settings.carrier_timeout, telnyx_detail)
        #: every stored public key; dropped with the store's cached numbers, also when another process of the
        #: cluster wrote one (gateway/store/derived.py)
        self._keys: DerivedCache[list[str]] = DerivedCache(self._load_keys, 60.0)

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/telnyx/webhook", self.webhook)
        app.router.add_get("/telnyx/media", self.media_websocket)

    async def stop(self) -> None:
        await super().stop()
        await self.http.close()

    # -- REST ----------------------------------------------------------------------------------------------------
    async def rest(self, number: dict[str, Any] | None, method: str, path: str, *, importing: bool = False,
                   accept: tuple[int, ...] = (), **kwargs: Any) -> tuple[int, Any]:
        key = number_settings(number).get("api_key")
        if not key:
            raise CarrierError("the number has no Telnyx api_key", 409)
        return await self.http.request(method, self.api_base + path, headers={"Authorization": f"Bearer {key}"},
                                       importing=importing, field="api_key", credentials="API key",
                                       accept=accept, **kwargs)

    async def command(self, st: LegState, action: str, body: dict[str, Any], *, call_gone_ok: bool = False,
                      ccid: str | None = None) -> None:
        """POST /v2/calls/{call_control_id}/actions/{action} (the call's, or `ccid`: a consultation call's); a call
        Telnyx says has ended is a 409 (or fine)."""
        body = {"command_id": str(uuid.uuid4()), **body}
        status, resp = await self.rest(st.number, "POST", f"/v2/calls/{ccid or st.carrier_id}/actions/{action}",
                                       accept=(404, 422), json=body)
        if status in (404, 422):
            ended = status == 404 or CALL_ENDED in telnyx_detail(resp)
            if ended and call_gone_ok:
                return
            if ended:
                raise CarrierError("the Telnyx call has already ended", 409)
            raise CarrierError(f"Telnyx refused {action} (HTTP 422): {telnyx_detail(resp)}", 422)

    async def stream_params(self, st: LegState) -> dict[str, Any]:
        return self.stream_fields(st, await self.stream_url(st), st.call.id)

    @staticmethod
    def stream_fields(st: LegState, url: str, state: str) -> dict[str, Any]:
        """Bidirectional streaming to `url` in the number's audio format; `state` comes back in the webhooks."""
        codec, rate, _, _ = AUDIO_FORMATS[audio_format(st.number)]
        return {"stream_url": url, "stream_track": "inbound_track",
                "stream_bidirectional_mode": "rtp", "stream_bidirectional_codec": codec, "stream_codec": codec,
                "stream_bidirectional_sampling_rate": rate, "client_state": encode_state(state)}

    async def rest_hangup(self, st: LegState) -> None:
        await self.command(st, "hangup", {"client_state": encode_state(st.call.id)}, call_gone_ok=True)

    async def rest_transfer(self, st: LegState, attempt: int, message: str | None = None) -> None:
        call = st.call
        opts = ((call.agent or {}).get("settings") or {}).get("transfer") or {}
        caller_id = call.to_number if call.direction == "inbound" else call.from_number
        await self.command(st, "transfer", {
            "to": st.transfer_targets[attempt], "from": caller_id,
            "timeout_secs": int(opts.get("timeout") or self.ring_timeout),
            "target_leg_client_state": encode_state(f"xfer:{call.id}:{attempt}"),
            "client_state": encode_state(call.id)})

    # -- signatures ----------------------------------------------------------------------------------------------
    def signature_ok(self, request: web.Request, raw: bytes, keys: list[str]) -> bool:
        sig, ts = request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
        if not sig or not ts or not keys:
            return False
        try:
            if abs(time.time() - int(ts)) > self.signature_tolerance:
                return False
            signature = base64.b64decode(sig, validate=True)
        except (ValueError, binascii.Error):
            return False
        message = ts.encode() + b"|" + raw
        for key in keys:
            try:
                load_public_key(key).verify(signature, message)
                return True
            except (InvalidSignature, CarrierError):
                continue
        return False

    async def public_keys(self) -> list[str]:
        """Every stored Telnyx public key (a webhook about a number we do not know is checked against them)."""
        return await self._keys.get(self.gateway.store)

    async def _load_keys(self) -> list[str]:
        keys: set[str] = set()
        page = 1
        while True:
            rows, total = await self.gateway.store.list_numbers(page, 500, provider=self.name)
            keys.update(str(k) for r in rows if (k := number_settings(r).get("public_key")))
            if page * 500 >= total or not rows:
                break
            page += 1
        return sorted(keys)

    # -- webhooks ------------------------------------------------------------------------------------------------
    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = safejson.loads(raw) if raw.strip() else None
        except safejson.BadJson:
            body = None
        data = body.get("data") if isinstance(body, dict) else None
        payload = data.get("payload") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(payload, dict) or not isinstance(data.get("event_type"), str):
            return web.json_response({"error": "body: not a Call Control webhook (data.event_type, data.payload)"},
                                     status=400)
        event = data["event_type"]
        state = decode_state(payload.get("client_state"))
        st, number = None, None
        if state.startswith(("xfer:", "consult:")):
            st = self.legs.get(state.split(":")[1])
        elif state:
            st = self.legs.get(state)
        if st is None and payload.get("call_control_id"):
            call = self.gateway.calls.find_by_sid(str(payload["call_control_id"]))
            st = self.legs.get(call.id) if call is not None else None
        if st is not None:
            number = st.number
        elif event == "call.initiated" and payload.get("direction") == "incoming":
            number = await self._number_for(payload.get("to"))
        keys = [number_settings(number)["public_key"]] if number_settings(number).get("public_key") \
            else await self.public_keys()
        if not self.signature_ok(request, raw, keys):
            log.warning("rejected unsigned or badly signed webhook", extra={"carrier": "telnyx", "event": event[:40]})
            return web.json_response({"error": "invalid or missing telnyx-signature-ed25519"}, status=403)
        if event == "call.initiated" and payload.get("direction") == "incoming" and st is None:
            return await self._incoming(payload, number)
        if st is None:
            # a call another process of the cluster holds (its webhook reached us): that process carries it out
            call_id = state.split(":")[1] if state.startswith(("xfer:", "consult:")) else state
            if not call_id:
                call_id = await self.call_id_of_sid(str(payload.get("call_control_id") or ""))
            fields = forwarded_fields(payload, FORWARDED_FIELDS)
            if await self.forward(call_id, {"event": event, "state": state, "payload": fields}) is not None:
                return web.json_response({"ok": True})
            return web.json_response({"ignored": event})
        await self._on_event(st, event, payload, state)
        return web.json_response({"ok": True})

    async def _on_event(self, st: LegState, event: str, payload: dict[str, Any], state: str) -> None:
        if state.startswith("xfer:"):
            await self._transfer_leg_event(st, event, payload, state)
        elif state.startswith("consult:"):
            await self._consult_event(st, event, payload)
        else:
            await self._call_event(st, event, payload)

    async def on_forwarded(self, st: LegState, args: dict[str, Any]) -> dict[str, Any]:
        payload = args.get("payload")
        await self._on_event(st, str(args.get("event") or ""), payload if isinstance(payload, dict) else {},
                             str(args.get("state") or ""))
        return {"ok": True}

    async def _number_for(self, to: Any) -> dict[str, Any] | None:
        try:
            e164 = normalize_e164(str(to or ""))
        except ValueError:
            return None
        return await self.gateway.store.find_number(e164, self.name, with_secrets=True)

    async def _incoming(self, payload: dict[str, Any], number: dict[str, Any] | None) -> web.Response:
        ccid = str(payload.get("call_control_id") or "")
        if number is None:
            return web.json_response({"ignored": "number not imported here"})
        frm = str(payload.get("from") or "")
        try:
            frm = normalize_e164(frm)
        except ValueError:
            frm = frm[:64] or "anonymous"
        public = {k: v for k, v in number.items() if k != "secrets"}
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number=frm, to_number=number["phone_number"],
                number=public, carrier_sid=ccid or None, status="ringing",
                metadata={"telnyx_call_session_id": str(payload.get("call_session_id") or "")[:64]})
        except CapacityError:
            log.warning("gateway at capacity: rejecting call", extra={"carrier": "telnyx"})
            self.background(self._reject(number, ccid))
            return web.json_response({"rejected": "busy"})
        st = LegState(call, number, carrier_id=ccid)
        self.legs[call.id] = st
        self.arm_watchdog(st, self.attach_timeout, "stream_not_connected")
        self.background(self._answer(st))
        log.info("inbound call", extra={"carrier": "telnyx", "call_id": call.id})
        return web.json_response({"ok": True})

    async def _reject(self, number: dict[str, Any], ccid: str) -> None:
        await self.rest(number, "POST", f"/v2/calls/{ccid}/actions/reject", accept=(404, 422),
                        json={"cause": "USER_BUSY", "command_id": str(uuid.uuid4())})

    async def _answer(self, st: LegState) -> None:
        """`answer` with the stream parameters: Telnyx opens the socket as soon as the call is up."""
        try:
            await self.command(st, "answer", await self.stream_params(st))
        except CarrierError as e:
            st.call.log.warning("telnyx answer failed: %s", e.message)
            await st.call.end(HangupSource.CARRIER, "answer_failed", status="failed")

    async def _call_event(self, st: LegState, event: str, payload: dict[str, Any]) -> None:
        call = st.call
        if event == "call.answered":
            if not call.answered:
                await call.record(call_status="in-progress", answered_at=utcnow())
        elif event == "call.hangup":
            cause = str(payload.get("hangup_cause") or "")
            st.hangup_sent = True      # Telnyx says it is over: nothing to hang up
            await call.record(extra={"telnyx_hangup_cause": cause[:40],
                                     "telnyx_hangup_source": str(payload.get("hangup_source") or "")[:20]})
            if st.state == "transferring" and call.transfer_result is None:   # the caller left mid-transfer
                await call.transfer_finished(TransferResult(self.current_target(st), "canceled"))
            if call.bus is None:
                status = {"user_busy": "busy", "timeout": "no-answer", "call_rejected": "failed"}.get(cause)
                await call.end(HangupSource.USER if status else HangupSource.CARRIER, cause or "hangup",
                               status=status or "failed")
            else:
                await call.end(HangupSource.USER, "caller_hangup")
        elif event in ("call.machine.detection.ended", "call.machine.premium.detection.ended",
                       "call.machine.greeting.ended", "call.machine.premium.greeting.ended"):
            answered_by = AMD_RESULT.get(str(payload.get("result") or ""), AnsweredBy.UNKNOWN)
            since = call.answered or call.created
            await report_amd(call, AmdResult(answered_by, int((time.monotonic() - since) * 1000), source="telnyx"))
        elif event == "streaming.failed" and st.stream is None:
            call.log.warning("telnyx could not open the media stream: %s",
                             str(payload.get("failure_reason") or "")[:120])
            await self.hangup_once(st)
            await call.end(HangupSource.CARRIER, "stream_failed", status="failed")

    async def _transfer_leg_event(self, st: LegState, event: str, payload: dict[str, Any], state: str) -> None:
        try:
            attempt = int(state.split(":")[2])
        except (IndexError, ValueError):
            return
        if attempt != len(st.attempts):
            return     # a late event of an earlier attempt
        if event in ("call.answered", "call.bridged"):
            await self.transfer_answered(st)
        elif event == "call.hangup":
            cause = str(payload.get("hangup_cause") or "")
            await self._next_target(st, TRANSFER_CAUSE.get(cause, "failed"))

    async def _next_target(self, st: LegState, status: str) -> None:
        """A target failed: transfer to the next one, else back to the agent (a new stream if the old one ended)."""
        nxt = await self.transfer_failed(st, status)
        while nxt is not None:
            try:
                await self.rest_transfer(st, nxt)
                return
            except CarrierError as e:
                st.call.log.warning("telnyx transfer to the next number failed: %s", e.message)
                nxt = await self.transfer_failed(st, "failed")
        if st.state == "reconnecting":
            try:
                await self.command(st, "streaming_start", await self.stream_params(st))
            except CarrierError as e:
                st.call.log.warning("telnyx could not reconnect the media stream: %s", e.message)
                await self.hangup_once(st)
                await st.call.end(HangupSource.CARRIER, "stream_not_reconnected")

    # -- attended transfer (carriers/socket_consult.py) ----------------------------------------------------------
    async def consult_dial(self, c: SocketConsultation) -> None:
        """`POST /v2/calls` to the target, as for an outbound call of ours, streaming to the consultation socket;
        its webhooks carry `consult:<call id>` (https://developers.telnyx.com/api/call-control/dial-call)."""
        st: LegState = c.host
        connection = number_settings(st.number).get("connection_id")
        if not connection:
            raise CarrierError("the number has no Telnyx connection_id to place the consultation call from", 409)
        opts = ((st.call.agent or {}).get("settings") or {}).get("transfer") or {}
        body = {"connection_id": connection, "to": c.number, "from": (st.number or {}).get("phone_number"),
                "webhook_url": self.url("/telnyx/webhook"), "webhook_url_method": "POST",
                "timeout_secs": int(opts.get("timeout") or self.ring_timeout), "command_id": str(uuid.uuid4()),
                **self.stream_fields(st, self.consult_stream_url(c), f"consult:{st.call.id}")}
        _status, resp = await self.rest(st.number, "POST", "/v2/calls", json=body)
        ccid = str(((resp or {}).get("data") or {}).get("call_control_id") or "")
        if not ccid:
            raise CarrierError("Telnyx accepted the consultation call but returned no call_control_id", 502)
        c.target_id = ccid

    async def consult_hangup(self, c: SocketConsultation) -> None:
        """`hangup` of the target's call (it cancels one still ringing)."""
        if not c.target_id:
            return
        try:
            await self.command(c.host, "hangup", {}, call_gone_ok=True, ccid=c.target_id)
        except CarrierError as e:
            c.call.log.warning("telnyx could not hang up the consultation call: %s", e.message)

    async def consult_join(self, c: SocketConsultation) -> str | None:
        """Call Control's `bridge` of the caller's call with the target's
        (https://developers.telnyx.com/api-reference/call-commands/bridge-calls); then both streams stop
        (`streaming_stop`) and the gateway leaves the call."""
        st: LegState = c.host
        await self.command(st, "bridge", {"call_control_id": c.target_id, "client_state": encode_state(st.call.id)})
        for ccid in (st.carrier_id, c.target_id):
            self.background(self.command(st, "streaming_stop", {}, call_gone_ok=True, ccid=ccid))
        return "telnyx_bridge"

    async def _consult_event(self, st: LegState, event: str, payload: dict[str, Any]) -> None:
        """Webhooks of the consultation call: its hangup before the stream came is a failed dial."""
        c = st.consultation
        if c is None or str(payload.get("call_control_id") or "") != c.target_id:
            return
        if event == "call.hangup":
            await c.dial_failed(TRANSFER_CAUSE.get(str(payload.get("hangup_cause") or ""), "failed"))
        elif event == "streaming.failed" and c.target is None:
            await self.consult_hangup(c)
            await c.dial_failed("stream_failed")

    # -- outbound ------------------------------------------------------------------------------------------------
    def wants_amd(self, agent: dict[str, Any] | None) -> bool:
        try:
            s = amd_settings(agent)
        except ValueError:
            return False
        return s.enabled and s.provider == self.name

    async def dispatch(self, call: Any, number: dict[str, Any], to_number: str) -> None:
        if not number_settings(number).get("api_key") and number.get("id") is not None:
            number = await self.gateway.store.get_number(number["id"], with_secrets=True) or number
        connection = number_settings(number).get("connection_id")
        if not connection:
            raise CarrierError(f"number {number.get('phone_number')} has no Telnyx connection_id (re-import it)", 409)
        st = LegState(call, number)
        st.amd_requested = self.wants_amd(call.agent)
        self.legs[call.id] = st
        body = {"connection_id": connection, "to": to_number, "from": number["phone_number"],
                "webhook_url": self.url("/telnyx/webhook"), "webhook_url_method": "POST",
                "command_id": str(uuid.uuid4()), **await self.stream_params(st)}
        if st.amd_requested:
            body["answering_machine_detection"] = "detect_beep"
        try:
            _status, resp = await self.rest(number, "POST", "/v2/calls", json=body)
        except CarrierError:
            self.legs.pop(call.id, None)
            raise
        ccid = str(((resp or {}).get("data") or {}).get("call_control_id") or "")
        if not ccid:
            self.legs.pop(call.id, None)
            raise CarrierError("Telnyx accepted the call but returned no call_control_id", 502)
        st.carrier_id = ccid
        call.set_carrier_sid(ccid)
        await call.record(carrier_sid=ccid, call_status="initiated", extra={"telnyx_amd": st.amd_requested})
        if call.ended.is_set():     # hung up while Telnyx was creating it: cancel it there too
            self.background(self.hangup_once(st))
            return
        self.arm_watchdog(st, self.attach_timeout + 60, "outbound_not_connected")
        call.log.info("telnyx outbound call placed", extra={"amd": st.amd_requested})

    # -- import --------------------------------------------------------------------------------------------------
    async def _find_number(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        _status, body = await self.rest(fields, "GET", "/v2/phone_numbers", importing=True,
                                        params={"filter[phone_number]": fields["phone_number"]})
        rows = body.get("data") if isinstance(body, dict) else None
        return next((r for r in rows or [] if isinstance(r, dict)
                     and r.get("phone_number") == fields["phone_number"]), None)

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        load_public_key(fields.get("public_key"))
        found = await self._find_number(fields)
        if found is None:
            raise CarrierError(f"number {fields['phone_number']} is not on this Telnyx account", 422, "phone_number")
        out = dict(fields)
        if not out.get("connection_id") and found.get("connection_id"):
            out["connection_id"] = str(found["connection_id"])
        return out

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        try:
            load_public_key(number_settings(fields).get("public_key"))
            steps.append({"step": "public_key", "ok": True, "detail": "an Ed25519 public key"})
        except CarrierError as e:
            steps.append({"step": "public_key", "ok": False, "detail": e.message})
        try:
            found = await self._find_number(number_settings(fields))
            steps.append({"step": "number", "ok": found is not None,
                          "detail": f"connection {found.get('connection_id')}" if found else "not on this account"})
        except CarrierError as e:
            steps.append({"step": "number", "ok": False, "detail": e.message})
        return {"ok": all(s["ok"] for s in steps), "steps": steps,
                "webhooks": {"webhook_url": self.url("/telnyx/webhook")}}
