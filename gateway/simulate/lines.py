"""How a synthetic caller reaches the gateway: the carrier's own protocol, on loopback only.

* `SipLine`: our SIP user agent (gateway/sip) sends the INVITE, our RTP engine (gateway/rtp) carries G.711 on its
  shared 20 ms clock — the caller's port plugs into an RtpSession the way a call or a transfer bridge does.
* `TwilioLine`: what Twilio does — the signed `POST /twilio/voice` (X-Twilio-Signature with the account's auth
  token, the twilio SDK's RequestValidator), then a Media Streams websocket (gateway/simulate/twilio_stream.py)
  sending μ-law every 20 ms and playing what it receives in real time (marks echoed, `clear` honoured).
* `ExotelLine`: what the Voicebot applet does — it opens `/exotel/media` itself (no webhook before the stream),
  `start` names the call and the exophone, caller audio goes as 16-bit PCM 8 kHz in 100 ms `media` chunks
  (gateway/simulate/exotel_stream.py).
* `VonageLine`: what the Voice API does — `GET /vonage/answer` (to, from, uuid, conversation_uuid), then the
  websocket the returned NCCO names, with its content-type and headers, binary L16 20 ms frames
  (gateway/simulate/vonage_stream.py); the caller hanging up closes the socket.

Agent audio is handed to the caller in 20 ms frames dated by their arrival; the caller's Timeline plays them out
after what is queued, as the carrier would (a 100 ms Exotel chunk plays over 100 ms).

Each `call()` returns a `LineResult`: the gateway's call id / carrier sid (to fetch the gateway's own figures) and
who hung up.
"""
from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.frames import AudioFrame, BusItem, SendDtmf
from gateway.rtp import RtpEngine
from gateway.rtp.session import CODECS
from gateway.sip.message import NameAddr
from gateway.sip.sdp import make_offer, parse_answer
from gateway.sip.transaction import TransactionLayer
from gateway.sip.transport import SipTransport
from gateway.sip.ua import OutgoingInvite, UserAgent, reason_header
from gateway.vad import FRAME_S
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16

from .caller import ScriptedCaller
from .exotel_stream import ExotelStreamClient
from .twilio_stream import TwilioStreamClient, post_signed
from .vonage_stream import VonageStreamClient


@dataclass
class LineResult:
    carrier_sid: str = ""
    gateway_call_id: str | None = None
    hangup: str = ""            # "caller" (the script ended) or what the far end did
    error: str | None = None    # the call could not be placed


class LineError(Exception):
    """The call could not be placed (the message says why: a SIP status, an HTTP error)."""


class _RtpCallerPort:
    """Looks like a Call to an RtpSession (as gateway.sip.bridge.BridgePort does): the clock pulls the caller's
    next frame or digits, received audio goes to the caller dated by its arrival (`inbound_arrived`, set by the
    session per frame, not when the jitter buffer played it)."""

    def __init__(self, caller: ScriptedCaller, engine: RtpEngine) -> None:
        self.caller = caller
        self.engine = engine
        self.bus = True            # RtpSession only checks that a bus exists
        self.inbound_arrived: float | None = None

    def feed_audio(self, pcm: bytes) -> None:
        arrived = self.inbound_arrived
        self.caller.heard(pcm, arrived if arrived is not None else self.engine.loop_time(), paced=True)

    def feed_event(self, event: Any) -> None:
        """Digits and marks from the gateway mean nothing to the caller."""

    def next_outbound_nowait(self) -> BusItem:
        if self.caller.dtmf:
            return SendDtmf(self.caller.dtmf.popleft())
        return AudioFrame(self.caller.next_frame(self.engine.loop_time()), 8000)   # sent right after this


