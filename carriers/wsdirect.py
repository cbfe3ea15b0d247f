"""A media websocket without a task switch per message: messages handled where they are parsed, frames written
straight to the transport. Every carrier's media socket (Twilio, SignalWire, Telnyx, Plivo: JSON text; Exotel:
JSON text; Vonage: binary L16 audio and JSON text) is served through this one mechanism; each carrier supplies
only its wire format (the handlers and the text or bytes it writes).

aiohttp's `WebSocketResponse` parses frames in the connection's `data_received` and queues every message for a
reader task, which wakes once per message (a future, a task step, `receive()`'s bookkeeping); writes go through
the async `send_str` / `send_bytes`. At 50 media messages a second per call that plumbing cost more than the media
work itself (BENCHMARKS.md, "What each step costs per 20 ms frame"). `DirectWebSocket` keeps aiohttp for
everything else (the upgrade, ping/pong, close handshake and codes, flow control when the peer reads slowly) and
adds:

* `on_messages(on_text, on_binary)`: from now on each text (binary) message is given to `on_text` (`on_binary`)
  synchronously, in `data_received`, in the order it arrived; every other message (close, ping, pong, errors)
  still reaches the reader task's `receive()`, which aiohttp answers as before (RFC 6455 §5.5: pongs, the closing
  handshake). When a handler raises, both are dropped and the exception reaches the reader as a
  `TextHandlerError` message (`handler_error`); `StopReading` is a handler's way to say it wants no more messages.
* `write_text_nowait(text)` / `write_bytes_nowait(data)` / `write_frame_nowait(frame)` (header included,
  `frame_header`): one unmasked text / binary frame (RFC 6455 §5.2: a server never masks) written to the
  transport now, unless the socket is closing or the transport's buffer is above the writer's limit; then the
  caller awaits `send_str` / `send_bytes`, which wait for the peer to read (aiohttp's flow control).
  `send_text` / `send_binary` do exactly that for any `WebSocketResponse`.
* `read_messages(ws, on_text, on_binary)`: the reader task of a media socket, written once: what was queued
  before the handlers could be set is read with `receive()` and given to the same handlers, then the handlers
  take over and the task only wakes for control frames, a handler's error or the end.

The hook needs aiohttp's parser to feed a `WebSocketDataQueue` created in `WebSocketResponse._post_start`
(aiohttp 3.11 and later): `prepare()` substitutes a subclass whose `feed_data` hands messages to the handlers.
If a later aiohttp builds the queue differently, `on_messages` returns False and `read_messages` reads every
message with `receive()` as any websocket does (slower, same behaviour); tests/test_wsdirect.py fails then, so it
is noticed.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import aiohttp.web_ws as aiohttp_web_ws
from aiohttp import WSMessage, WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.web_request import BaseRequest

#: the first byte of an unfragmented text / binary frame (FIN + opcode 1 / 2), RFC 6455 §5.2
TEXT_FIN = 0x81
BINARY_FIN = 0x82
#: the 16-bit and 64-bit extended payload length forms (length marker 126 / 127)
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY


def frame_header(first: int, n: int) -> bytes:
    """The header of an unmasked frame with first byte `first` (`TEXT_FIN`, `BINARY_FIN`) and `n` payload bytes."""
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return _LEN16.pack(first, 126, n)
    return _LEN64.pack(first, 127, n)

TextHandler = Callable[[str], None]
BinaryHandler = Callable[[bytes], None]


class StopReading(Exception):
    """Raised by a handler that wants no more messages: the reader task sees it (`handler_error`) and stops."""


class TextHandlerError:
    """What reaches the reader task (as an ERROR message's data) when a handler raised `error`."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def handler_error(msg: Any) -> Exception | None:
    """The exception a handler raised, when `msg` (from `receive()`) carries one; else None."""
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, TextHandlerError):
        return msg.data.error
    return None


class _DispatchQueue(WebSocketDataQueue):
    """aiohttp's message queue, except that while a handler is set its kind of message goes to it at once."""

    handler: TextHandler | None = None
    binary_handler: BinaryHandler | None = None

    def pending(self) -> int:
        """Messages queued and not yet read."""
        return len(self._buffer)

    def feed_data(self, data: Any, size: int) -> None:
        kind = data[0]     # (module constants: an enum member looked up per message costs more than the rest)
        handler: Callable[[Any], None] | None = self.handler if kind is _TEXT else \
            self.binary_handler if kind is _BINARY else None
        if handler is not None:
            try:
                handler(data[1])
            except Exception as e:   # the reader task reports it; data_received must not raise
                self.fail(e)
            return
        super().feed_data(data, size)

    def fail(self, error: Exception) -> None:
        """A handler raised `error`: no more handler calls, and the reader task gets it (`handler_error`)."""
        self.handler = self.binary_handler = None
        super().feed_data(WSMessage(WSMsgType.ERROR, TextHandlerError(error), None), 0)


