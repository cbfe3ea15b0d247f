"""Twilio bidirectional Media Streams: one websocket session per `<Connect><Stream>`.

Wire format (https://www.twilio.com/docs/voice/media-streams/websocket-messages): Twilio sends JSON text messages
`connected`, `start` {streamSid, start:{accountSid, callSid, customParameters, mediaFormat}}, `media`
{media:{track, chunk, timestamp, payload}} with base64 μ-law 8 kHz, `dtmf` {dtmf:{track, digit}}, `mark`
{mark:{name}} (echoed once the audio sent before it has played, or dropped by a `clear`) and `stop`. We send
`media` {streamSid, media:{payload}} in 160-byte (20 ms) μ-law payloads, `mark` and `clear`.

The reader (this socket) never awaits the engine: audio and events go into the call's bus with non-blocking puts.
A separate sender task drains `call.next_outbound()` and is the only writer of media, so hangup and transfer
requests queued behind engine audio are carried out in order.
"""
from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from gateway import mediabatch
from gateway.frames import AudioFrame, BusItem, Clear, Dtmf, HangupSource, Mark, SendDtmf
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16
from voicecodecs.dtmf import dtmf_pcm

from .mediasocket import MarkedPlayout, StreamClosed, decode_text, start_object
from .streamrelay import RelayStream, relay
from .wsdirect import TEXT_FIN, StopReading, frame_header, read_messages, send_text

if TYPE_CHECKING:
    from gateway.call import Call

    from .twilio import TwilioLeg

log = logging.getLogger("carriers.twilio")

RATE = 8000
FRAME_S = 0.020
INTERNAL_MARK = "gw-drain-"
_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DIGITS = set("0123456789*#ABCD")


class CloseCode(IntEnum):
    """Websocket close codes this gateway uses on /twilio/media (private range 4000-4999, RFC 6455 §7.4.2)."""

    NORMAL = 1000            # the call ended
    START_TIMEOUT = 4001     # no `start` message within the start timeout
    BAD_MESSAGE = 4002       # not JSON, not an object, or a required field is missing / malformed
    UNKNOWN_EVENT = 4003     # an event name the Media Streams protocol does not define
    BINARY_FRAME = 4004      # Media Streams is JSON text only
    UNKNOWN_CALL = 4005      # customParameters.call_id names no live call, or it already has a stream
    BAD_SIGNATURE = 4006     # X-Twilio-Signature on the upgrade request does not match
    BAD_MEDIA_FORMAT = 4007  # mediaFormat is not audio/x-mulaw 8000 Hz mono


class _Wake:
    """Queued behind the engine's output to stop this stream's sender without cancelling it mid-action (a hangup or
    transfer it is carrying out must finish even when the socket is already gone)."""

    __slots__ = ("stream",)

    def __init__(self, stream: MediaStream) -> None:
        self.stream = stream


BINARY_REASON = "binary frames are not part of Media Streams"