class SipLine:
    """One UA and one RTP engine on 127.0.0.1 shared by every simulated SIP call of a run."""

    rate = 8000

    def __init__(self, host: str, port: int, *, rtp_ports: tuple[int, int] = (31000, 31998),
                 ring_timeout: float = 30.0) -> None:
        self.host, self.port = host, port
        self.rtp_ports = rtp_ports
        self.ring_timeout = ring_timeout
        self.transport: SipTransport | None = None
        self.layer: TransactionLayer | None = None
        self.ua: UserAgent | None = None
        self.rtp: RtpEngine | None = None

    async def start(self) -> None:
        self.transport = SipTransport("127.0.0.1", 0, advertised_host="127.0.0.1")
        self.layer = TransactionLayer(self.transport)
        await self.transport.start()
        self.ua = UserAgent(self.transport, self.layer, user_agent="gateway-simulate")
        self.rtp = RtpEngine("127.0.0.1", *self.rtp_ports)
        await self.rtp.start()

    async def stop(self) -> None:
        if self.rtp is not None:
            await self.rtp.stop()
        if self.ua is not None:
            await self.ua.close()
        if self.layer is not None:
            await self.layer.close()
        if self.transport is not None:
            await self.transport.stop()

    async def call(self, caller: ScriptedCaller, number: str) -> LineResult:
        ua, engine = self.ua, self.rtp
        if ua is None or engine is None:
            raise RuntimeError("SIP line not started")
        rtp = await engine.open_session()
        try:
            offer = make_offer("127.0.0.1", rtp.local_port)
            uri = f"sip:{number}@{self.host}:{self.port}"
            invite = OutgoingInvite(ua, request_uri=uri, from_addr=NameAddr("sip:+15550000000@127.0.0.1"),
                                    to_addr=NameAddr(uri), sdp=offer.to_bytes(), dest=(self.host, self.port, "udp"))
            result = await invite.run(self.ring_timeout)
            if result.session is None:
                return LineResult(carrier_sid=invite.call_id, error=result.status_line or "no answer")
            session = result.session
            choice = parse_answer(session.remote_sdp or b"", offer)
            rtp.configure(choice.remote_addr, choice.codec, choice.payload_type, choice.dtmf_payload_type)
            _, decode, encode, _ = CODECS[choice.codec]
            caller.roundtrip = lambda pcm: decode(encode(pcm))
            caller.answered(engine.now or asyncio.get_running_loop().time())
            rtp.attach(_RtpCallerPort(caller, engine))
            hangup = await _converse(caller, session.ended)
            if hangup == "caller":
                await session.bye(reason_header(q850=16, text="simulated caller hung up"))
            else:
                hangup = f"agent ({session.end_reason or 'BYE'})"
            return LineResult(carrier_sid=session.call_id, hangup=hangup)
        finally:
            rtp.close()


