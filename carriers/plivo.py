"""Plivo Voice: answer XML with a bidirectional `<Stream>`, Audio Streams websocket, REST hangup / transfer / calls.

Inbound: Plivo asks `/plivo/answer` (signed, V3) for XML; we open the call and answer
`<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">wss://PUBLIC/plivo/media?
call_id=…&token=…</Stream>`. Plivo opens the socket and sends `start` {start:{callId, streamId, accountId, tracks,
mediaFormat:{encoding, sampleRate}}}, `media` {media:{track, timestamp, chunk, payload}} (base64 μ-law 8 kHz),
`dtmf` {dtmf:{digit}}, `playedStream` {name} once the audio before our `checkpoint` has played, and
`clearedAudio` after our `clearAudio`. We send `playAudio` {media:{contentType, sampleRate, payload}} in 20 ms
frames, `checkpoint` {streamId, name} (our marks) and `clearAudio` {streamId} (barge-in). The stream is
carriers/twilio_media.py's with these names.

REST (https://api.plivo.com/v1/Account/{auth_id}/…, Basic auth id : token, through gateway/carrier_rest.py):
hangup `DELETE Call/{uuid}/` (before answer: `DELETE Request/{request_uuid}/`), transfer `POST Call/{uuid}/`
{legs: aleg, aleg_url} (Plivo then fetches our `<Dial>` XML; its `action` reports the outcome and its
`callbackUrl` the target answering), outbound `POST Call/` {from, to, answer_url, hangup_url}.

Every webhook must carry `X-Plivo-Signature-V3` + `X-Plivo-Signature-V3-Nonce`, checked with the number's auth
token by the official `plivo` SDK (`validate_v3_signature`) over the URL rebuilt from the public base. Sources:
docs/plivo.md.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from plivo import plivoxml
from plivo.utils.signature_v3 import validate_v3_signature

from gateway.call import utcnow
from gateway.callmanager import CapacityError
from gateway.carrier import CarrierError, ImportField
from gateway.carrier_rest import CarrierHttp, problem_detail
from gateway.frames import HangupSource
from gateway.numbers import normalize_e164

from .forwarding import UnknownWebhook, forwarded_fields, str_dict
from .mediasocket import StreamClosed, start_object
from .numberfields import number_settings
from .restcall import LegState, RestCallCarrier
from .socket_consult import SocketConsultation
from .twilio_media import RATE, CloseCode, MediaStream

log = logging.getLogger("carriers.plivo")

API = "https://api.plivo.com"
SIGNATURE_HEADER = "X-Plivo-Signature-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
#: the stream's audio formats Plivo offers (contentType of <Stream>): μ-law 8 kHz, or 16-bit little-endian PCM
CONTENT_TYPES = ("audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000")
_AUTH_ID = re.compile(r"^[A-Z0-9]{20}$")
#: <Dial action> DialStatus → our transfer outcome
DIAL_STATUS = {"busy": "busy", "no-answer": "no-answer", "timeout": "no-answer", "failed": "failed",
               "cancel": "canceled", "canceled": "canceled"}
#: hangup_url HangupCause of a call that never got its stream → call-log status
NOT_CONNECTED = {"USER_BUSY": "busy", "NO_ANSWER": "no-answer", "ORIGINATOR_CANCEL": "canceled",
                 "CALL_REJECTED": "failed"}
#: the callback fields the call's handlers read: what a callback forwarded to the owning process carries
FORWARDED_FIELDS = ("CallUUID", "RequestUUID", "HangupCauseName", "HangupCause", "DialAction", "DialStatus")


def plivo_detail(body: Any) -> str:
    """Plivo error bodies: {"api_id", "error": "…"} (a string or an object of field errors)."""
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])[:200]
    return problem_detail(body)


def _same(pcm: bytes) -> bytes:
    """L16 is already what the bus carries (16-bit little-endian PCM)."""
    return pcm


def xml(resp: plivoxml.ResponseElement) -> web.Response:
    return web.Response(text=resp.to_string(False), content_type="application/xml")


def _hangup_xml() -> str:
    resp = plivoxml.ResponseElement()
    resp.add(plivoxml.HangupElement())
    return str(resp.to_string(False))


def _attempt(query: dict[str, str]) -> int:
    """The transfer attempt a callback URL names (`?attempt=`); -1 when it is not a number."""
    try:
        return int(query.get("attempt", "0"))
    except ValueError:
        return -1


class PlivoStream(MediaStream):
    """Plivo's Audio Streams socket: Twilio's protocol with playAudio / checkpoint / clearAudio / playedStream."""

    internal_mark = "gw-plv-"

    async def _on_start(self, m: dict[str, Any]) -> None:
        start = start_object(m, CloseCode)
        sid = start.get("streamId") or m.get("streamId")
        if not isinstance(sid, str) or not sid or len(sid) > 64:
            raise StreamClosed(CloseCode.BAD_MESSAGE, "start without a streamId")
        fmt = start.get("mediaFormat") or {"encoding": "audio/x-mulaw", "sampleRate": RATE}
        encoding = fmt.get("encoding")
        try:
            rate = int(fmt.get("sampleRate") or 0)
        except (TypeError, ValueError):
            rate = 0
        if encoding == "audio/x-l16" and rate in (8000, 16000):
            self.rate, self.decode, self.encode = rate, _same, _same
        elif encoding != "audio/x-mulaw" or rate != RATE:
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, f"unsupported mediaFormat {str(fmt)[:80]}")
        self.stream_sid = sid
        self._prefix = ('{"event":"playAudio","media":{"contentType":"%s","sampleRate":%d,"payload":"'
                        % (encoding, rate))
        self.call, self.leg = await self.carrier.claim_stream(self, start.get("callId"))

    def _on_other(self, event: str, m: dict[str, Any]) -> None:
        if event == "playedStream":
            self._mark_played(str(m.get("name") or ""))
        elif event == "clearedAudio":
            log.debug("plivo cleared its audio buffer", extra={"carrier": "plivo"})
        else:
            super()._on_other(event, m)

    async def _send_mark(self, name: str) -> None:
        await self._send_json({"event": "checkpoint", "streamId": self.stream_sid, "name": name})

    async def _send_clear(self) -> None:
        await self._send_json({"event": "clearAudio", "streamId": self.stream_sid})

    def end_source(self) -> tuple[HangupSource, str]:
        """Plivo closes the socket normally when the caller hangs up (there is no `stop` to say so)."""
        if self.stopped or self.ws.close_code in (None, 1000, 1001):
            return HangupSource.USER, "caller_hangup"
        return HangupSource.CARRIER, "stream_closed"


class PlivoCarrier(RestCallCarrier):
    name = "plivo"
    label = "Plivo"
    providers = ("plivo",)
    stream_class = PlivoStream
    says_text = True      # the transfer XML's <Speak> before <Dial>
    import_fields = (
        ImportField("phone_number", str, required=True, e164=True, help="the Plivo number, E.164"),
        ImportField("auth_id", str, required=True, help="Plivo Auth ID (MA… / SA…)"),
        ImportField("auth_token", str, required=True, secret=True, help="Plivo Auth Token"),
        ImportField("audio_format", str, default=CONTENT_TYPES[0], choices=CONTENT_TYPES,
                    help="the stream's audio: μ-law 8 kHz (the phone network's own), or L16 8 / 16 kHz"),
        ImportField("name", str, help="a label for this number"),
    )

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        #: REST base; GATEWAY_PLIVO_API_BASE points it at a stand-in (tests/fakes/plivo_rest.py)
        self.api_base = (os.environ.get("GATEWAY_PLIVO_API_BASE") or API).rstrip("/")
        self.http = CarrierHttp("Plivo", lambda: self.gateway.settings.carrier_timeout, plivo_detail)
        #: call id → (number, room) of attended transfers being joined in a conference: Plivo fetches the join XML
        #: after the gateway has left the call, and the request is still checked against the number's token
        self.joins: dict[str, tuple[dict[str, Any] | None, str]] = {}

    def setup(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/plivo/answer", self.answer_webhook)
        r.add_post("/plivo/hangup", self.hangup_webhook)
        r.add_post("/plivo/transfer", self.transfer_xml)
        r.add_post("/plivo/dial_action", self.dial_action)
        r.add_post("/plivo/dial_callback", self.dial_callback)
        r.add_post("/plivo/consult_answer", self.consult_answer)
        r.add_post("/plivo/consult_hangup", self.consult_hangup_webhook)
        r.add_post("/plivo/consult_join", self.consult_join_xml)
        r.add_get("/plivo/media", self.media_websocket)

    async def stop(self) -> None:
        await super().stop()
        await self.http.close()

    # -- REST ----------------------------------------------------------------------------------------------------
    async def rest(self, number: dict[str, Any] | None, method: str, path: str, *, importing: bool = False,
                   accept: tuple[int, ...] = (), **kwargs: Any) -> tuple[int, Any]:
        s = number_settings(number)
        auth_id, token = s.get("auth_id"), s.get("auth_token")
        if not auth_id or not token:
            raise CarrierError("the number has no Plivo auth_id / auth_token", 409)
        return await self.http.request(method, f"{self.api_base}/v1/Account/{auth_id}/{path}",
                                       headers={"Authorization": "Basic " + base64.b64encode(
                                           f"{auth_id}:{token}".encode()).decode("ascii")}, importing=importing,
                                       field="auth_token", credentials="auth id / auth token", accept=accept,
                                       **kwargs)

    async def rest_hangup(self, st: LegState) -> None:
        """DELETE the live call, or cancel the outbound request not yet answered; a 404 has ended already."""
        await self.rest(st.number, "DELETE", f"Call/{st.carrier_id}/", accept=(404,))

    async def hangup_once(self, st: LegState) -> None:
        request_uuid = st.call.metadata.get("plivo_request_uuid")
        if not st.carrier_id and request_uuid and not st.hangup_sent:
            st.hangup_sent = True
            try:
                await self.rest(st.number, "DELETE", f"Request/{request_uuid}/", accept=(404,))
            except CarrierError as e:
                st.call.log.warning("plivo could not cancel the outbound call: %s", e.message)
            return
        await super().hangup_once(st)

    async def rest_transfer(self, st: LegState, attempt: int, message: str | None = None) -> None:
        q = urlencode({"call_id": st.call.id, "attempt": attempt, **({"message": message} if message else {})})
        status, _ = await self.rest(st.number, "POST", f"Call/{st.carrier_id}/", accept=(404,),
                                    json={"legs": "aleg", "aleg_url": self.url(f"/plivo/transfer?{q}"),
                                          "aleg_method": "POST"})
        if status == 404:
            raise CarrierError("the Plivo call has already ended", 409)

    # -- signatures ----------------------------------------------------------------------------------------------
    def signature_ok(self, request: web.Request, params: dict[str, str], number: dict[str, Any] | None) -> bool:
        sig, nonce = request.headers.get(SIGNATURE_HEADER), request.headers.get(NONCE_HEADER)
        token = number_settings(number).get("auth_token")
        if not sig or not nonce or not token:
            return False
        url = self.gateway.settings.public_base + request.raw_path
        try:
            return bool(validate_v3_signature(request.method, url, nonce, str(token), sig, dict(params)))
        except Exception:     # the SDK's argument checks: a malformed header or URL is simply not a signature
            return False

    async def _callback(self, request: web.Request, kind: str) -> web.Response:
        """A callback about one of our calls (`?call_id=`), signed by the call's number: carried out here when the
        call is, else by the process of the cluster that holds it (its answer, e.g. the next XML, comes back)."""
        params = {k: str(v) for k, v in (await request.post()).items()}
        call_id = request.query.get("call_id", "")
        if not call_id and kind == "hangup":
            # an inbound call's hangup_url is the Plivo application's, which names no call of ours: its CallUUID
            # is the call's carrier sid (here, or in the call log for a call another process holds)
            call_id = await self.call_id_of_sid(params.get("CallUUID", ""))
        st = self.legs.get(call_id)
        number = st.number if st is not None else await self.number_of_call(call_id)
        if not self.signature_ok(request, params, number):
            raise web.HTTPForbidden(text="invalid or missing X-Plivo-Signature-V3\n")
        query = {k: request.query[k] for k in ("attempt", "message") if k in request.query}
        if st is not None:
            answer = await self._carry_out(kind, st, params, query)
        else:
            fields = forwarded_fields(params, FORWARDED_FIELDS)
            forwarded = await self.forward(call_id, {"kind": kind, "params": fields, "query": query})
            answer = forwarded if forwarded is not None else await self._carry_out(kind, None, params, query)
        if "xml" in answer:
            return web.Response(text=str(answer["xml"]), content_type="application/xml")
        return web.Response(text="")

    async def on_forwarded(self, st: LegState, args: dict[str, Any]) -> dict[str, Any]:
        return await self._carry_out(str(args.get("kind") or ""), st, str_dict(args.get("params")),
                                     str_dict(args.get("query")))

    async def _carry_out(self, kind: str, st: LegState | None, params: dict[str, str],
                         query: dict[str, str]) -> dict[str, Any]:
        """What a callback does to the call (`st`: None when no process holds it): {"xml": …} to answer with XML."""
        if kind == "answer":
            return {"xml": await self._answered(st, params) if st is not None else _hangup_xml()}
        if kind == "hangup":
            if st is not None:
                await self._hung_up(st, params)
            return {}
        if kind == "transfer":      # aleg_url: Plivo leaves our stream and dials the target
            attempt = _attempt(query)
            if st is None or st.state != "transferring" or not 0 <= attempt < len(st.transfer_targets):
                return {"xml": _hangup_xml()}
            return {"xml": self.dial_xml(st, attempt, query.get("message") or None)}
        if kind == "dial_callback":
            if st is not None and params.get("DialAction") == "answer" and _attempt(query) == len(st.attempts):
                await self.transfer_answered(st)
            return {}
        if kind == "dial_action":
            return {"xml": await self._dial_action(st, params, query)}
        if kind == "consult_answer":
            return {"xml": await self._consult_answered(st, params)}
        if kind == "consult_hangup":
            await self._consult_hung_up(st, params)
            return {}
        raise UnknownWebhook("Plivo", kind)

    # -- answer --------------------------------------------------------------------------------------------------
    async def stream_xml_text(self, st: LegState, url: str | None = None) -> str:
        """`<Stream>` to the call's media socket (or to `url`: a consultation's) in the number's audio format."""
        resp = plivoxml.ResponseElement()
        fmt = number_settings(st.number).get("audio_format")
        resp.add(plivoxml.StreamElement(url or await self.stream_url(st), bidirectional=True, keepCallAlive=True,
                                        contentType=fmt if fmt in CONTENT_TYPES else CONTENT_TYPES[0],
                                        streamTimeout=86400))
        return str(resp.to_string(False))

    async def stream_xml(self, st: LegState, url: str | None = None) -> web.Response:
        return web.Response(text=await self.stream_xml_text(st, url), content_type="application/xml")

    async def answer_webhook(self, request: web.Request) -> web.Response:
        if request.query.get("call_id"):       # our outbound call was answered
            return await self._callback(request, "answer")
        params = {k: str(v) for k, v in (await request.post()).items()}
        try:
            to = normalize_e164(params.get("To", ""))
        except ValueError:
            to = None
        number = await self.gateway.store.find_number(to, self.name, with_secrets=True) if to else None
        if to is None or number is None or not self.signature_ok(request, params, number):
            log.warning("rejected unsigned or badly signed answer webhook",
                        extra={"carrier": "plivo", "known_number": number is not None})
            raise web.HTTPForbidden(text="invalid or missing X-Plivo-Signature-V3\n")
        uuid = params.get("CallUUID", "")
        existing = self.gateway.calls.find_by_sid(uuid) if uuid else None
        if existing is not None and existing.id in self.legs:
            return await self.stream_xml(self.legs[existing.id])    # Plivo retried the webhook: same call, same answer
        frm = params.get("From", "")
        try:
            frm = normalize_e164(frm)
        except ValueError:
            frm = frm[:64] or "anonymous"
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number=frm, to_number=to,
                number={k: v for k, v in number.items() if k != "secrets"}, carrier_sid=uuid or None,
                status="ringing")
        except CapacityError:
            resp = plivoxml.ResponseElement()
            resp.add(plivoxml.HangupElement(reason="busy"))
            return xml(resp)
        st = LegState(call, number, carrier_id=uuid or None)
        self.legs[call.id] = st
        self.arm_watchdog(st, self.attach_timeout, "stream_not_connected")
        log.info("inbound call", extra={"carrier": "plivo", "call_id": call.id})
        return await self.stream_xml(st)

    async def hangup_webhook(self, request: web.Request) -> web.Response:
        """hangup_url of our outbound calls (and of an application pointed here): the call is over at Plivo."""
        return await self._callback(request, "hangup")

    async def _hung_up(self, st: LegState, params: dict[str, str]) -> None:
        call = st.call
        st.hangup_sent = True
        cause = params.get("HangupCauseName") or params.get("HangupCause") or ""
        await call.record(extra={"plivo_hangup_cause": cause[:60]})
        if call.bus is None:
            status = NOT_CONNECTED.get(cause.upper().replace(" ", "_"), "failed")
            await call.end(HangupSource.USER if status != "failed" else HangupSource.CARRIER, status, status=status)
        elif st.state != "released":
            await call.end(HangupSource.USER, "caller_hangup")

    async def _answered(self, st: LegState, params: dict[str, str]) -> str:
        """answer_url of our outbound call: its CallUUID, then the stream XML."""
        uuid = params.get("CallUUID", "")
        if uuid and not st.carrier_id:
            st.carrier_id = uuid
            st.call.set_carrier_sid(uuid)
            await st.call.record(carrier_sid=uuid, call_status="in-progress", answered_at=utcnow())
        return await self.stream_xml_text(st)

    # -- transfer ------------------------------------------------------------------------------------------------
    def dial_xml(self, st: LegState, attempt: int, message: str | None = None) -> str:
        call = st.call
        opts = ((call.agent or {}).get("settings") or {}).get("transfer") or {}
        q = urlencode({"call_id": call.id, "attempt": attempt})
        resp = plivoxml.ResponseElement()
        if message:
            resp.add(plivoxml.SpeakElement(message))
        dial = plivoxml.DialElement(action=self.url(f"/plivo/dial_action?{q}"), method="POST",
                                    callback_url=self.url(f"/plivo/dial_callback?{q}"), callback_method="POST",
                                    caller_id=call.to_number if call.direction == "inbound" else call.from_number,
                                    timeout=int(opts.get("timeout") or self.ring_timeout))
        dial.add(plivoxml.NumberElement(st.transfer_targets[attempt]))
        resp.add(dial)
        return str(resp.to_string(False))

    async def transfer_xml(self, request: web.Request) -> web.Response:
        """aleg_url of a transfer: Plivo leaves our stream and dials the target."""
        return await self._callback(request, "transfer")

    async def dial_callback(self, request: web.Request) -> web.Response:
        """<Dial callbackUrl>: DialAction=answer means the target took the call."""
        return await self._callback(request, "dial_callback")

    async def dial_action(self, request: web.Request) -> web.Response:
        """<Dial action>: the attempt is over. A failure dials the next number, or returns the caller to the agent
        on a new stream; after a bridged call (completed) the caller has left."""
        return await self._callback(request, "dial_action")

    async def _dial_action(self, st: LegState | None, params: dict[str, str], query: dict[str, str]) -> str:
        if st is None or _attempt(query) != len(st.attempts):
            return _hangup_xml()
        status = params.get("DialStatus", "failed")
        if status in ("completed", "answer"):
            await self.transfer_answered(st)
            return _hangup_xml()
        nxt = await self.transfer_failed(st, DIAL_STATUS.get(status, "failed"))
        if nxt is not None:
            return self.dial_xml(st, nxt)
        if st.state == "reconnecting":
            return await self.stream_xml_text(st)
        return _hangup_xml()

    # -- attended transfer (carriers/socket_consult.py) ----------------------------------------------------------
    async def consult_dial(self, c: SocketConsultation) -> None:
        """`POST Call/` to the target as for an outbound call of ours; its answer XML streams to the consultation
        socket (https://www.plivo.com/docs/voice/api/call/make-a-call)."""
        st: LegState = c.host
        q = "?" + urlencode({"call_id": st.call.id})
        opts = ((st.call.agent or {}).get("settings") or {}).get("transfer") or {}
        body = {"from": str((st.number or {}).get("phone_number") or "").lstrip("+"), "to": c.number.lstrip("+"),
                "answer_url": self.url("/plivo/consult_answer" + q), "answer_method": "POST",
                "hangup_url": self.url("/plivo/consult_hangup" + q), "hangup_method": "POST",
                "ring_timeout": int(opts.get("timeout") or self.ring_timeout)}
        _status, resp = await self.rest(st.number, "POST", "Call/", json=body)
        request_uuid = str((resp or {}).get("request_uuid") or "")
        if not request_uuid:
            raise CarrierError("Plivo accepted the consultation call but returned no request_uuid", 502)
        c.target_id = c.target_state = request_uuid      # the CallUUID replaces it once the target answers

    async def consult_hangup(self, c: SocketConsultation) -> None:
        """DELETE the target's call, or its request while it still rings."""
        path = f"Request/{c.target_state}/" if c.target_id == c.target_state else f"Call/{c.target_id}/"
        try:
            await self.rest(c.host.number, "DELETE", path, accept=(404,))
        except CarrierError as e:
            c.call.log.warning("plivo could not end the consultation call: %s", e.message)

    async def consult_join(self, c: SocketConsultation) -> str | None:
        """Both calls are transferred (https://www.plivo.com/docs/voice/api/call/transfer-a-call) to one conference
        named after the call (https://www.plivo.com/docs/voice/xml/conference), which ends when either leaves:
        Plivo has no request that joins two calls directly. The target goes first; its refusal leaves both
        calls as they were (the gateway bridges them instead)."""
        st: LegState = c.host
        self.joins[st.call.id] = (st.number, c.room)
        asyncio.get_running_loop().call_later(600, self.joins.pop, st.call.id, None)
        url = self.url("/plivo/consult_join?" + urlencode({"call_id": st.call.id}))
        for uuid in (c.target_id, st.carrier_id):
            status, _ = await self.rest(st.number, "POST", f"Call/{uuid}/", accept=(404,),
                                        json={"legs": "aleg", "aleg_url": url, "aleg_method": "POST"})
            if status == 404:
                raise CarrierError("the Plivo call has already ended", 409)
        return "conference"

    async def consult_answer(self, request: web.Request) -> web.Response:
        """answer_url of the consultation call: stream it to the consultation socket (or hang up: it is over)."""
        return await self._callback(request, "consult_answer")

    async def consult_hangup_webhook(self, request: web.Request) -> web.Response:
        """hangup_url of the consultation call: busy / no answer, or the target hung up."""
        return await self._callback(request, "consult_hangup")

    async def _consult_answered(self, st: LegState | None, params: dict[str, str]) -> str:
        c = st.consultation if st is not None else None
        if st is None or c is None or c.over:
            return _hangup_xml()
        if params.get("CallUUID"):
            c.target_id = params["CallUUID"]
        return await self.stream_xml_text(st, self.consult_stream_url(c))

    async def _consult_hung_up(self, st: LegState | None, params: dict[str, str]) -> None:
        c = st.consultation if st is not None else None
        if c is not None and (params.get("CallUUID") == c.target_id or params.get("RequestUUID") == c.target_state):
            cause = params.get("HangupCauseName") or params.get("HangupCause") or ""
            await c.dial_failed(NOT_CONNECTED.get(cause.upper().replace(" ", "_"), "failed"))

    async def consult_join_xml(self, request: web.Request) -> web.Response:
        """aleg_url of both calls of a completed attended transfer: the conference (checked against the number)."""
        params = {k: str(v) for k, v in (await request.post()).items()}
        number, room = self.joins.get(request.query.get("call_id", ""), (None, ""))
        if not room or not self.signature_ok(request, params, number):
            raise web.HTTPForbidden(text="invalid or missing X-Plivo-Signature-V3\n")
        resp = plivoxml.ResponseElement()
        resp.add(plivoxml.ConferenceElement(room, start_conference_on_enter=True, end_conference_on_exit=True))
        return xml(resp)

    # -- outbound ------------------------------------------------------------------------------------------------
    async def dispatch(self, call: Any, number: dict[str, Any], to_number: str) -> None:
        if not number_settings(number).get("auth_token") and number.get("id") is not None:
            number = await self.gateway.store.get_number(number["id"], with_secrets=True) or number
        st = LegState(call, number)
        self.legs[call.id] = st
        q = f"?call_id={call.id}"
        body = {"from": number["phone_number"].lstrip("+"), "to": to_number.lstrip("+"),
                "answer_url": self.url("/plivo/answer" + q), "answer_method": "POST",
                "hangup_url": self.url("/plivo/hangup" + q), "hangup_method": "POST", "ring_timeout": 45}
        try:
            _status, resp = await self.rest(number, "POST", "Call/", json=body)
        except CarrierError:
            self.legs.pop(call.id, None)
            raise
        request_uuid = str((resp or {}).get("request_uuid") or "")
        if not request_uuid:
            self.legs.pop(call.id, None)
            raise CarrierError("Plivo accepted the call but returned no request_uuid", 502)
        call.metadata["plivo_request_uuid"] = request_uuid
        await call.record(call_status="initiated", extra={"plivo_request_uuid": request_uuid[:64]})
        if call.ended.is_set():
            self.background(self.hangup_once(st))
            return
        self.arm_watchdog(st, self.attach_timeout + 60, "outbound_not_connected")
        call.log.info("plivo outbound call placed")

    # -- import --------------------------------------------------------------------------------------------------
    async def _check(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The account answers with these credentials, and the number is on it (GET Account/, Number/{n}/)."""
        if not _AUTH_ID.match(str(fields.get("auth_id") or "")):
            raise CarrierError("auth_id must be 20 upper-case letters and digits (MA… or SA…)", 422, "auth_id")
        await self.rest(fields, "GET", "", importing=True)
        digits = fields["phone_number"].lstrip("+")
        status, body = await self.rest(fields, "GET", f"Number/{digits}/", importing=True, accept=(404,))
        if status == 404:
            raise CarrierError(f"number {fields['phone_number']} is not on Plivo account {fields['auth_id']}", 422,
                               "phone_number")
        return body or {}

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        found = await self._check(fields)
        out = dict(fields)
        if found.get("application"):
            out["plivo_application"] = str(found["application"])[:200]
        return out

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            await self._check(number_settings(fields))
            steps = [{"step": "credentials_and_number", "ok": True, "detail": "account and number found"}]
        except CarrierError as e:
            steps = [{"step": "credentials_and_number", "ok": False, "detail": e.message}]
        return {"ok": steps[0]["ok"], "steps": steps,
                "webhooks": {"answer_url": self.url("/plivo/answer"), "hangup_url": self.url("/plivo/hangup")}}
