"""Browser calls over WebRTC: the gateway terminates the peer connection with aiortc.

A page served at `/call` captures the microphone and sends an SDP offer to `POST /webrtc/offer` (non-trickle ICE:
the page waits for gathering to finish, so one HTTP round trip is the whole signalling). The offer is accepted
with the API key or with a short-lived token that `POST /api/v1/webrtc/token` issues (so a link to the page can be
handed to someone without handing out the API key).

Media: the browser sends Opus, aiortc decodes it to 48 kHz PCM16; we down-mix, resample to 16 kHz (the call's
carrier rate) and feed the frame bus, which converts to the engine's rate. The engine's audio comes back as a
`MediaStreamTrack` that the sender pulls every 20 ms: 16 kHz bus frames are resampled to 48 kHz and stamped with
a sample-count pts (time base 1/48000), the track sleeping until each frame's due time so the encoder gets audio
in real time, like a phone line. Silence fills gaps.

Control rides an RTCDataChannel labelled `control`, JSON text messages:
    browser → gateway: {"type": "dtmf", "digit": "5"}  {"type": "hangup"}
    gateway → browser: {"type": "call", "call_id": …}  {"type": "dtmf", "digits": "12"}  (engine's send_dtmf)
                       {"type": "transfer", "number": …, "outcome": …}  {"type": "hangup", "reason": …}
Hangup from either side ends the call; the call log's channel_type is `webrtc`.

ICE: no STUN/TURN server is configured unless `GATEWAY_WEBRTC_ICE_SERVERS` lists some (comma-separated
`stun:`/`turn:` URLs), because aiortc's default is a public Google STUN server. `GATEWAY_WEBRTC_HOST_ADDRESSES`
restricts the host candidates the gateway offers (e.g. `127.0.0.1` for a same-machine test).
"""
from __future__ import annotations

import asyncio
import base64
import fractions
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Coroutine
from importlib import resources
from typing import TYPE_CHECKING, Any

import aioice.ice
import av
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from gateway import safejson
from gateway.api.errors import ApiError, read_json
from gateway.call import Call
from gateway.callmanager import CapacityError
from gateway.carrier import Carrier
from gateway.frames import AudioFrame, Clear, Dtmf, HangupSource, Mark, SendDtmf, TransferRequest, TransferResult
from voicecodecs import StreamResampler
from voicecodecs._audioop import audioop

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("carriers.webrtc")

#: the rate the call's bus runs at on our side (the bus converts to the engine's rate)
BUS_RATE = 16000
OPUS_RATE = 48000
FRAME_SAMPLES = OPUS_RATE // 50                   # 20 ms at 48 kHz
SILENCE_48K = b"\x00" * (FRAME_SAMPLES * 2)
TIME_BASE = fractions.Fraction(1, OPUS_RATE)
DTMF_DIGITS = frozenset("0123456789*#ABCD")
TOKEN_TTL_DEFAULT = 300
TOKEN_TTL_MAX = 3600
#: a peer that has not connected within this time is given up (no call-log rows left "ringing")
CONNECT_TIMEOUT = 20.0


# -- tokens ---------------------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_key(api_key: str) -> bytes:
    # A key derived from the API key: tokens die when the API key is rotated, and a token never reveals the key.
    return hmac.new(api_key.encode(), b"telephony-gateway webrtc token v1", hashlib.sha256).digest()