async def _converse(caller: ScriptedCaller, far_end_gone: asyncio.Event) -> str:
    """Run the script until it ends ("caller") or the far end hangs up ("far end")."""
    script = asyncio.create_task(caller.run())
    gone = asyncio.create_task(far_end_gone.wait())
    try:
        await asyncio.wait({script, gone}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done() and not script.done():
            caller.remote_hangup.set()
            await script
            return "far end"
        return "caller" if not far_end_gone.is_set() else "far end"
    finally:
        gone.cancel()


class TwilioLine:
    """Twilio's side: the signed voice webhook, then Media Streams. `public_url` is what the gateway signs against
    (its --public-url); requests go to `url`."""

    rate = 8000

    def __init__(self, url: str, account_sid: str, auth_token: str, *, public_url: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.public_url = (public_url or url).rstrip("/")
        self.account_sid = account_sid
        self.auth_token = auth_token

    async def start(self) -> None:
        """Nothing shared between calls."""

    async def stop(self) -> None:
        """Nothing shared between calls."""

    async def call(self, caller: ScriptedCaller, number: str) -> LineResult:
        call_sid = "CA" + secrets.token_hex(16)
        params = {"CallSid": call_sid, "AccountSid": self.account_sid, "From": "+15550000000", "To": number,
                  "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        try:
            status, body = await post_signed(self.url + "/twilio/voice", params, self.auth_token,
                                             signed_url=self.public_url + "/twilio/voice")
        except aiohttp.ClientError as e:
            return LineResult(carrier_sid=call_sid, error=f"voice webhook: {e}")
        m = re.search(r'<Parameter name="call_id" value="([0-9a-f]+)"', body)
        stream = re.search(r'<Stream url="([^"]+)"', body)
        if status != 200 or not m or not stream:
            return LineResult(carrier_sid=call_sid, error=f"voice webhook {status}: {body[:120]}")
        ws_url = "ws" + self.url[4:] + "/twilio/media"    # loopback: the stream URL's host is the public one
        loop = asyncio.get_running_loop()
        client = TwilioStreamClient(ws_url, on_media=lambda p, now: caller.heard(ulaw_to_pcm16(p), now),
                                    on_clear=caller.cleared)
        caller.roundtrip = lambda pcm: ulaw_to_pcm16(pcm16_to_ulaw(pcm))
        try:
            await client.__aenter__()
        except OSError as e:
            return LineResult(carrier_sid=call_sid, gateway_call_id=m.group(1), error=f"media stream: {e}")
        try:
            await client.start(m.group(1), call_sid=call_sid, account_sid=self.account_sid)
            caller.answered(loop.time())
            sender = asyncio.create_task(self._send(client, caller))
            hangup = await _converse(caller, client.closed)
            sender.cancel()
            if hangup == "caller":
                await client.stop(call_sid, self.account_sid)
            else:
                hangup = f"agent (stream closed {client.close_code})"
            return LineResult(carrier_sid=call_sid, gateway_call_id=m.group(1), hangup=hangup)
        finally:
            await client.__aexit__()

    @staticmethod
    async def _send(client: TwilioStreamClient, caller: ScriptedCaller) -> None:
        async def send(frames: list[bytes]) -> None:
            while caller.dtmf:
                await client.dtmf(caller.dtmf.popleft())
            await client.media(pcm16_to_ulaw(frames[0]))
        await paced_sender(caller, send)


async def paced_sender(caller: ScriptedCaller, send: Callable[[list[bytes]], Awaitable[None]],
                       frames_per_message: int = 1) -> None:
    """The caller's audio on an absolute 20 ms schedule (a late wake-up does not drift the clock), in messages of
    `frames_per_message` frames, each frame dated by when its message leaves (the last one ends then)."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    step = FRAME_S * frames_per_message
    try:
        while True:
            now = loop.time()
            await send([caller.next_frame(now - (frames_per_message - 1 - i) * FRAME_S)
                        for i in range(frames_per_message)])
            due += step
            if due < now - 0.2:    # stalled: re-anchor rather than burst
                due = now
            await asyncio.sleep(max(0.0, due - loop.time()))
    except Exception:  # noqa: BLE001 - the socket closed under us (ConnectionClosed…): the call is over
        return


def _frames(pcm: bytes, size: int) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def refused(close_code: int | None) -> bool:
    """A websocket close code in the private range (RFC 6455 §7.4.2: 4000-4999): the gateway refused the stream
    (authentication, unknown number…), rather than ending the call."""
    return close_code is not None and 4000 <= close_code <= 4999


class ExotelLine:
    """Exotel's Voicebot applet: the stream to `/exotel/media` is the call; `number` is the exophone. With the
    ExoPhone's API key and token the upgrade carries Basic auth, as Exotel sends the userinfo of
    wss://KEY:TOKEN@host (the gateway requires it unless the number opted out)."""

    rate = 8000

    def __init__(self, url: str, account_sid: str = "", api_key: str | None = None,
                 api_token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.account_sid = account_sid
        basic = base64.b64encode(f"{api_key}:{api_token}".encode()).decode()
        self.headers = {"Authorization": f"Basic {basic}"} if api_key and api_token else {}

    async def start(self) -> None:
        """Nothing shared between calls."""

    async def stop(self) -> None:
        """Nothing shared between calls."""

    async def call(self, caller: ScriptedCaller, number: str) -> LineResult:
        call_sid = secrets.token_hex(16)
        loop = asyncio.get_running_loop()

        def heard(chunk: bytes, now: float) -> None:
            frames = _frames(chunk, 320)
            for f in frames:
                caller.heard(f, now)

        async with aiohttp.ClientSession() as http:
            client = ExotelStreamClient(http, "ws" + self.url[4:] + "/exotel/media", on_media=heard,
                                        on_clear=caller.cleared, headers=self.headers)
            try:
                await client.connect()
            except aiohttp.ClientError as e:
                return LineResult(carrier_sid=call_sid, error=f"voicebot stream: {e}")
            try:
                await client.start(call_sid, frm="+15550000000", to=number, account_sid=self.account_sid,
                                   encoding="audio/x-raw", sample_rate="8000")
                caller.answered(loop.time())

                async def send(frames: list[bytes]) -> None:
                    while caller.dtmf:
                        await client.dtmf(caller.dtmf.popleft())
                    await client.send({"event": "media", "media": {
                        "chunk": "0", "timestamp": "0", "payload": base64.b64encode(b"".join(frames)).decode()}})
                sender = asyncio.create_task(paced_sender(caller, send, frames_per_message=5))
                hangup = await _converse(caller, client.closed)
                sender.cancel()
                if hangup == "caller":
                    await client.stop("callended")
                elif refused(client.close_code):
                    return LineResult(carrier_sid=call_sid, error=f"the gateway closed the stream with "
                                                                  f"{client.close_code} (authentication: "
                                                                  "--exotel-api-key / EXOTEL_API_TOKEN)")
                else:
                    hangup = f"agent (stream closed {client.close_code})"
                return LineResult(carrier_sid=call_sid, hangup=hangup)
            finally:
                await client.close()


class VonageLine:
    """The Voice API: answer webhook, then the NCCO's websocket at `rate` (the number's vonage_audio_rate). With
    the number's signature secret the webhook is signed as Vonage signs it (`Authorization: Bearer <JWT>`, HS256;
    the gateway requires it unless the number opted out)."""

    def __init__(self, url: str, rate: int = 16000, signature_secret: str | None = None,
                 api_key: str = "") -> None:
        self.url = url.rstrip("/")
        self.rate = rate
        self.signature_secret = signature_secret
        self.api_key = api_key

    def _signed(self) -> dict[str, str]:
        if not self.signature_secret:
            return {}
        import jwt
        claims = {"iat": int(time.time()), "jti": str(uuidlib.uuid4()), "api_key": self.api_key}
        return {"Authorization": "Bearer " + jwt.encode(claims, self.signature_secret, "HS256")}

    async def start(self) -> None:
        """Nothing shared between calls."""

    async def stop(self) -> None:
        """Nothing shared between calls."""

    async def call(self, caller: ScriptedCaller, number: str) -> LineResult:
        uuid = str(uuidlib.uuid4())
        params = {"to": number.lstrip("+"), "from": "15550000000", "uuid": uuid,
                  "conversation_uuid": "CON-" + str(uuidlib.uuid4())}
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get(self.url + "/vonage/answer", params=params, headers=self._signed()) as r:
                    if r.status != 200:
                        return LineResult(carrier_sid=uuid, error=f"answer webhook: HTTP {r.status} (signed "
                                                                  "webhooks: --vonage-signature-secret)")
                    ncco = await r.json()
            except (aiohttp.ClientError, ValueError) as e:
                return LineResult(carrier_sid=uuid, error=f"answer webhook: {e}")
            try:
                endpoint = next(a for a in ncco if a.get("action") == "connect")["endpoint"][0]
            except (StopIteration, KeyError, IndexError, TypeError, AttributeError):
                return LineResult(carrier_sid=uuid, error=f"answer webhook: no websocket in the NCCO {ncco!r:.120}")
            if f"rate={self.rate}" not in str(endpoint.get("content-type")):
                return LineResult(carrier_sid=uuid, error=f"the number streams {endpoint.get('content-type')}, "
                                                          f"not L16 at {self.rate} Hz (--vonage-rate)")
            client = VonageStreamClient(http, endpoint, gw_url=self.url,
                                        on_media=lambda f, now: caller.heard(f, now), on_clear=caller.cleared)
            try:
                await client.connect()
            except aiohttp.ClientError as e:
                return LineResult(carrier_sid=uuid, error=f"media websocket: {e}")
            try:
                caller.answered(loop.time())

                async def send(frames: list[bytes]) -> None:
                    while caller.dtmf:
                        await client.dtmf(caller.dtmf.popleft())
                    await client.conn.send_bytes(frames[0])
                sender = asyncio.create_task(paced_sender(caller, send))
                hangup = await _converse(caller, client.closed)
                sender.cancel()
                if hangup != "caller" and refused(client.close_code):
                    return LineResult(carrier_sid=uuid, error=f"the gateway closed the media socket with "
                                                             f"{client.close_code}")
                if hangup != "caller":
                    hangup = f"agent (websocket closed {client.close_code})"
                return LineResult(carrier_sid=uuid, hangup=hangup)
            finally:
                await client.close()    # Vonage closes the socket when the caller hangs up