class DirectWebSocket(web.WebSocketResponse):
    """A `web.WebSocketResponse` with `on_messages` and the `write_*_nowait` writers (module docstring)."""

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp builds the message queue here (from this module global) and hands it to the frame parser; for
        # the length of this synchronous call it builds ours instead. Nothing else can run in between.
        saved = getattr(aiohttp_web_ws, "WebSocketDataQueue", None)
        if saved is None:
            super()._post_start(request, protocol, writer)
            return
        setattr(aiohttp_web_ws, "WebSocketDataQueue", _DispatchQueue)   # noqa: B010  (restored below)
        try:
            super()._post_start(request, protocol, writer)
        finally:
            setattr(aiohttp_web_ws, "WebSocketDataQueue", saved)   # noqa: B010
        self._transport = request.transport

    @property
    def _queue(self) -> _DispatchQueue | None:
        q = self._reader
        return q if isinstance(q, _DispatchQueue) else None

    def on_messages(self, on_text: TextHandler | None, on_binary: BinaryHandler | None = None) -> bool:
        """Give text (binary) messages to `on_text` (`on_binary`) in `data_received` from now on; a None handler
        queues its kind for `receive()` again. False when that is not possible (yet): messages are still queued
        for `receive()` (read them first, then ask again), the socket is closing, or this aiohttp builds its queue
        differently."""
        q = self._queue
        if q is None or ((on_text is not None or on_binary is not None) and (q.pending() or self.closed)):
            return False
        q.handler, q.binary_handler = on_text, on_binary
        return True

    def handler_failed(self, error: Exception) -> bool:
        """Work a handler passed on (gateway/mediabatch.py) raised `error`: it reaches the reader task as if the
        handler had raised it. False when the socket has no handlers (then nobody is told)."""
        q = self._queue
        if q is None or (q.handler is None and q.binary_handler is None):
            return False
        q.fail(error)
        return True

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        q = self._queue
        if q is not None:    # what arrives during the closing handshake is read (and dropped) by aiohttp
            q.handler = q.binary_handler = None
        return await super().close(code=code, message=message, drain=drain)

    _transport: Any = None
    #: above this many bytes in the transport's buffer a frame waits (`send_str`) instead: aiohttp's writer limit
    write_limit = 2 ** 16

    def can_write_nowait(self) -> bool:
        """Whether a frame written now goes straight out: the socket is open and its peer keeps up."""
        t = self._transport
        return t is not None and not self.closed and not t.is_closing() and t.get_write_buffer_size() <= \
            self.write_limit

    def _write_frame(self, first: int, payload: bytes) -> bool:
        if not self.can_write_nowait():
            return False
        self._transport.write(frame_header(first, len(payload)) + payload)
        return True

    def write_frame_nowait(self, frame: bytes) -> bool:
        """Write one whole frame built by the caller (`frame_header` + payload) now; False (nothing written) as
        for `write_text_nowait`. A media socket builds its outgoing message as bytes with a header it keeps per
        payload length (twilio_media.py): no text round trip per frame."""
        if not self.can_write_nowait():
            return False
        self._transport.write(frame)
        return True

    def write_text_nowait(self, text: str) -> bool:
        """Write one text frame now; False (nothing written) when the socket is closing or the peer is not
        reading fast enough: the caller then awaits `send_str`."""
        return self._write_frame(TEXT_FIN, text.encode())

    def write_bytes_nowait(self, data: bytes) -> bool:
        """Write one binary frame now; False (nothing written) as for `write_text_nowait`."""
        return self._write_frame(BINARY_FIN, data)


async def send_text(ws: web.WebSocketResponse, text: str) -> None:
    """One text message: straight to the transport when it can take it now, else through aiohttp's writer."""
    if not isinstance(ws, DirectWebSocket) or not ws.write_text_nowait(text):
        await ws.send_str(text)


async def send_binary(ws: web.WebSocketResponse, data: bytes) -> None:
    """One binary message, as `send_text`."""
    if not isinstance(ws, DirectWebSocket) or not ws.write_bytes_nowait(data):
        await ws.send_bytes(data)


async def read_messages(ws: web.WebSocketResponse, on_text: TextHandler, on_binary: BinaryHandler) -> None:
    """Give every message of `ws` to its handler until the socket closes or a handler raises `StopReading`; any
    other exception a handler raises is raised here. On a `DirectWebSocket` the handlers run in `data_received`
    once nothing is queued for `receive()` any more; `receive()` reads the rest: what arrived before, control
    frames, and what a handler raised."""
    direct = ws if isinstance(ws, DirectWebSocket) else None
    try:
        while True:
            if direct is not None and direct.on_messages(on_text, on_binary):
                direct = None
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                on_text(msg.data)
            elif kind is WSMsgType.BINARY:
                on_binary(msg.data)
            else:
                err = handler_error(msg)
                if err is None:
                    return         # close, closing, closed, or aiohttp's own error
                raise err
    except StopReading:
        return
    finally:
        if isinstance(ws, DirectWebSocket):
            ws.on_messages(None, None)