def issue_token(api_key: str, ttl: int, agent_id: int | None = None, now: float | None = None) -> tuple[str, int]:
    """A signed, self-contained token: `payload.signature` (both base64url); returns (token, expires_at)."""
    exp = int((now or time.time()) + ttl)
    payload = _b64(json.dumps({"exp": exp, "agent_id": agent_id, "n": secrets.token_hex(4)},
                              separators=(",", ":")).encode())
    sig = _b64(hmac.new(_token_key(api_key), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}", exp


def verify_token(api_key: str, token: str, now: float | None = None) -> dict[str, Any] | None:
    """The token's claims when its signature is valid and it has not expired, else None."""
    payload, _, sig = token.partition(".")
    if not payload or not sig or not api_key:
        return None
    want = _b64(hmac.new(_token_key(api_key), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want.encode(), sig.encode()):
        return None
    try:
        claims = json.loads(_unb64(payload))
    except ValueError:
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] < (now or time.time()):
        return None
    return claims


# -- media ----------------------------------------------------------------------------------------------------------
def to_mono_pcm16(frame: av.AudioFrame) -> bytes:
    """A decoded aiortc frame (s16, packed, mono or stereo) as mono PCM16 bytes at its own rate."""
    if frame.format.name != "s16":
        frame = av.AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate).resample(frame)[0]
    channels = len(frame.layout.channels)
    data = bytes(frame.planes[0])[: frame.samples * channels * 2]
    if channels == 1:
        return data
    if channels == 2:                                  # what aiortc's Opus decoder produces
        return audioop.tomono(data, 2, 0.5, 0.5)
    mixed = np.frombuffer(data, "<i2").reshape(-1, channels).mean(axis=1)
    out: bytes = np.round(mixed).astype("<i2").tobytes()
    return out


class EngineTrack(MediaStreamTrack):
    """The engine's audio as a 48 kHz mono track, paced in real time by pts (sample count, time base 1/48000)."""

    kind = "audio"

    def __init__(self, leg: WebRTCLeg) -> None:
        super().__init__()
        self._leg = leg
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += FRAME_SAMPLES
            due = self._start + self._pts / OPUS_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.1:
                # The loop stalled (GC, a busy event loop): restart the clock instead of bursting to catch up.
                self._start = now - self._pts / OPUS_RATE
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._leg.next_48k_frame())
        frame.sample_rate = OPUS_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame


