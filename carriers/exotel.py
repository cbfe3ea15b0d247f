"""Exotel: App Builder flow with the Voicebot applet (bidirectional websocket), Passthru, Connect and REST.

The flow our users build (docs/exotel.md): *Call comes* → (optional Passthru `/exotel/call_coming`) → **Voicebot**
`wss://PUBLIC/exotel/media` → **Passthru** `/exotel/should_end_the_call` (200 → Hangup, 302 → **Connect** whose
dynamic URL is `/exotel/call_transfer`) → the Connect branches each reach a Passthru with
`?omni_status=call_end|nobody_ans|didnt_dial_anyone` → Hangup.

Exotel is the websocket client and has no hangup or transfer message: closing the socket moves the flow to the
next applet, so a hangup is "close, then answer the Passthru 200" and a transfer is "close, then answer 302 and
hand the numbers to Connect".

Wire format (Exotel AgentStream, https://developer.exotel.com/docs/agentstream/websocket-protocol and
https://developer.exotel.com/docs/agentstream/stream-voicebot-applet): JSON text messages, snake_case, numbers as
strings. In: `connected`; `start` {stream_sid, start:{stream_sid, call_sid, account_sid, from, to,
custom_parameters, media_format:{encoding, sample_rate, bit_rate}}}; `media` {media:{chunk, timestamp, payload}};
`dtmf` {dtmf:{digit, duration}}; `mark` {mark:{name}}; `stop` {stop:{call_sid, account_sid, reason}}.
Out: `media` {event, stream_sid, media:{payload}}, `mark` {event, stream_sid, mark:{name}}, `clear`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from gateway import safejson
from gateway.amd import maybe_start_amd
from gateway.callmanager import CapacityError
from gateway.carrier import CarrierError, ImportField
from gateway.carrier_rest import CarrierHttp
from gateway.frames import (
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
from voicecodecs import SUPPORTED_RATES, alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from voicecodecs.dtmf import dtmf_pcm

from .exotel_consult import ExotelConsults
from .forwarding import ForwardingCarrier, UnknownWebhook, forwarded_fields, str_dict
from .mediasocket import MarkedPlayout, StreamClosed, decode_text, start_object
from .numberfields import number_setting
from .socket_consult import SocketConsultation, SocketConsultLeg
from .streamrelay import RelayStream, relay
from .wsdirect import DirectWebSocket, StopReading, read_messages, send_text

if TYPE_CHECKING:
    from gateway.call import Call
    from gateway.runtime import Gateway

log = logging.getLogger("carriers.exotel")

# -- outbound chunk rule --------------------------------------------------------------------------------------------
# Exotel, "Working with the Stream and Voicebot Applet" (support.exotel.com/support/solutions/articles/3000108630,
# developer.exotel.com/docs/agentstream/stream-voicebot-applet), chunk size window for bidirectional streaming:
#   minimum 3.2k, maximum 100k, always a multiple of 320 bytes. Smaller chunks distort on network jitter, larger
#   ones time out, and a size that is not a multiple of 320 leaves a short last packet after which Exotel waits
#   20 ms: audible gaps.
CHUNK_MULTIPLE = 320
CHUNK_MIN = 3200
CHUNK_MAX = 100_000 // CHUNK_MULTIPLE * CHUNK_MULTIPLE   # 99 840 B

INTERNAL_MARK = "gw-exo-"
_DIGITS = set("0123456789*#ABCD")
_SID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
OMNI_STATUSES = ("call_end", "nobody_ans", "didnt_dial_anyone")
TERMINAL_STATUSES = ("completed", "failed", "busy", "no-answer", "canceled")
FLOW_URL = "http://my.exotel.com/{sid}/exoml/start_voice/{app_id}"


class CloseCode(IntEnum):
    """Close codes on /exotel/media (private range 4000-4999, RFC 6455 §7.4.2)."""

    NORMAL = 1000              # call over / hangup / transfer: Exotel moves to the next applet
    TRY_AGAIN = 1013           # gateway at capacity
    START_TIMEOUT = 4001       # no `start` within the start timeout
    BAD_MESSAGE = 4002         # not JSON / not an object / required field missing or malformed
    UNKNOWN_EVENT = 4003       # an event the Voicebot protocol does not define
    BINARY_FRAME = 4004        # the protocol is JSON text only
    UNKNOWN_NUMBER = 4005      # `to` is no ExoPhone imported here, or the account sid does not match
    UNKNOWN_CALL = 4005        # (the same code) no consultation waits for this socket
    BAD_AUTH = 4006            # Basic auth on the upgrade missing or wrong
    BAD_MEDIA_FORMAT = 4007    # media_format we cannot decode
    ENGINE_ERROR = 4008        # the agent's engine could not start
    CALL_ENDED = 4009          # the call_sid names a call the gateway already ended (e.g. hung up while ringing)


# -- audio format -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaFormat:
    """What one Voicebot stream carries, read from `start.media_format` (and the URL's `sample-rate`).

    Exotel's base guide documents raw/slin 16-bit little-endian PCM at 8 kHz; the extended (beta) guide adds μ-law
    8 kHz (`audio/x-mulaw`) and PCM at 16 kHz (`audio/L16;rate=16000`), and the `?sample-rate=16000|24000` URL
    option. Exotel calls its PCM "L16" yet documents every PCM payload as little-endian slin, so L16 here is LE.
    """

    codec: str          # "pcm16" | "ulaw" | "alaw"
    sample_rate: int

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * (2 if self.codec == "pcm16" else 1)

    @property
    def silence(self) -> bytes:
        return {"pcm16": b"\x00", "ulaw": b"\xff", "alaw": b"\xd5"}[self.codec]

    def decode(self, payload: bytes) -> bytes:
        if self.codec == "ulaw":
            return ulaw_to_pcm16(payload)
        if self.codec == "alaw":
            return alaw_to_pcm16(payload)
        return payload

    def encode(self, pcm: bytes) -> bytes:
        if self.codec == "ulaw":
            return pcm16_to_ulaw(pcm)
        if self.codec == "alaw":
            return pcm16_to_alaw(pcm)
        return pcm

    @classmethod
    def from_start(cls, media_format: Any, url_rate: int | None) -> MediaFormat:
        """Raises ValueError naming what is not supported."""
        mf = media_format if isinstance(media_format, dict) else {}
        enc = str(mf.get("encoding") or "").strip().lower()
        params = dict(p.split("=", 1) for p in enc.split(";")[1:] if "=" in p)
        base = enc.split(";", 1)[0].strip()
        if any(k in base for k in ("mulaw", "ulaw", "pcmu")):
            codec = "ulaw"
        elif any(k in base for k in ("alaw", "pcma")):
            codec = "alaw"
        elif base == "" or any(k in base for k in ("raw", "slin", "pcm", "l16", "linear", "base64")):
            # "base64" (what several public Exotel integrations send) names the payload's transport encoding,
            # not the audio's: the audio is the documented 16-bit PCM at sample_rate
            codec = "pcm16"
        else:
            raise ValueError(f"unsupported media_format encoding {mf.get('encoding')!r}")
        bits = re.sub(r"\D", "", str(mf.get("bit_rate") or ""))
        if codec == "pcm16" and bits == "8":      # "16" documented; a bit rate such as 128000 (8 kHz × 16) is fine
            raise ValueError("8-bit linear PCM is not supported (expected 16-bit)")
        rate_src = mf.get("sample_rate") or params.get("rate") or url_rate or 8000
        try:
            rate = int(str(rate_src).strip())
        except ValueError:
            raise ValueError(f"sample_rate {rate_src!r} is not a number") from None
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample_rate {rate} (supported: {', '.join(map(str, SUPPORTED_RATES))})")
        if codec != "pcm16" and rate != 8000:
            raise ValueError(f"G.711 {codec} at {rate} Hz is not a telephony format")
        return cls(codec, rate)


class ChunkPacker:
    """Groups encoded outbound audio into chunks Exotel accepts (see CHUNK_* above)."""

    def __init__(self, silence: bytes, minimum: int = CHUNK_MIN, maximum: int = CHUNK_MAX,
                 multiple: int = CHUNK_MULTIPLE) -> None:
        self.silence = silence
        self.minimum, self.maximum, self.multiple = minimum, maximum, multiple
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= self.minimum:
            n = min(len(self._buf) // self.multiple * self.multiple, self.maximum)
            out.append(bytes(self._buf[:n]))
            del self._buf[:n]
        return out

    def flush(self) -> bytes | None:
        """The rest as one chunk, padded with silence to the minimum and a whole multiple (end of speech)."""
        if not self._buf:
            return None
        n = max(self.minimum, -(-len(self._buf) // self.multiple) * self.multiple)
        out = bytes(self._buf) + self.silence * (n - len(self._buf))
        self._buf.clear()
        return out

    def clear(self) -> int:
        n = len(self._buf)
        self._buf.clear()
        return n


# -- Connect applet ---------------------------------------------------------------------------------------------
def connect_applet_response(numbers: list[str], caller_id: str | None, options: dict[str, Any] | None = None
                            ) -> dict[str, Any]:
    """The JSON the Connect applet's dynamic URL returns ("Programmable Connect", header Exotel-Version: 1.0).

    Sources: support.exotel.com/support/solutions/articles/3000096873 (request side) and the response shape used
    in public integrations (fetch_after_attempt, destination.numbers, outgoing_phone_number, record,
    recording_channels, max_ringing_duration, max_conversation_duration, music_on_hold, parallel_ringing,
    start_call_playback). This is the only place that knows the shape. Numbers are dialled in order (primary,
    then backups) because parallel ringing is off; an empty list makes Exotel take "we didn't dial anyone".
    """
    o = options or {}
    body: dict[str, Any] = {
        "fetch_after_attempt": False,
        "destination": {"numbers": list(numbers)},
        "record": bool(o.get("record", True)),
        "recording_channels": o.get("recording_channels", "dual"),
        "max_ringing_duration": int(o.get("ring_timeout", 30)),
        "max_conversation_duration": int(o.get("max_conversation_duration", 3600)),
        "music_on_hold": {"type": o.get("music_on_hold", "operator_tone")},
        "parallel_ringing": {"activate": False, "max_parallel_attempts": 1},
    }
    if caller_id:
        body["outgoing_phone_number"] = caller_id
    if o.get("whisper"):
        body["start_call_playback"] = {"playback_to": "callee", "type": "text", "value": str(o["whisper"])}
    return body


# -- agent settings -----------------------------------------------------------------------------------------------
#: settings.exotel key → (default, maximum). Calls/connect documents TimeLimit "max. 14400 i.e. 4 hours" and gives
#: TimeOut (seconds the legs ring) no range: positive, and no longer than a call may last.
CALL_OPTIONS = {"time_limit": (3600, 14400), "ring_timeout": (45, 14400)}


def call_options(opts: Any) -> dict[str, int]:
    """`settings.exotel` → checked Calls/connect TimeLimit / TimeOut seconds; CarrierError names the field."""
    f = "settings.exotel"
    opts = {} if opts is None else opts
    if not isinstance(opts, dict):
        raise CarrierError(f"{f}: must be an object", 400, f)
    out: dict[str, int] = {}
    for key in opts:
        if key not in CALL_OPTIONS:
            raise CarrierError(f"{f}.{key}: unknown setting (known: {', '.join(CALL_OPTIONS)})", 400, f"{f}.{key}")
    for key, (default, maximum) in CALL_OPTIONS.items():
        value = opts.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise CarrierError(f"{f}.{key}: must be a whole number of seconds from 1 to {maximum} "
                               f"(Exotel Calls/connect)", 400, f"{f}.{key}")
        out[key] = value
    return out


# -- helpers ----------------------------------------------------------------------------------------------------
def normalize_subdomain(value: Any) -> str:
    """`api.exotel.com`, `@api.in.exotel.com`, `https://api.exotel.com/` → the bare host; only Exotel hosts, so an
    imported number can never make the gateway send credentials (or requests) anywhere else."""
    v = str(value or "").strip().lower()
    v = re.sub(r"^[a-z]+://", "", v).lstrip("@").split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9.-]+\.exotel\.(com|in)", v):
        raise CarrierError(f"exotel_subdomain: {value!r} is not an Exotel API host "
                           "(api.exotel.com for Singapore, api.in.exotel.com for Mumbai)", 400)
    return v


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s or "")


def same_number(a: str, b: str) -> bool:
    """Exotel lists ExoPhones as +91…, 91… or 0… (national with trunk prefix); compare on the national part."""
    da, db = _digits(a), _digits(b)
    if not da or not db:
        return False
    if da == db:
        return True
    short, long_ = sorted((da.lstrip("0"), db.lstrip("0")), key=len)
    return len(short) >= 6 and long_.endswith(short) and len(long_) - len(short) <= 3


def to_e164(raw: str, like: str | None = None) -> str:
    """Best effort: Exotel sends Indian numbers as 0XXXXXXXXXX; borrow +91 from our ExoPhone when it is Indian."""
    raw = (raw or "").strip().strip('"')
    d = _digits(raw)
    if like and like.startswith("+91") and len(d) == 11 and d.startswith("0"):
        return "+91" + d[1:]
    if like and like.startswith("+91") and len(d) == 10:
        return "+91" + d
    try:
        return normalize_e164(raw)
    except ValueError:
        return raw


def _exotel_detail(body: Any) -> str:
    """Exotel's error body: {"RestException": {"Status", "Message"}}."""
    exc = body.get("RestException") if isinstance(body, dict) else None
    return str(exc.get("Message") or "") if isinstance(exc, dict) else ""


def unauthenticated_allowed(number: dict[str, Any] | None) -> bool:
    """The explicit opt-out: this ExoPhone's callbacks are accepted without credentials (IP allow-list mode)."""
    return number_setting(number, "exotel_allow_unauthenticated", False) is True


def passthru_token(number: dict[str, Any]) -> str:
    """The `gw_token` of the call_coming URL: HMAC-SHA256 of the account sid under the API token, so it is fixed for
    an account (one flow can serve all its ExoPhones), changes when the token is rotated, and reveals nothing."""
    token = str(number_setting(number, "exotel_api_token", ""))
    msg = f"exotel-passthru:{number_setting(number, 'exotel_account_sid', '')}".encode()
    return hmac.new(token.encode(), msg, "sha256").hexdigest()[:32]


def passthru_stream_info(q: Any) -> dict[str, str]:
    """Stream metadata Exotel adds to a Passthru after a Voicebot: `Stream[Status]=…` keys, or one JSON `Stream`."""
    info: dict[str, str] = {}
    raw = q.get("Stream")
    if raw:
        try:
            parsed = safejson.loads(raw)
            if isinstance(parsed, dict):
                info.update({str(k): str(v) for k, v in parsed.items()})
        except safejson.BadJson:
            pass
    for k, v in q.items():
        m = re.fullmatch(r"Stream\[(\w+)\]", k)
        if m:
            info[m.group(1)] = v
    return info


# -- per-call state ---------------------------------------------------------------------------------------------
@dataclass
class ExotelCallState:
    """What the gateway remembers about one Exotel CallSid across the websocket and the later HTTP applets."""

    call_sid: str
    call: Call
    number: dict[str, Any] | None
    transfer: TransferRequest | None = None
    stream: VoicebotStream | None = None
    ended_at: float | None = None
    watchdog: asyncio.TimerHandle | None = None
    #: the attended transfer's consultation call while one runs, or the bridge it became (socket_consult.py)
    consultation: SocketConsultation | None = None


class ExotelLeg(SocketConsultLeg):
    """The call's leg as the core sees it: there is no Exotel API to end or move a call, only closing the stream.
    Attended transfer: carriers/exotel_consult.py (a gateway bridge)."""

    def __init__(self, carrier: ExotelCarrier, state: ExotelCallState) -> None:
        self.carrier = carrier
        self.state = self.st = state

    def consult_carrier(self) -> Any:
        return self.carrier.consults

    async def hangup(self, call: Call, reason: str) -> None:
        stream = self.state.stream
        if stream is None:
            if self.state.transfer is not None:
                call.log.warning("Exotel has no API to hang up a transferred call; closing our record only")
            return
        graceful = call.hangup is not None and call.hangup.source is HangupSource.AGENT
        await stream.close_for("hangup", drain=graceful)

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        stream = self.state.stream
        if stream is None:
            raise CarrierError("the Exotel stream is gone; the call can no longer be transferred", 409)
        self.state.transfer = request
        await stream.close_for("transfer", drain=True)
        call.log.info("transfer handed to the Exotel flow", extra={"target": request.number,
                                                                   "backups": len(request.backup_numbers)})
        self.carrier.arm_watchdog(self.state, self.carrier.transfer_timeout, "transfer_timeout")


BINARY_REASON = "binary frames are not part of Exotel's Voicebot protocol"


class VoicebotStream(MarkedPlayout):
    """One Voicebot websocket: protocol state, the sender task, chunking and the playout clock."""

    internal_mark = INTERNAL_MARK
    close_codes = CloseCode
    binary_reason = BINARY_REASON
    start_timeout_reason = "no start within {timeout:g} s"

    def __init__(self, carrier: ExotelCarrier, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__(ws)   # marks, drain waiters, playout_end
        self.carrier = carrier
        self.request = request
        self.stream_sid: str | None = None
        self.fmt: MediaFormat | None = None
        self.state: ExotelCallState | None = None
        self.call: Call | None = None
        self.stopped: dict[str, Any] | None = None       # the `stop` message, when Exotel sent one
        self.closing_for: str | None = None               # "hangup" | "transfer" when we close the socket
        self.packer: ChunkPacker | None = None
        self._send_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._pcm_carry = b""
        self._prefix = ""
        self._stopping = False
        self.chunks_sent = 0
        # engine frames packed but not sent yet, by the byte offset they start at in the outbound audio
        self._unsent: deque[tuple[int, AudioFrame]] = deque()
        self._queued_bytes = self._sent_bytes = 0
        #: engine frames are packed as they are handed over (`_pack_now`) while the sender waits for the call;
        #: the sender, waiting with nothing packed, is woken (`_kick`) to time the flush of a partial chunk
        self.direct_out = self._pack_now if self.direct_ws is not None else None
        self._kick: asyncio.Future[None] | None = None
        self._last_push = 0.0                             # loop time engine audio was last packed

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self.call.log if self.call else ContextLogger(log, {"carrier": "exotel"})

    # -- reader -------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        watcher: asyncio.Task[None] | None = None
        try:
            await self._await_start(self.carrier.start_timeout)
            watcher = asyncio.create_task(self._close_when_call_ends(), name=f"exotel-watch-{self.stream_sid}")
            self._sender = asyncio.create_task(self._send_loop(), name=f"exotel-send-{self.stream_sid}")
            await self._read_loop()
        except RelayStream as r:     # another process runs the call's consultation: carry the socket there
            await relay(self.ws, r, [json.dumps(self.start_message)], self.carrier.start_timeout)
        except StreamClosed as e:
            self.log.warning("exotel stream closed: %s", e.reason,
                             extra={"close_code": int(e.code), "stream_sid": self.stream_sid})
            if not self.ws.closed:
                await self.ws.close(code=int(e.code), message=e.reason[:120].encode())
            if self.call is not None and not self.call.ended.is_set() and self.closing_for is None \
                    and self.consultation is None:     # (a consultation's socket: _finish tells the consultation)
                await self.call.end(HangupSource.CARRIER, f"stream_error: {e.reason}"[:200])
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._finish()

    async def _on_start(self, m: dict[str, Any]) -> None:
        start = start_object(m, CloseCode)
        sid = start.get("stream_sid") or m.get("stream_sid")
        call_sid = start.get("call_sid")
        if not isinstance(sid, str) or not _SID.match(sid):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "start without a valid stream_sid")
        if not isinstance(call_sid, str) or not _SID.match(call_sid):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "start without a valid call_sid")
        url_rate = self.request.query.get("sample-rate") or self.request.query.get("sample_rate")
        try:
            fmt = MediaFormat.from_start(start.get("media_format"), int(url_rate) if url_rate else None)
        except ValueError as e:
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, str(e)) from None
        mf_rate = (start.get("media_format") or {}).get("sample_rate") if isinstance(
            start.get("media_format"), dict) else None
        if url_rate and mf_rate and str(mf_rate) != str(url_rate):
            log.warning("media_format.sample_rate differs from the URL's sample-rate; using media_format",
                        extra={"carrier": "exotel", "media_format_rate": mf_rate, "url_rate": url_rate})
        self.stream_sid, self.fmt = sid, fmt
        self.packer = ChunkPacker(fmt.silence)
        self._prefix = '{"event":"media","stream_sid":"%s","media":{"payload":"' % sid
        consultation = self.carrier.consults.find(call_sid, start)
        if consultation is not None:       # the target's leg of an attended transfer (exotel_consult.py)
            await self.carrier.consults.claim(self, consultation, fmt.sample_rate)
            return
        if not self.carrier.holds_sid(call_sid):
            relayed = await self.carrier.consults.elsewhere(self, call_sid)
            if relayed is not None:        # another process runs that consultation: carried there
                raise relayed
        self.state = await self.carrier.claim_stream(self, start, call_sid)
        self.call = self.state.call
        maybe_start_amd(self.call)     # outbound + agent AMD on: hold the engine, detect, voicemail drop (else no-op)
        try:
            await self.call.attach(ExotelLeg(self.carrier, self.state), fmt.sample_rate)
        except Exception as e:
            self.call.log.exception("engine could not start")
            await self.call.end(HangupSource.SYSTEM, "engine_error")
            raise StreamClosed(CloseCode.ENGINE_ERROR, f"engine could not start: {type(e).__name__}") from None
        self.call.log.info("exotel stream started", extra={"stream_sid": sid, "codec": fmt.codec,
                                                           "rate": fmt.sample_rate})

    def _started(self) -> tuple[Call, MediaFormat, ChunkPacker]:
        """What the start message set up; the read and send loops run only after it."""
        if self.call is None or self.fmt is None or self.packer is None:
            raise RuntimeError("exotel stream used before its start message")
        return self.call, self.fmt, self.packer

    async def _read_loop(self) -> None:
        """Read until `stop` or the socket closes; messages are handled where they are parsed
        (carriers/wsdirect.py: no task switch per media message)."""
        await read_messages(self.ws, self._on_text, self._on_binary)

    def _on_binary(self, data: bytes) -> None:
        raise StreamClosed(CloseCode.BINARY_FRAME, BINARY_REASON)

    def _on_text(self, text: str) -> None:
        """One Voicebot message; StopReading after `stop`."""
        m = decode_text(text, CloseCode)
        call, fmt, _ = self._started()
        event = m["event"]
        if event == "media":
            try:
                # strict_mode: what b64decode(validate=True) checks, in C, without its regex (as twilio_media.py)
                data = binascii.a2b_base64(m["media"]["payload"], strict_mode=True)
            except (KeyError, TypeError, ValueError):   # binascii.Error, or non-ASCII text
                raise StreamClosed(CloseCode.BAD_MESSAGE, "media without a base64 payload") from None
            if fmt.codec == "pcm16":
                data = self._pcm_carry + data
                if len(data) % 2:
                    self._pcm_carry, data = data[-1:], data[:-1]
                else:
                    self._pcm_carry = b""
            self.inlet.feed_audio(fmt.decode(data))   # the call, or hold / bridge
        elif event == "mark":
            self._on_mark(m)
        elif event == "dtmf":
            d: dict[str, Any] = m["dtmf"] if isinstance(m.get("dtmf"), dict) else {}
            digit = str(d.get("digit", "")).strip().upper()
            if len(digit) == 1 and digit in _DIGITS:
                dur = d.get("duration")
                try:
                    duration = int(float(dur)) if dur is not None and dur != "" else None
                except (TypeError, ValueError):
                    duration = None
                self.inlet.feed_event(Dtmf(digit, duration))
            else:
                call.log.warning("ignored malformed dtmf message", extra={"digit": str(digit)[:8]})
        elif event == "stop":
            self.stopped = m.get("stop") if isinstance(m.get("stop"), dict) else {}
            raise StopReading
        elif event in ("connected", "start"):
            raise StreamClosed(CloseCode.BAD_MESSAGE, f"duplicate {event}")
        else:
            raise StreamClosed(CloseCode.UNKNOWN_EVENT, f"unknown event {event[:40]!r}")

    def _on_mark(self, m: dict[str, Any]) -> None:
        name = (m.get("mark") or {}).get("name") if isinstance(m.get("mark"), dict) else None
        if not isinstance(name, str):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "mark without a name")
        if not self._mark_played(name):
            self.log.debug("echo of a mark we did not send", extra={"mark": name[:64]})

    async def _finish(self) -> None:
        """The socket is gone: stop the sender (letting a hangup/transfer it runs complete), settle the call."""
        call = self.call
        self._stopping = True
        await self._stop_sender(self._sender, "exotel sender did not stop in time")
        self._release_drain_waiters()
        if not self.ws.closed:
            await self.ws.close(code=CloseCode.NORMAL, message=b"stream over")
        if self.state is not None and self.state.stream is self:
            self.state.stream = None
        if self.consultation is not None:      # the target's socket of an attended transfer
            await self.consultation.stream_gone(self)
            return
        if call is None or call.ended.is_set() or self.closing_for is not None:
            return   # a hangup ends the call itself; a transfer keeps it open until Exotel reports the outcome
        if self.stopped is not None:
            reason = str(self.stopped.get("reason") or "")
            await call.record(extra={"exotel_stop_reason": reason[:64]})
            await call.end(HangupSource.USER, "caller_hangup")
        else:
            await call.end(HangupSource.CARRIER, "stream_closed")

    # -- sender -------------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        """The only producer of media: takes the engine's 20 ms frames, packs them into Exotel-sized chunks and
        flushes a partial chunk (padded) once the engine pauses and Exotel is about to run out of audio."""
        call, fmt, packer = self._started()
        loop = asyncio.get_running_loop()
        nxt: asyncio.Future[tuple[Any, BusItem]] | None = None
        try:
            while not self._stopping:
                if nxt is None:
                    nxt = asyncio.ensure_future(self._take(on_wire=False))   # the call's frames are dated when sent
                waits: set[asyncio.Future[Any]] = {nxt}
                timeout = None
                if packer.pending:
                    # flush once the engine has paused `idle_flush` and Exotel is about to run out of audio
                    timeout = max(self._last_push + self.carrier.idle_flush, self.playout_end - 0.06) - loop.time()
                    if timeout <= 0:
                        if self.ws.closed:
                            packer.clear()
                        else:
                            await self.flush()
                        continue
                elif self.direct_out is not None:      # frames handed over while we wait fill the packer
                    self._kick = loop.create_future()
                    waits.add(self._kick)
                done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                self._kick = None
                if nxt not in done:
                    continue
                (source, item), nxt = nxt.result(), None
                if self._stopping or self.ws.closed or not self._still_ours(source, item):
                    continue
                if isinstance(item, AudioFrame):
                    await self.send_audio(item.pcm, item if source is call else None)
                elif isinstance(item, Mark):
                    await self.flush()
                    await self.send_engine_mark(item.name)
                elif isinstance(item, Clear):
                    await self.clear()
                elif isinstance(item, SendDtmf):
                    # the Voicebot protocol has no DTMF message: play the tones in-band, in order with the audio
                    await self.send_audio(dtmf_pcm(item.digits, fmt.sample_rate))
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        except asyncio.CancelledError:
            if nxt is not None and not nxt.done():
                nxt.cancel()
            raise
        except Exception:
            call.log.exception("exotel media sender failed")
            if not self.ws.closed:
                await self.ws.close(code=1011, message=b"sender failed")
        await self._settle_next(nxt)   # a leg action may be running inside it: let it finish (bounded)

    async def send_audio(self, pcm: bytes, frame: AudioFrame | None = None) -> None:
        """`frame`: the engine frame `pcm` came from, put on the call's turn timeline when its first byte goes
        out in a chunk (not when it was taken: a chunk waits for 100 ms of audio, then for pacing)."""
        for chunk in self._pack(self._started()[1].encode(pcm), frame):
            await self._send_chunk(chunk)

    def _pack(self, encoded: bytes, frame: AudioFrame | None) -> list[bytes]:
        """Queue encoded audio (from engine frame `frame`, if any); the chunks now complete."""
        if frame is not None:
            self._unsent.append((self._queued_bytes, frame))
        self._queued_bytes += len(encoded)
        self._last_push = self._now()
        return self._started()[2].push(encoded)

    def _pack_now(self, frame: AudioFrame) -> bool:
        """An engine frame handed over while the sender waits for the call's next item (`Call.next_outbound`'s
        `direct`): packed now and a chunk it completes written now. False (nothing done: the frame is queued for
        the sender) when the socket no longer carries the call, is closing or read slowly, another send holds the
        lock, a barge-in is pending, pacing would hold the chunk back, or the frame would complete two chunks."""
        ws = self.direct_ws
        call, fmt, packer = self._started()
        if ws is None or self.port is not None or self._stopping or self._send_lock.locked() \
                or not ws.can_write_nowait() or (call.bus is not None and call.bus.clear_pending.is_set()) \
                or self.playout_end - self._now() > self.carrier.max_ahead:
            return False
        encoded = fmt.encode(frame.pcm)
        if packer.pending + len(encoded) >= 2 * packer.minimum:
            return False
        for chunk in self._pack(encoded, frame):
            ws.write_text_nowait(self._chunk_text(chunk))    # (writable: checked above, one chunk at most)
            self._chunk_out(chunk, 0)
        kick = self._kick
        if packer.pending and kick is not None and not kick.done():
            kick.set_result(None)      # the sender times the flush of this partial chunk
        return True

    async def flush(self) -> None:
        packer = self._started()[2]
        padding = -packer.pending
        chunk = packer.flush()
        if chunk:
            await self._send_chunk(chunk, padding=padding + len(chunk))

    def _went_out(self, nbytes: int) -> None:
        """`nbytes` of queued audio were sent now: date the engine frames that start in them."""
        self._sent_bytes += nbytes
        call = self.call
        while self._unsent and self._unsent[0][0] < self._sent_bytes:
            frame = self._unsent.popleft()[1]
            if call is not None:
                call.sent(frame)

    async def _send_chunk(self, chunk: bytes, padding: int = 0) -> None:
        # stay at most `max_ahead` seconds ahead of playback: engines often speak faster than real time, Exotel's
        # buffer is not ours to flood, and a barge-in then has little to throw away
        if not await self._pace(self.carrier.max_ahead):
            self._unsent.clear()
            self._sent_bytes = self._queued_bytes
            return   # a barge-in arrived: this chunk is dropped, the Clear behind it goes out next
        async with self._send_lock:
            await send_text(self.ws, self._chunk_text(chunk))
        self._chunk_out(chunk, padding)

    def _chunk_text(self, chunk: bytes) -> str:
        return self._prefix + base64.b64encode(chunk).decode("ascii") + '"}}'

    def _chunk_out(self, chunk: bytes, padding: int) -> None:
        """`chunk` (its last `padding` bytes silence of ours) went out now."""
        self._went_out(len(chunk) - padding)
        self._played(len(chunk) / self._started()[1].bytes_per_second)
        self.chunks_sent += 1

    async def clear(self) -> None:
        """Barge-in: drop our partial chunk and Exotel's buffer; pending marks will never mean 'played'."""
        if self.packer is not None:
            self.packer.clear()
        self._unsent.clear()          # never went out: not on the turn timeline
        self._sent_bytes = self._queued_bytes
        await super().clear()

    async def _before_drain(self) -> None:
        await self.flush()   # drain: the partial chunk goes out before our mark

    async def _send_mark(self, name: str) -> None:
        await self._send_json({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": name}})

    async def _send_clear(self) -> None:
        await self._send_json({"event": "clear", "stream_sid": self.stream_sid})

    async def close_for(self, action: str, *, drain: bool) -> None:
        """Hangup/transfer: optionally let the queued audio play out, then close so the flow moves on."""
        self.closing_for = action
        if drain:
            try:
                await self.drain()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                pass
        elif self.packer is not None:
            self.packer.clear()
        if not self.ws.closed:
            await self.ws.close(code=CloseCode.NORMAL, message=action.encode())

    async def _send_json(self, obj: dict[str, Any]) -> None:
        async with self._send_lock:
            await send_text(self.ws, json.dumps(obj, separators=(",", ":")))


# -- the carrier ------------------------------------------------------------------------------------------------
class ExotelCarrier(ForwardingCarrier):
    name = "exotel"
    providers = ("exotel",)
    number_field = "exotel_phone_number"
    import_fields = (
        ImportField("exotel_phone_number", required=True, e164=True, help="the ExoPhone, E.164"),
        ImportField("exotel_api_key", required=True, secret=True, help="API key (API settings page)"),
        ImportField("exotel_api_token", required=True, secret=True, help="API token (API settings page)"),
        ImportField("exotel_subdomain", required=True,
                    help="API host: api.exotel.com (Singapore) or api.in.exotel.com (Mumbai)"),
        ImportField("exotel_account_sid", required=True, help="Account SID"),
        ImportField("exotel_app_id", help="App Bazaar flow id with the Voicebot applet (needed for outbound)"),
        ImportField("exotel_allow_unauthenticated", kind=bool, default=False,
                    help="opt-out: accept Voicebot sockets without Basic auth and call_coming without its token "
                         "(only behind Exotel's IP allow-list)"),
        ImportField("name", help="label"),
    )

    #: seconds to wait for `start` after the socket opens (Exotel expects the bot within 10 s)
    start_timeout = 15.0
    #: a partial chunk waits this long for more engine audio before it is padded and sent
    idle_flush = 0.25
    #: seconds of audio sent ahead of what Exotel has played
    max_ahead = 3.0
    #: a call announced (call_coming / dispatch) whose stream never starts is closed after this
    attach_timeout = 120.0
    #: a transferred call with no omni_status / terminal status callback is closed after this (Exotel's 4 h cap)
    transfer_timeout = 4 * 3600.0
    #: ended calls are remembered this long for the Passthru / Connect / status callbacks that follow
    state_ttl = 900.0
    #: at most this many calls announced by call_coming may wait for their stream (a bound even for authenticated
    #: announcements; past the cap the stream's `start` still opens the call, only the early log row is skipped)
    max_announced = 200

    def __init__(self, gateway: Gateway, base_url: str | None = None) -> None:
        super().__init__(gateway)
        #: overrides https://{exotel_subdomain} for every REST call (tests point it at a loopback fake)
        base_url = base_url or os.environ.get("GATEWAY_EXOTEL_API_BASE") or None
        self.base_url = base_url.rstrip("/") if base_url else None
        self.rest = CarrierHttp("Exotel", lambda: self.gateway.settings.carrier_timeout, _exotel_detail)
        self._calls: dict[str, ExotelCallState] = {}
        self.consults = ExotelConsults(self)

    # -- wiring -------------------------------------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/exotel/media", self.media)
        r.add_get("/media_exotel_community", self.media)
        r.add_get("/exotel/should_end_the_call", self.should_end_the_call)
        r.add_get("/exotel/call_transfer", self.call_transfer)
        r.add_get("/exotel/call_coming", self.call_coming)
        r.add_route("*", "/exotel/status_callback", self.status_callback)

    async def start(self) -> None:
        self.gateway.calls.subscribe(self._on_call_event)
        await super().start()      # forwarded webhooks (carriers/forwarding.py)
        numbers, _ = await self.gateway.store.list_numbers(1, 1_000_000, provider="exotel", with_secrets=True)
        for n in numbers:
            if unauthenticated_allowed(n):
                log.warning("ExoPhone accepts UNAUTHENTICATED Voicebot sockets and call_coming "
                            "(exotel_allow_unauthenticated)", extra={"carrier": "exotel", "number_id": n["id"]})

    def _on_call_event(self, kind: str, call: Call) -> None:
        """An Exotel call ended (or moved to another process that took its stream): its watchdog has nothing
        left to guard."""
        if kind not in ("call_ended", "call_released") or call.carrier != self.name or not call.carrier_sid:
            return
        state = self._calls.get(call.carrier_sid)
        if state is not None and state.watchdog is not None:
            state.watchdog.cancel()
            state.watchdog = None
        if state is not None and state.consultation is not None:     # the target's call ends with the caller's
            state.consultation.abandon()
        if kind == "call_released" and state is not None and state.call is call:
            self._calls.pop(call.carrier_sid, None)

    async def stop(self) -> None:
        self.gateway.calls.unsubscribe(self._on_call_event)
        for state in list(self._calls.values()):
            if state.watchdog is not None:
                state.watchdog.cancel()
            if not state.call.ended.is_set():
                await state.call.end(HangupSource.SYSTEM, "shutdown")
        self._calls.clear()
        await self.rest.close()

    # -- state --------------------------------------------------------------------------------------------------
    def _prune(self) -> None:
        now = time.monotonic()
        for sid, st in list(self._calls.items()):
            if st.call.ended.is_set():
                st.ended_at = st.ended_at or now
                if now - st.ended_at > self.state_ttl:
                    del self._calls[sid]

    def _remember(self, call_sid: str, call: Call, number: dict[str, Any] | None) -> ExotelCallState:
        self._prune()
        state = self._calls.get(call_sid)
        if state is None or state.call is not call:
            state = self._calls[call_sid] = ExotelCallState(call_sid, call, number)
        if call.carrier_sid != call_sid:
            call.set_carrier_sid(call_sid)
        return state

    def arm_watchdog(self, state: ExotelCallState, after: float, reason: str) -> None:
        """End a call that Exotel never follows up on, so no call stays 'live' forever."""
        if state.watchdog is not None:
            state.watchdog.cancel()

        def fire() -> None:
            state.watchdog = None
            call = state.call
            if call.ended.is_set():
                return
            if reason == "stream_never_started" and call.bus is not None:
                return
            call.log.warning("exotel call closed by watchdog", extra={"reason": reason})
            asyncio.ensure_future(call.end(HangupSource.SYSTEM, reason))

        state.watchdog = asyncio.get_running_loop().call_later(after, fire)

    async def _find_exophone(self, to: str, account_sid: str | None = None) -> dict[str, Any] | None:
        """The imported number Exotel is calling us about (E.164 first, then Exotel's national formats)."""
        store = self.gateway.store
        for candidate in {to_e164(to, "+91"), to_e164(to)}:
            if candidate.startswith("+"):
                n = await store.find_number(candidate, "exotel", with_secrets=True)
                if n is not None:
                    return n
        rows, _ = await store.list_numbers(1, 10_000, provider="exotel", with_secrets=True)
        matches = [r for r in rows if same_number(r["phone_number"], to)]
        if account_sid:
            matches = [r for r in matches if number_setting(r, "exotel_account_sid") in (None, account_sid)]
        return matches[0] if matches else None

    @staticmethod
    def _basic_ok(header: str, number: dict[str, Any]) -> bool:
        """`Authorization: Basic` with the ExoPhone's API key/token (constant time); False when malformed."""
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except ValueError:     # binascii.Error, non-ASCII text, UnicodeDecodeError
            return False
        key, token = (str(number_setting(number, k, "")) for k in ("exotel_api_key", "exotel_api_token"))
        return bool(key and token) & hmac.compare_digest(user.encode(), key.encode()) \
            & hmac.compare_digest(pw.encode(), token.encode())

    def _check_auth(self, request: web.Request, number: dict[str, Any]) -> None:
        """Basic auth on the Voicebot upgrade (Exotel sends the userinfo of wss://KEY:TOKEN@host as a header).
        Required unless the number opted out (`exotel_allow_unauthenticated`); a wrong header is always refused."""
        header = request.headers.get("Authorization", "")
        if not header:
            if unauthenticated_allowed(number):
                return
            log.warning("Exotel Voicebot socket without Basic auth refused", extra={
                "carrier": "exotel", "source_ip": request.remote, "number_id": number.get("id")})
            raise StreamClosed(CloseCode.BAD_AUTH, "Basic auth required: wss://API_KEY:API_TOKEN@host/exotel/media")
        if not self._basic_ok(header, number):
            log.warning("Exotel Voicebot socket with wrong Basic auth refused", extra={
                "carrier": "exotel", "source_ip": request.remote, "number_id": number.get("id")})
            raise StreamClosed(CloseCode.BAD_AUTH, "Basic auth does not match this ExoPhone's API key/token")

    def _passthru_ok(self, request: web.Request, number: dict[str, Any]) -> bool:
        """call_coming creates call rows, so it must prove it comes from the number's own flow: the `gw_token` of
        the URL the connection test shows, or Basic auth with the API key/token; or the number opted out."""
        if unauthenticated_allowed(number):
            return True
        token = request.query.get("gw_token", "")
        if token and hmac.compare_digest(token.encode(), passthru_token(number).encode()):
            return True
        return self._basic_ok(request.headers.get("Authorization", ""), number)

    async def claim_stream(self, stream: VoicebotStream, start: dict[str, Any], call_sid: str) -> ExotelCallState:
        """Find or create the call a `start` belongs to; refuse strangers."""
        account_sid = start.get("account_sid") if isinstance(start.get("account_sid"), str) else None
        to, frm = str(start.get("to") or ""), str(start.get("from") or "")
        if await self._ended_call_sid(call_sid):
            # an outbound call hung up while it rang (Exotel's v1 API cannot cancel it) that the callee answered
            # anyway: close at once so the flow moves on to the Passthru, which answers "hang up"
            raise StreamClosed(CloseCode.CALL_ENDED, "this call was already ended by the gateway")
        state = self._calls.get(call_sid)
        existing = state.call if state else self.gateway.calls.find_by_sid(call_sid)
        if existing is not None and existing.ended.is_set():
            existing = None
        if existing is None:
            existing = self._waiting_outbound(to, frm)
            state = self._calls.get(existing.carrier_sid or "") if existing is not None else None
        adopt = await self._adoptable(call_sid) if existing is None else None
        number = (state.number if state else None) or (existing.number if existing else None)
        if number is None and adopt is not None and adopt["phone_number_id"]:
            number = await self.gateway.store.get_number(adopt["phone_number_id"], with_secrets=True)
        if number is None:
            number = await self._find_exophone(to, account_sid)
        if number is None:
            raise StreamClosed(CloseCode.UNKNOWN_NUMBER, f"{to[:32]!r} is not an ExoPhone imported on this gateway")
        acct = number_setting(number, "exotel_account_sid")
        if account_sid and acct and account_sid != acct:
            raise StreamClosed(CloseCode.UNKNOWN_NUMBER, "account_sid does not own this ExoPhone")
        self._check_auth(stream.request, number)
        params = start.get("custom_parameters") if isinstance(start.get("custom_parameters"), dict) else {}
        fmt = stream.fmt
        if fmt is None:   # set from the start message before the stream is claimed
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, "start without a media format")
        meta = {"exotel_stream_sid": stream.stream_sid, "custom_parameters": params,
                "media_format": {"codec": fmt.codec, "sample_rate": fmt.sample_rate}}
        if existing is None and adopt is not None:   # checked against the row's ExoPhone above
            existing = await self.gateway.calls.adopt(adopt)
            if existing is None:
                raise StreamClosed(CloseCode.TRY_AGAIN, "the call moved to another gateway process")
        if existing is not None:
            if existing.bus is not None:
                raise StreamClosed(CloseCode.BAD_MESSAGE, "this call already has a stream")
            call = existing
            call.metadata.update(meta)
        else:
            try:
                call = await self.gateway.calls.create(
                    carrier=self.name, direction="inbound", from_number=to_e164(frm, number["phone_number"]),
                    to_number=number["phone_number"], number=number, carrier_sid=call_sid, metadata=meta)
            except CapacityError as e:
                raise StreamClosed(CloseCode.TRY_AGAIN, str(e)) from None
        state = self._remember(call_sid, call, number)
        if state.watchdog is not None:
            state.watchdog.cancel()
            state.watchdog = None
        state.stream = stream
        await call.record(extra={"exotel_stream_sid": stream.stream_sid, "exotel_account_sid": account_sid})
        return state

    async def _adoptable(self, call_sid: str) -> dict[str, Any] | None:
        """In a cluster, the open call-log row of a call another process announced (call_coming, dispatch) whose
        stream reached this one: it is adopted rather than opened twice (docs/deploy.md)."""
        if not self.gateway.control.clustered or not call_sid:
            return None
        row = await self.gateway.store.find_call(carrier_sid=call_sid)
        if row is None or row["channel_type"] != self.name or row["ended_at"] is not None or \
                row["owner"] == self.gateway.settings.proc_id:
            return None
        return row

    async def _ended_call_sid(self, call_sid: str) -> bool:
        """Does `call_sid` name a call the gateway has already ended? (In memory, else in the call log, so a
        restart in between changes nothing.)"""
        state = self._calls.get(call_sid)
        if state is not None:
            return state.call.ended.is_set()
        row = await self.gateway.store.find_call(carrier_sid=call_sid)
        return row is not None and row.get("channel_type") == self.name and bool(row.get("ended_at"))

    def _waiting_outbound(self, to: str, frm: str) -> Call | None:
        """A dispatched call still waiting for its stream, matched on its two numbers: in case the flow's stream
        reports a leg sid other than the one Calls/connect returned (Exotel's docs do not promise they match)."""
        for st in self._calls.values():
            c = st.call
            if c.direction != "outbound" or c.bus is not None or c.ended.is_set():
                continue
            pair = (c.from_number, c.to_number)
            if (same_number(pair[0], to) and same_number(pair[1], frm)) or \
                    (same_number(pair[0], frm) and same_number(pair[1], to)):
                return c
        return None

    def holds_sid(self, call_sid: str) -> bool:
        """Whether CallSid `call_sid` is a call of this process (announced, dispatched or live)."""
        return call_sid in self._calls or self.gateway.calls.find_by_sid(call_sid) is not None

    def _state_for(self, call_sid: str) -> ExotelCallState | None:
        state = self._calls.get(call_sid)
        if state is None and call_sid:
            call = self.gateway.calls.find_by_sid(call_sid)
            if call is not None and call.carrier == self.name:
                state = self._remember(call_sid, call, call.number)
        return state

    # -- websocket ----------------------------------------------------------------------------------------------
    async def media(self, request: web.Request) -> web.StreamResponse:
        ws = DirectWebSocket(timeout=2.0, heartbeat=None, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        await VoicebotStream(self, ws, request).run()
        return ws

    # -- HTTP applets -------------------------------------------------------------------------------------------
    # Exotel posts them to whichever process its balancer picks; the call's own process answers them
    # (`_at_owner`, carriers/forwarding.py). Exotel does not sign them: each is taken on its CallSid / call_id.
    async def should_end_the_call(self, request: web.Request) -> web.Response:
        """Passthru after the Voicebot: 302 (second branch → Connect) for a transfer, 200 (→ Hangup) otherwise."""
        q = dict(request.query)
        return await self._at_owner("passthru", q, self._state_for(q.get("CallSid", "").strip()) is not None)

    async def _passthru(self, q: dict[str, str]) -> web.Response:
        call_sid = q.get("CallSid", "").strip()
        omni = q.get("omni_status", "").strip()
        try:
            if omni:
                await self._omni_status(call_sid, omni, q)
                return web.Response(status=200, text="ok")
            state = self._state_for(call_sid)
            if state is None:
                log.warning("passthru for an unknown CallSid: hanging up", extra={"carrier": "exotel",
                                                                                  "call_sid": call_sid[:64]})
                return web.Response(status=200, text="hangup")
            stream = passthru_stream_info(q)
            call = state.call
            extra = {"exotel_passthru": {k: q.get(k) for k in ("CallStatus", "Direction", "DialCallDuration",
                                                                 "CallType", "CurrentTime") if q.get(k)}}
            if stream:
                extra["exotel_stream"] = {k: stream[k][:200] for k in stream}
            fields: dict[str, Any] = {"extra": extra}
            if stream.get("RecordingUrl") or q.get("RecordingUrl"):
                fields["recording_url"] = stream.get("RecordingUrl") or q.get("RecordingUrl")
            await call.record(**fields)
            if state.transfer is not None:
                await call.emit("call:transfer_passthru", {"answer": 302})
                return web.Response(status=302, text="transfer")
            if not call.ended.is_set() and call.bus is None:
                # announced but the Voicebot never reached us (stream failed at Exotel's side)
                await call.end(HangupSource.CARRIER, "stream_never_started")
            elif not call.ended.is_set() and state.stream is None:
                await call.end(HangupSource.CARRIER, "stream_closed")
            return web.Response(status=200, text="hangup")
        except Exception:
            log.exception("passthru handling failed; answering hangup", extra={"carrier": "exotel"})
            return web.Response(status=200, text="hangup")

    async def _omni_status(self, call_sid: str, omni: str, q: Any) -> None:
        """A Connect branch ended (`call_end`, `nobody_ans`, `didnt_dial_anyone`): record it and close the log."""
        if omni not in OMNI_STATUSES:
            log.warning("unknown omni_status recorded as is", extra={"carrier": "exotel", "omni_status": omni[:40]})
        reason = omni[:64]
        state = self._state_for(call_sid)
        dialed = to_e164(q.get("DialWhomNumber", ""), "+91") or None
        outcome = {"call_end": "completed", "nobody_ans": "no-answer", "didnt_dial_anyone": "failed"}.get(omni, omni)
        extra = {"exotel_omni_status": reason,
                 "exotel_dial_call_duration": q.get("DialCallDuration"), "exotel_call_type": q.get("CallType")}
        if state is not None:
            call = state.call
            if state.watchdog is not None:
                state.watchdog.cancel()
                state.watchdog = None
            if state.transfer is not None and call.transfer_result is None:
                target = dialed if omni == "call_end" and dialed else (
                    state.transfer.number if omni != "didnt_dial_anyone" else None)
                await call.transfer_finished(TransferResult(target, outcome))
            await call.record(extra=extra)
            if not call.ended.is_set():
                source = HangupSource.USER if omni == "call_end" else HangupSource.CARRIER
                await call.end(source, reason)
                return
            await call.record(hangup_reason=reason)
            return
        row = await self.gateway.store.find_call(carrier_sid=call_sid) if call_sid else None
        if row is None or row.get("channel_type") != self.name:
            log.warning("omni_status for an unknown CallSid", extra={"carrier": "exotel", "call_sid": call_sid[:64]})
            return
        fields: dict[str, Any] = {"hangup_reason": reason, "extra": extra}
        if row.get("is_call_transfer") and not row.get("transfer_outcome"):
            fields["transfer_outcome"] = outcome
        if not row.get("ended_at"):
            from gateway.call import utcnow
            fields["ended_at"] = utcnow()
        await self.gateway.store.update_call(row["id"], **fields)

    async def call_transfer(self, request: web.Request) -> web.Response:
        """Connect applet "dial whom" dynamic URL: the engine's transfer target, then its backups, in order."""
        q = dict(request.query)
        return await self._at_owner("connect", q, self._state_for(q.get("CallSid", "").strip()) is not None)

    async def _connect(self, q: dict[str, str]) -> web.Response:
        call_sid = q.get("CallSid", "").strip()
        state = self._state_for(call_sid)
        if state is None or state.transfer is None:
            log.warning("connect URL for a call with no transfer: dialling nobody",
                        extra={"carrier": "exotel", "call_sid": call_sid[:64]})
            return web.json_response(connect_applet_response([], None))
        call, req = state.call, state.transfer
        numbers = [req.number, *[n for n in req.backup_numbers if n != req.number]]
        opts = ((call.agent or {}).get("settings") or {}).get("transfer") or {}
        caller_id = number_setting(state.number, "exotel_exophone") or (state.number or {}).get("phone_number")
        body = connect_applet_response(numbers, caller_id, opts)
        await call.record(is_call_transfer=True, transfer_target=req.number)
        await call.emit("call:transfer_dialing", {"numbers": numbers})
        return web.json_response(body)

    async def call_coming(self, request: web.Request) -> web.Response:
        """Passthru at the start of the flow: open the call log before the Voicebot connects. 200 (the flow goes on
        to the Voicebot), or 302 when this process takes no new call (full, draining, or the number's channels all
        busy): the Passthru is a binary choice, 200 → the applet on its first branch, 302 → the one on its second
        (https://developer.exotel.com/docs/voice-v1/applets/passthru), and Exotel has no reject response, so the
        second branch is the flow's own fallback (another node's Voicebot, a human line, a busy greeting), as a
        SIP 503 sends a trunk to its next route. 403 without the token."""
        q = request.query
        call_sid = q.get("CallSid", "").strip()
        frm = q.get("CallFrom") or q.get("From") or ""
        to = q.get("CallTo") or q.get("To") or ""
        if not call_sid or not _SID.match(call_sid):
            return web.Response(status=200, text="ok")
        try:
            state = self._state_for(call_sid)
            timings = {k: q.get(k) for k in ("Created", "StartTime", "CurrentTime", "Direction") if q.get(k)}
            if state is None and await self._ended_call_sid(call_sid):
                return web.Response(status=200, text="ok")     # an ended call's flow: never a new call
            if state is None:
                waiting = sum(1 for st in self._calls.values()
                              if st.call.direction == "inbound" and st.call.bus is None and st.call.is_active)
                if waiting >= self.max_announced:
                    log.warning("too many announced calls without a stream; not opening another",
                                extra={"carrier": "exotel", "waiting": waiting})
                    return web.Response(status=200, text="ok")
                number = await self._find_exophone(to)
                if number is None:
                    log.warning("call_coming for a number not imported here", extra={"carrier": "exotel",
                                                                                     "to": to[:32]})
                    return web.Response(status=200, text="ok")
                if not self._passthru_ok(request, number):
                    log.warning("call_coming without its gw_token refused", extra={
                        "carrier": "exotel", "source_ip": request.remote, "number_id": number.get("id")})
                    return web.Response(status=403, text="forbidden")
                call = await self.gateway.calls.create(
                    carrier=self.name, direction="inbound", from_number=to_e164(frm, number["phone_number"]),
                    to_number=number["phone_number"], number=number, carrier_sid=call_sid, status="ringing")
                state = self._remember(call_sid, call, number)
                self.arm_watchdog(state, self.attach_timeout, "stream_never_started")
            await state.call.record(extra={"exotel_call_coming": timings})
        except CapacityError as e:
            log.warning("call_coming refused (302: the flow's second branch): %s", e, extra={"carrier": "exotel"})
            return web.Response(status=302, text="busy")
        except Exception:
            log.exception("call_coming handling failed", extra={"carrier": "exotel"})
        return web.Response(status=200, text="ok")

    async def status_callback(self, request: web.Request) -> web.Response:
        """StatusCallback of an outbound call (POST form: CallSid, Status, RecordingUrl, DateUpdated, …)."""
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            try:
                params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
            except Exception:
                return web.Response(status=400, text="unreadable form body")
        call_sid = (params.get("CallSid") or "").strip()
        if params.get("consult") == "1":
            return await self._at_owner("consult_status", params, call_sid in self.consults.by_sid)
        here = self.gateway.calls.get(params.get("call_id", "")) is not None or self._state_for(call_sid) is not None
        return await self._at_owner("status", params, here)

    async def _status(self, params: dict[str, str]) -> web.Response:
        call_sid = (params.get("CallSid") or "").strip()
        status = (params.get("Status") or params.get("CallStatus") or "").strip().lower()
        call_id = params.get("call_id", "")
        try:
            call = self.gateway.calls.get(call_id) if call_id else None
            known = self._calls.get(call_sid)
            if call is not None and call.carrier_sid and call_sid and call.carrier_sid != call_sid and (
                    known is None or known.call is not call):
                log.warning("status callback CallSid does not match the call", extra={"carrier": "exotel"})
                return web.Response(status=200, text="ignored")
            state = self._state_for(call_sid) if call_sid else None
            if call is None and state is not None:
                call = state.call
            extra = {"exotel_status": {k: params.get(k) for k in ("Status", "EventType", "DateUpdated", "StartTime",
                                                                   "EndTime", "ConversationDuration",
                                                                   "DialCallStatus") if params.get(k)}}
            fields: dict[str, Any] = {"extra": extra}
            if params.get("RecordingUrl"):
                fields["recording_url"] = params["RecordingUrl"]
            if call is None:
                row = await self.gateway.store.find_call(carrier_sid=call_sid) if call_sid else None
                if row is None or row.get("channel_type") != self.name:
                    log.warning("status callback for an unknown call", extra={"carrier": "exotel"})
                    return web.Response(status=200, text="unknown")
                await self.gateway.store.update_call(row["id"], **fields)
                return web.Response(status=200, text="ok")
            if call_sid and not call.carrier_sid:
                call.set_carrier_sid(call_sid)
            if status == "ringing" and call.bus is None:
                fields["call_status"] = "ringing"
            await call.record(**fields)
            await call.emit("exotel:status", {"status": status})
            if status in TERMINAL_STATUSES and not call.ended.is_set():
                if state is not None and state.transfer is not None and call.transfer_result is None:
                    dial = (params.get("DialCallStatus") or "").lower() or status
                    await call.transfer_finished(TransferResult(state.transfer.number, dial))
                if call.bus is None:
                    await call.end(HangupSource.CARRIER, status, status=status)
                else:
                    await call.end(HangupSource.USER if status == "completed" else HangupSource.CARRIER, status)
        except Exception:
            log.exception("status callback handling failed", extra={"carrier": "exotel"})
        return web.Response(status=200, text="ok")

    async def _at_owner(self, kind: str, params: dict[str, str], here: bool) -> web.Response:
        """Answer a callback here when this process holds its call (`here`), else ask the process that does (by
        `call_id`, else the CallSid in the call log); when no other live process holds it, answer it here too
        (the call log is updated, or the flow is told to hang up)."""
        if not here:
            call_id = params.get("call_id", "") or await self.call_id_of_sid((params.get("CallSid") or "").strip())
            fields = forwarded_fields(params)
            answer = await self.forward(call_id, {"kind": kind, "params": fields})
            if answer is not None:
                return web.Response(status=int(answer.get("code") or 200), text=str(answer.get("text") or ""),
                                    content_type=str(answer.get("content_type") or "text/plain"))
        return await self._callback(kind, params)

    async def _callback(self, kind: str, params: dict[str, str]) -> web.Response:
        if kind == "passthru":
            return await self._passthru(params)
        if kind == "connect":
            return await self._connect(params)
        if kind == "status":
            return await self._status(params)
        if kind == "consult_status":
            return await self.consults.status(params)
        raise UnknownWebhook("Exotel", kind)

    def forwarded_target(self, call_id: str) -> Call | None:
        call = self.gateway.calls.get(call_id)
        return call if call is not None and call.carrier == self.name else None

    async def on_forwarded(self, target: Call, args: dict[str, Any]) -> dict[str, Any]:
        """A callback another process received about a call held here: its answer (code, text) goes back."""
        resp = await self._callback(str(args.get("kind") or ""), str_dict(args.get("params")))
        return {"code": resp.status, "text": resp.text or "", "content_type": resp.content_type}

    # -- REST ---------------------------------------------------------------------------------------------------
    async def _api(self, method: str, creds: dict[str, Any], path: str, *, data: Any = None,
                   params: dict[str, Any] | None = None, importing: bool = False) -> dict[str, Any]:
        """One Exotel REST call with Basic auth, bounded in time; failures map as for every carrier
        (gateway/carrier_rest.py), with Exotel's `RestException.Message` quoted."""
        subdomain = normalize_subdomain(creds.get("exotel_subdomain"))
        base = self.base_url or f"https://{subdomain}"
        auth = "Basic " + base64.b64encode(
            f"{creds.get('exotel_api_key') or ''}:{creds.get('exotel_api_token') or ''}".encode()).decode("ascii")
        _status, body = await self.rest.request(
            method, base + path, data=data, params=params, importing=importing, field="exotel_api_token",
            credentials="API key/token", headers={"Accept": "application/json", "Authorization": auth})
        if not isinstance(body, dict):
            raise CarrierError("Exotel answered with something that is not a JSON object", 502)
        return body

    async def _find_on_account(self, creds: dict[str, Any], phone: str, importing: bool = True
                               ) -> dict[str, Any] | None:
        """Page through the account's ExoPhones (GET /v2_beta/Accounts/{sid}/IncomingPhoneNumbers)."""
        sid = creds["exotel_account_sid"]
        path = f"/v2_beta/Accounts/{quote(sid, safe='')}/IncomingPhoneNumbers"
        for page in range(50):
            body = await self._api("GET", creds, path, params={"Page": page, "PageSize": 100}, importing=importing)
            items = body.get("incoming_phone_numbers") or []
            for item in items:
                if isinstance(item, dict) and same_number(str(item.get("phone_number") or ""), phone):
                    return item
            if not body.get("next_page_uri") or not items:
                return None
        return None

    def _creds(self, fields: dict[str, Any]) -> dict[str, Any]:
        creds = {k: number_setting(fields, k) for k in ("exotel_api_key", "exotel_api_token", "exotel_subdomain",
                                                    "exotel_account_sid", "exotel_app_id")}
        missing = [k for k in ("exotel_api_key", "exotel_api_token", "exotel_subdomain", "exotel_account_sid")
                   if not creds.get(k)]
        if missing:
            raise CarrierError(f"missing Exotel settings: {', '.join(missing)}", 400)
        sid = str(creds["exotel_account_sid"]).strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sid):
            raise CarrierError(f"exotel_account_sid: {sid[:40]!r} is not an Exotel account SID", 400)
        creds["exotel_account_sid"] = sid
        creds["exotel_subdomain"] = normalize_subdomain(creds["exotel_subdomain"])
        app_id = creds.get("exotel_app_id")
        if app_id not in (None, "") and not re.fullmatch(r"\d{1,12}", str(app_id).strip()):
            raise CarrierError(f"exotel_app_id: {str(app_id)[:20]!r} is not an App Bazaar flow id (digits)", 400)
        return creds

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        creds = self._creds(fields)
        phone = fields[self.number_field]
        item = await self._find_on_account(creds, phone)
        if item is None:
            raise CarrierError(f"ExoPhone {phone} not found on account {creds['exotel_account_sid']}", 400)
        out = dict(fields)
        if unauthenticated_allowed(fields):
            log.warning("ExoPhone imported WITHOUT callback authentication (exotel_allow_unauthenticated): only safe "
                        "behind Exotel's IP allow-list", extra={"carrier": "exotel", "number": phone})
        out["exotel_subdomain"] = creds["exotel_subdomain"]
        out["exotel_account_sid"] = creds["exotel_account_sid"]
        out["exotel_exophone"] = str(item.get("phone_number") or phone)
        if item.get("sid"):
            out["exotel_exophone_sid"] = str(item["sid"])
        return out

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []

        def step(name: str, ok: bool, detail: str) -> None:
            steps.append({"step": name, "ok": ok, "detail": detail})

        try:
            creds = self._creds(fields)
            step("settings", True, f"API host {creds['exotel_subdomain']}")
            item = await self._find_on_account(creds, fields[self.number_field])
            step("credentials", True, "Exotel accepted the API key/token")
            if item is None:
                step("exophone", False, f"{fields[self.number_field]} not found on account "
                                        f"{creds['exotel_account_sid']}")
            else:
                step("exophone", True, f"found as {item.get('phone_number')}")
            step("outbound_flow", bool(creds.get("exotel_app_id")),
                 f"flow {creds['exotel_app_id']}" if creds.get("exotel_app_id")
                 else "no exotel_app_id: inbound only")
        except CarrierError as e:
            step("credentials" if "key/token" in e.message else "exotel_api", False, e.message)
        ok = all(s["ok"] for s in steps if s["step"] != "outbound_flow")
        base, ws_base = self.gateway.settings.public_base, self.gateway.settings.public_ws_base
        return {"ok": ok, "carrier": self.name, "steps": steps,
                "endpoints": {"voicebot": ws_base.replace("://", "://API_KEY:API_TOKEN@", 1) + "/exotel/media",
                              "call_coming": f"{base}/exotel/call_coming?gw_token={passthru_token(fields)}",
                              "passthru": self.gateway.settings.public_base + "/exotel/should_end_the_call",
                              "connect": self.gateway.settings.public_base + "/exotel/call_transfer"}}

    def check_agent_settings(self, settings: dict[str, Any]) -> None:
        if "exotel" in settings:
            call_options(settings["exotel"])

    async def dispatch(self, call: Call, number: dict[str, Any], to_number: str) -> None:
        """Outbound: Exotel calls `to_number` first, then runs the number's App Bazaar flow (our Voicebot)."""
        creds = self._creds(number)
        app_id = creds.get("exotel_app_id")
        if not app_id:
            raise CarrierError("this ExoPhone has no exotel_app_id: set the App Bazaar flow id (the flow with the "
                               "Voicebot applet) to place outbound calls", 400)
        sid = creds["exotel_account_sid"]
        try:
            opts = call_options(((call.agent or {}).get("settings") or {}).get("exotel"))
        except CarrierError as e:    # an agent saved before its settings were checked
            raise CarrierError(f"agent {(call.agent or {}).get('id')}: {e.message}; fix the agent's settings", 422,
                               "agent_id") from None
        caller_id = number_setting(number, "exotel_exophone") or number["phone_number"]
        data = {
            "From": to_number,
            "CallerId": caller_id,
            "Url": FLOW_URL.format(sid=sid, app_id=app_id),
            "CallType": "trans",
            "TimeLimit": str(opts["time_limit"]),
            "TimeOut": str(opts["ring_timeout"]),
            "StatusCallback": f"{self.gateway.settings.public_base}/exotel/status_callback?call_id={call.id}",
            "StatusCallbackEvents[0]": "terminal",
            "StatusCallbackEvents[1]": "answered",
            "CustomField": call.id,
        }
        body = await self._api("POST", creds, f"/v1/Accounts/{quote(sid, safe='')}/Calls/connect.json", data=data)
        exo: dict[str, Any] = body["Call"] if isinstance(body.get("Call"), dict) else {}
        call_sid = str(exo.get("Sid") or "")
        if not _SID.match(call_sid):
            raise CarrierError("Exotel accepted the call but returned no Call Sid", 502)
        state = self._remember(call_sid, call, number)
        await call.record(carrier_sid=call_sid, call_status="initiated",
                          extra={"exotel_dispatch": {"status": exo.get("Status"), "flow": data["Url"]}})
        self.arm_watchdog(state, self.attach_timeout, "stream_never_started")
        call.log.info("exotel outbound call placed", extra={"call_sid": call_sid})