class MediaStream(MarkedPlayout):
    """One Media Streams websocket: protocol state, the sender task and the playout clock.

    Telnyx and Plivo speak close cousins of this protocol (JSON text, base64 μ-law 8 kHz `media`, `dtmf`, marks or
    checkpoints, a clear, `stop`): their streams subclass this one and change `_on_start` (the start message and the
    claim of the call), `_on_other` (their own events), `_suffix` and the mark / clear wire format."""

    internal_mark = INTERNAL_MARK
    close_codes = CloseCode
    binary_reason = BINARY_REASON
    #: the socket's audio: sample rate and codec (μ-law 8 kHz here; Plivo may choose 16-bit linear PCM)
    rate = RATE
    decode: Callable[[bytes], bytes] = staticmethod(ulaw_to_pcm16)
    encode: Callable[[bytes], bytes] = staticmethod(pcm16_to_ulaw)
    #: what closes one outgoing media message after its base64 payload (`_prefix` is set once the stream is known)
    _suffix = '"}}'

    # carrier: a TwilioCarrier, or a RestCallCarrier (Telnyx, Plivo: their streams claim calls by their own keys)
    def __init__(self, carrier: Any, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__(ws)   # marks, drain waiters, playout_end (the loop time Twilio will have played what we sent)
        self.carrier = carrier
        self.request = request   # the upgrade: its X-Twilio-Signature is checked once `start` names the call
        self.stream_sid: str | None = None
        self.call: Call | None = None
        self.leg: TwilioLeg | None = None
        self.stopped = False
        self._sender: asyncio.Task[None] | None = None
        self._prefix = ""
        #: base64 payload length → (the `_prefix` it was built with, frame header + message start, message end)
        self._heads: dict[int, tuple[str, bytes, bytes]] = {}
        self.frames_sent = 0
        self.direct_out = self._send_now if self.direct_ws is not None else None   # engine audio handed over
        #: a socket read in `data_received` passes audio and digits on at the end of the loop iteration, with the
        #: other streams' (gateway/mediabatch.py: their resampling batched)
        self._batch = mediabatch.for_loop(asyncio.get_running_loop()) if self.direct_ws is not None else None

    # -- reader -------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the socket until it closes; every protocol error becomes a close code, never an exception."""
        watcher: asyncio.Task[None] | None = None
        try:
            await self._await_start(self.carrier.start_timeout)
            watcher = asyncio.create_task(self._close_when_call_ends(), name=f"twilio-watch-{self.stream_sid}")
            self._sender = asyncio.create_task(self._send_loop(), name=f"twilio-send-{self.stream_sid}")
            await self._read_loop()
        except RelayStream as r:     # another process holds the call: carry the socket there
            await relay(self.ws, r, [json.dumps(self.start_message)], self.carrier.start_timeout)
        except StreamClosed as e:
            log.warning("twilio media stream closed: %s", e.reason,
                        extra={"carrier": self.carrier.name, "close_code": int(e.code), "stream_sid": self.stream_sid,
                               "call_id": self.call.id if self.call else None})
            if not self.ws.closed:
                await self.ws.close(code=int(e.code), message=e.reason[:120].encode())
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._finish()

    async def _on_start(self, m: dict[str, Any]) -> None:
        start = start_object(m, CloseCode)
        sid = m.get("streamSid") or start.get("streamSid")
        if not isinstance(sid, str) or not _SID.match(sid):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "start without a valid streamSid / start object")
        fmt = start.get("mediaFormat") or {}
        if fmt and (fmt.get("encoding") != "audio/x-mulaw" or int(fmt.get("sampleRate") or 0) != RATE
                    or int(fmt.get("channels") or 1) != 1):
            raise StreamClosed(CloseCode.BAD_MEDIA_FORMAT, f"unsupported mediaFormat {fmt}")
        params = start.get("customParameters") or {}
        call_id = params.get("call_id") if isinstance(params, dict) else None
        self.stream_sid = sid
        self._prefix = '{"event":"media","streamSid":"%s","media":{"payload":"' % sid
        call, leg = await self.carrier.claim_stream(self, call_id, start.get("callSid"), start.get("accountSid"))
        self.call, self.leg = call, leg

    async def _read_loop(self) -> None:
        """Read until `stop` or the socket closes; messages are handled where they are parsed
        (carriers/wsdirect.py: no task switch per media message)."""
        await read_messages(self.ws, self._on_text, self._on_binary)

    def _on_text(self, text: str) -> None:
        m = decode_text(text, CloseCode)
        if not self._on_message(m):
            raise StopReading

    def _on_binary(self, data: bytes) -> None:
        raise StreamClosed(CloseCode.BINARY_FRAME, BINARY_REASON)

    def _on_message(self, m: dict[str, Any]) -> bool:
        """One Media Streams message; False once the stream is over (`stop`)."""
        event = m["event"]
        if event == "media":
            media: Any = m.get("media")   # anything but a dict with a payload is a protocol error below
            try:
                if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                    return True
                # strict_mode: what b64decode(validate=True) checks, in C, without its regex
                pcm = self.decode(binascii.a2b_base64(media["payload"], strict_mode=True))
            except (AttributeError, KeyError, TypeError, ValueError):   # binascii.Error, non-ASCII text
                raise StreamClosed(CloseCode.BAD_MESSAGE, "media without a base64 payload") from None
            # to the call, or to the port that replaced it (hold, bridge: mediasocket.py)
            batch = self._batch
            if batch is not None:
                batch.feed_audio(self, pcm)
            else:
                self.inlet.feed_audio(pcm)
        elif event == "mark":
            self._on_mark(m)
        elif event == "dtmf":
            digit = str((m.get("dtmf") or {}).get("digit", ""))
            if digit.upper() in _DIGITS and len(digit) == 1:
                if self._batch is not None:
                    self._batch.feed_event(self, Dtmf(digit.upper()))
                else:
                    self.inlet.feed_event(Dtmf(digit.upper()))
            else:
                log.warning("ignored malformed dtmf message",
                            extra={"carrier": self.carrier.name, "call_id": self.live_call.id})
        elif event == "stop":
            self.stopped = True
            return False
        else:
            self._on_other(event, m)
        return True

    def batch_failed(self, error: Exception) -> None:
        """Delivering audio or a digit (gateway/mediabatch.py) raised: the reader ends the stream with it."""
        ws = self.direct_ws
        if ws is None or not ws.handler_failed(error):
            log.error("media delivery failed after the reader stopped", exc_info=error,
                      extra={"carrier": self.carrier.name, "stream_sid": self.stream_sid})

    def _on_other(self, event: str, m: dict[str, Any]) -> None:
        """An event the common loop does not handle: the carrier's own, or a protocol error."""
        if event in ("connected", "start"):
            raise StreamClosed(CloseCode.BAD_MESSAGE, f"duplicate {event}")
        raise StreamClosed(CloseCode.UNKNOWN_EVENT, f"unknown event {event[:40]!r}")

    def _on_mark(self, m: dict[str, Any]) -> None:
        name = (m.get("mark") or {}).get("name")
        if not isinstance(name, str):
            raise StreamClosed(CloseCode.BAD_MESSAGE, "mark without a name")
        if not self._mark_played(name):
            log.debug("echo of a mark we did not send", extra={"carrier": self.carrier.name, "mark": name})

    async def _finish(self) -> None:
        self._release_drain_waiters()
        sender = self._sender
        if sender is not None and not sender.done():
            if self.port is not None:
                self.port.wake()      # a sender on a hold or bridge port
            try:
                bus = self.live_call.bus
                if bus is not None:   # the sender runs only on an attached call
                    bus.outbound.put_nowait(cast(BusItem, _Wake(self)))   # a sentinel only our sender reads
            except asyncio.QueueFull:
                pass    # the sender is busy, not waiting: it sees the closed socket on its next send
            done, _ = await asyncio.wait({sender}, timeout=15)
            if not done:
                sender.cancel()
        if not self.ws.closed:
            await self.ws.close(code=CloseCode.NORMAL, message=b"stream over")
        if self.leg is not None:
            await self.leg.stream_gone(self)

    # -- sender -------------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        call = self.live_call
        try:
            while not self.ws.closed:
                source, item = await self._take()
                if isinstance(item, _Wake):
                    if item.stream is self:
                        return
                    continue
                if self.ws.closed:
                    return
                if not self._still_ours(source, item):
                    continue
                if isinstance(item, AudioFrame):
                    await self.send_audio(item.pcm)
                elif isinstance(item, Mark):
                    await self.send_engine_mark(item.name)
                elif isinstance(item, Clear):
                    await self.clear()
                elif isinstance(item, SendDtmf):
                    # Media Streams has no message for digits and a REST <Play digits> would end the stream:
                    # play them in-band (Q.23 tone pairs) like any other engine audio
                    pcm, frame = dtmf_pcm(item.digits, self.rate), self.rate // 50 * 2
                    for i in range(0, len(pcm), frame):
                        await self.send_audio(pcm[i:i + frame].ljust(frame, b"\x00"))
        except ConnectionError:
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("twilio media sender failed", extra={"carrier": self.carrier.name, "call_id": call.id})
            if not self.ws.closed:
                await self.ws.close(code=1011, message=b"sender failed")

    def _media_text(self, pcm: bytes) -> str:
        """One 20 ms frame of PCM16 → one `media` message (8 kHz μ-law: a 160-byte payload)."""
        return self._prefix + binascii.b2a_base64(self.encode(pcm), newline=False).decode("ascii") + self._suffix

    async def send_audio(self, pcm: bytes) -> None:
        await send_text(self.ws, self._media_text(pcm))
        self._played(len(pcm) / 2 / self.rate)
        self.frames_sent += 1

    def _media_frame(self, pcm: bytes) -> bytes:
        """`_media_text(pcm)` as one whole websocket text frame, header included, built as bytes (no text round
        trip per frame: the header and message start of a payload length are built once, `_frame_head`)."""
        b64 = binascii.b2a_base64(self.encode(pcm), newline=False)
        head = self._heads.get(len(b64))
        if head is None or head[0] is not self._prefix:
            head = self._frame_head(len(b64))
        return head[1] + b64 + head[2]

    def _frame_head(self, n: int) -> tuple[str, bytes, bytes]:
        """For a base64 payload of `n` bytes: the prefix it was built from, the frame header + message start, and
        the message end (`_media_frame`)."""
        start, end = self._prefix.encode(), self._suffix.encode()
        head = self._heads[n] = (self._prefix, frame_header(TEXT_FIN, len(start) + n + len(end)) + start, end)
        return head

    def _send_now(self, frame: AudioFrame) -> bool:
        """An engine frame handed over while the sender waits for the call's next item (`Call.next_outbound`'s
        `direct`): written now, or False (the socket no longer carries the call, is closing, or its peer reads
        slowly) and the frame is queued for the sender instead."""
        ws = self.direct_ws
        pcm = frame.pcm
        if ws is None or self.port is not None or not ws.write_frame_nowait(self._media_frame(pcm)):
            return False
        now, end = self._now(), self.playout_end     # (`_played`, inline: once per frame)
        self.playout_end = (end if end > now else now) + len(pcm) / 2 / self.rate
        self.frames_sent += 1
        return True

    # -- wire format of marks and clear (the bookkeeping, `clear()` and `drain()` are MarkedPlayout's) -------------
    async def _send_mark(self, name: str) -> None:
        await self._send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _send_clear(self) -> None:
        """Barge-in: Twilio drops its buffer."""
        await self._send_json({"event": "clear", "streamSid": self.stream_sid})

    def end_source(self) -> tuple[HangupSource, str]:
        """Who ended the call when this stream went away without anyone asking."""
        return (HangupSource.USER, "caller_hangup") if self.stopped else (HangupSource.CARRIER, "stream_closed")