class WebRTCLeg:
    """One browser peer connection and the Call behind it."""

    def __init__(self, carrier: WebRTCCarrier, pc: RTCPeerConnection) -> None:
        self.carrier = carrier
        self.pc = pc
        self.call: Call | None = None
        self.channel: RTCDataChannel | None = None
        self.track = EngineTrack(self)
        self._up: StreamResampler | None = None
        self._up_rate = 0
        self._down = StreamResampler(BUS_RATE, OPUS_RATE)
        self._reader: asyncio.Task[None] | None = None
        self._timeout: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()          # keep fire-and-forget tasks referenced until done
        self.connected = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # browser → gateway -------------------------------------------------------------------------------------------
    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.create_task(self._read(track), name="webrtc-reader")

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if not isinstance(frame, av.AudioFrame):   # (an audio track yields audio frames)
                continue
            pcm = to_mono_pcm16(frame)
            up = self._up
            if up is None or frame.sample_rate != self._up_rate:
                up = self._up = StreamResampler(frame.sample_rate, BUS_RATE)
                self._up_rate = frame.sample_rate
            if self.call is not None:
                self.call.feed_audio(up.process(pcm))
        await self.peer_gone("remote_track_ended")

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "control":
            return
        self.channel = channel
        channel.on("message", self._on_message)
        if self.call is not None:
            self.send({"type": "call", "call_id": self.call.id, "call_log_id": self.call.log_id})

    def _on_message(self, message: Any) -> None:
        try:
            msg = safejson.loads(message) if isinstance(message, str) else None
        except safejson.BadJson:
            msg = None
        if not isinstance(msg, dict):
            self.send({"type": "error", "error": "control messages are JSON objects with a 'type'"})
            return
        kind = msg.get("type")
        if kind == "dtmf":
            digit = str(msg.get("digit", ""))
            if len(digit) != 1 or digit not in DTMF_DIGITS:
                self.send({"type": "error", "error": f"invalid DTMF digit {digit!r}: one of 0-9 * # A-D"})
                return
            duration = msg.get("duration_ms")
            if self.call is not None:
                self.call.feed_event(Dtmf(digit, duration if isinstance(duration, int) else None))
        elif kind == "hangup":
            self._spawn(self.peer_gone("browser_hangup"))
        else:
            self.send({"type": "error", "error": f"unknown control message type {kind!r}"})

    def on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self._spawn(self.peer_gone(f"connection_{state}"))

    async def peer_gone(self, reason: str, source: HangupSource = HangupSource.USER) -> None:
        """The browser hung up or vanished (or never connected): end the call, release the peer connection."""
        call = self.call
        if call is not None and call.is_active:
            status = None if call.answered else "failed"
            await call.end(source, reason, status=status)
        await self.close()

    # gateway → browser -------------------------------------------------------------------------------------------
    def next_48k_frame(self) -> bytes:
        """The next 20 ms of engine audio at 48 kHz; called by the track at real-time pace."""
        call = self.call
        if call is None or call.bus is None or not call.is_active:
            return SILENCE_48K
        while True:
            item = call.next_outbound_nowait()
            if item is None:
                return SILENCE_48K
            if isinstance(item, AudioFrame):
                pcm = self._down.process(item.pcm)     # bus frames are 20 ms: exactly 960 samples here
                return pcm if len(pcm) == len(SILENCE_48K) else (pcm + SILENCE_48K)[: len(SILENCE_48K)]
            if isinstance(item, Mark):
                call.feed_event(Mark(item.name))       # everything queued before it has gone out
            elif isinstance(item, SendDtmf):
                self.send({"type": "dtmf", "digits": item.digits})
            elif isinstance(item, Clear):
                pass                                   # nothing is buffered on our side beyond this frame

    def send(self, msg: dict[str, Any]) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(json.dumps(msg))
            except Exception:                          # the transport closed under us: the peer is going anyway
                log.debug("control message not sent", exc_info=True)

    # CallLeg -------------------------------------------------------------------------------------------------------
    async def hangup(self, call: Call, reason: str) -> None:
        self.send({"type": "hangup", "reason": reason})
        ch = self.channel
        deadline = time.monotonic() + 0.5
        while ch is not None and ch.readyState == "open" and ch.bufferedAmount and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)                      # let SCTP put the message on the wire before DTLS closes
        await self.close()

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        # A browser peer cannot be bridged to a phone number; the page is told what the agent asked for and the
        # engine gets a failed TransferResult, exactly as when a real transfer target does not answer.
        outcome = "failed: browser calls cannot be transferred to a phone number"
        self.send({"type": "transfer", "number": request.number, "outcome": outcome})
        await call.transfer_finished(TransferResult(request.number, outcome))

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.carrier.legs.discard(self)
        task = self._timeout
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.track.stop()
        await self.pc.close()

    async def connect_within(self, seconds: float) -> None:
        """Attach the call once media flows; give up if ICE/DTLS does not complete in time."""
        try:
            await asyncio.wait_for(self.connected.wait(), seconds)
        except TimeoutError:
            await self.peer_gone("connect_timeout", HangupSource.CARRIER)
            return
        call = self.call
        if call is not None and call.is_active and call.bus is None:
            await call.attach(self, carrier_rate=BUS_RATE)
            self.send({"type": "call", "call_id": call.id, "call_log_id": call.log_id})


# -- carrier -------------------------------------------------------------------------------------------------------
class WebRTCCarrier(Carrier):
    name = "webrtc"
    providers = ()

    def __init__(self, gateway: Gateway, ice_servers: list[str] | None = None,
                 host_addresses: list[str] | None = None) -> None:
        super().__init__(gateway)
        env = os.environ
        if ice_servers is None:
            ice_servers = [u.strip() for u in env.get("GATEWAY_WEBRTC_ICE_SERVERS", "").split(",") if u.strip()]
        if host_addresses is None:
            host_addresses = [a.strip() for a in env.get("GATEWAY_WEBRTC_HOST_ADDRESSES", "").split(",")
                              if a.strip()]
        self.ice_servers = ice_servers
        self.host_addresses = host_addresses
        self.legs: set[WebRTCLeg] = set()

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/call", self.page)
        app.router.add_post("/api/v1/webrtc/token", self.issue_token)
        app.router.add_get("/webrtc/agents", self.agents)
        app.router.add_post("/webrtc/offer", self.offer)

    async def start(self) -> None:
        if self.host_addresses:
            _restrict_host_addresses(self.host_addresses)

    async def stop(self) -> None:
        for leg in list(self.legs):
            await leg.peer_gone("shutdown", HangupSource.SYSTEM)
        if self.host_addresses:
            aioice.ice.get_host_addresses = _original_host_addresses

    # -- HTTP --------------------------------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        html = resources.files("gateway.web").joinpath("call.html").read_text()
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    def openapi_paths(self) -> dict[str, dict[str, Any]]:
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return {"/api/v1/webrtc/token": {"post": {
            "summary": "A short-lived token for the browser call page (/call?token=…)", "tags": ["webrtc"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "agent_id": {"type": "integer", "description": "the token calls only this agent"},
                    "ttl": {"type": "integer", "minimum": 10, "maximum": TOKEN_TTL_MAX,
                            "default": TOKEN_TTL_DEFAULT, "description": "seconds the token is valid"}}}}}},
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "success": {"const": True}, "token": {"type": "string"}, "expires_at": {"type": "integer"},
                        "agent_id": {"type": ["integer", "null"]}, "call_url": {"type": "string"}}}}}},
                "400": {"description": "Invalid input", **error},
                "401": {"description": "Missing or wrong API key", **error},
                "404": {"description": "Not found", **error}}}}}

    async def issue_token(self, request: web.Request) -> web.Response:
        """`POST /api/v1/webrtc/token` (API key): a token for `/call` valid `ttl` seconds, optionally one agent."""
        body = await read_json(request)
        unknown = set(body) - {"agent_id", "ttl"}
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
        ttl = body.get("ttl", TOKEN_TTL_DEFAULT)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 10 <= ttl <= TOKEN_TTL_MAX:
            raise ApiError(400, f"must be an integer number of seconds, 10 to {TOKEN_TTL_MAX}", "ttl")
        agent_id = await self._agent_id(body.get("agent_id"))
        token, exp = issue_token(self.gateway.api_key, ttl, agent_id)
        base = self.gateway.settings.public_base
        return web.json_response({"success": True, "token": token, "expires_at": exp, "agent_id": agent_id,
                                  "call_url": f"{base}/call?token={token}"})

    async def _agent_id(self, value: Any) -> int | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise ApiError(400, "must be a positive integer agent id", "agent_id")
        agent = await self.gateway.store.get_agent(int(value))
        if agent is None:
            raise ApiError(404, f"agent {value} not found", "agent_id")
        agent_id: int = agent["id"]
        return agent_id

    def _authorize(self, request: web.Request, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Claims of the caller: `{"agent_id": None}` for the API key, the token's claims for a token."""
        header = request.headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        cred = cred.strip() if scheme.lower() == "bearer" else ""
        cred = cred or str((body or {}).get("token") or request.query.get("token") or "")
        source = request.remote or ""
        throttle = self.gateway.api_throttle         # key guessing here is banned like on the REST API
        wait = throttle.banned(source)
        if wait:
            raise ApiError(429, "too many failed attempts from this address: try again later", "Authorization",
                           headers={"Retry-After": str(math.ceil(wait))})
        if not cred:
            throttle.failure(source, path=request.path, reason="missing credentials")
            raise ApiError(401, "missing credentials: send 'Authorization: Bearer <API key or /call token>'",
                           "Authorization")
        key = self.gateway.api_key or ""
        if key and hmac.compare_digest(cred.encode(), key.encode()):
            return {"agent_id": None}
        claims = verify_token(key, cred)
        if claims is None:
            throttle.failure(source, path=request.path, reason="invalid or expired token")
            raise ApiError(401, "invalid or expired token: ask for a new one (POST /api/v1/webrtc/token)",
                           "Authorization")
        return claims

    async def agents(self, request: web.Request) -> web.Response:
        """Agents the page may call: all of them for the API key, the token's agent for a scoped token."""
        claims = self._authorize(request)
        agents = await self.gateway.store.list_agents()
        if claims.get("agent_id"):
            agents = [a for a in agents if a["id"] == claims["agent_id"]]
        return web.json_response({"success": True, "fixed": bool(claims.get("agent_id")),
                                  "agents": [{"id": a["id"], "name": a.get("name") or f"agent {a['id']}"}
                                             for a in agents]})

    async def offer(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        claims = self._authorize(request, body)
        sdp, kind = body.get("sdp"), body.get("type", "offer")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ApiError(400, "is required: the browser's SDP offer", "sdp")
        if kind != "offer":
            raise ApiError(400, "must be 'offer'", "type")
        if "m=audio" not in sdp:
            raise ApiError(400, "the offer has no audio m-line: the page must send the microphone", "sdp")
        requested = await self._agent_id(body.get("agent_id"))
        if claims.get("agent_id") and requested not in (None, claims["agent_id"]):
            raise ApiError(403, f"this token is for agent {claims['agent_id']} only", "agent_id")
        agent_id = claims.get("agent_id") or requested
        agent = await self.gateway.store.get_agent(agent_id) if agent_id else None
        try:
            self.gateway.calls.refuse_if_full(self.name)     # before any media work; counted in /metrics
        except CapacityError as e:
            raise ApiError(503, str(e)) from None

        config = RTCConfiguration(iceServers=[RTCIceServer(u) for u in self.ice_servers])
        pc = RTCPeerConnection(config)
        leg = WebRTCLeg(self, pc)
        pc.on("track", leg.on_track)
        pc.on("datachannel", leg.on_datachannel)
        pc.on("connectionstatechange", leg.on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:
            await pc.close()
            raise ApiError(400, f"unusable SDP offer: {e}", "sdp") from None
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            await pc.close()
            raise ApiError(400, "the offer has no audio m-line: the page must send the microphone", "sdp")
        pc.addTrack(leg.track)                        # joins the offer's audio transceiver: sendrecv
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number="browser",
                to_number=f"agent:{agent_id}" if agent_id else "default-engine", agent=agent,
                metadata={"remote": request.remote, "user_agent": request.headers.get("User-Agent", "")[:200]})
        except CapacityError as e:
            await pc.close()
            raise ApiError(503, str(e)) from None
        leg.call = call
        self.legs.add(leg)
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as e:
            await leg.peer_gone("negotiation_failed", HangupSource.CARRIER)
            raise ApiError(400, f"cannot answer this offer: {e}", "sdp") from None
        await call.record(call_status="ringing")
        leg._timeout = asyncio.create_task(leg.connect_within(CONNECT_TIMEOUT), name=f"webrtc-connect-{call.id}")
        call.log.info("webrtc offer answered", extra={"agent_id": agent_id, "remote": request.remote})
        return web.json_response({"success": True, "type": "answer", "sdp": pc.localDescription.sdp,
                                  "call_id": call.id, "call_log_id": call.log_id})


_original_host_addresses = aioice.ice.get_host_addresses


def _restrict_host_addresses(allowed: list[str]) -> None:
    """aiortc has no option for which interfaces ICE uses; narrow aioice's host-address lookup to `allowed`."""
    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = [a for a in _original_host_addresses(use_ipv4, use_ipv6) if a in allowed]
        # loopback is never listed by aioice; allow it explicitly for same-machine use
        return found + [a for a in allowed if a in ("127.0.0.1", "::1") and a not in found]
    aioice.ice.get_host_addresses = host_addresses
