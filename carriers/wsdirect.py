"""A media websocket without a task switch per message: text messages handled where they are parsed, text frames
written straight to the transport.

aiohttp's `WebSocketResponse` parses frames in the connection's `data_received` and queues every message for a
reader task, which wakes once per message (a future, a task step, `receive()`'s bookkeeping); writes go through
the async `send_str`. At 50 media messages a second per call that plumbing cost more than the media work itself
(BENCHMARKS.md, "What each step costs per 20 ms frame"). `DirectWebSocket` keeps aiohttp for everything else
(the upgrade, ping/pong, close handshake and codes, flow control when the peer reads slowly) and adds:

* `on_text(handler)`: from now on each text message is given to `handler` synchronously, in `data_received`, in
  the order it arrived; every other message (close, ping, pong, binary, errors) still reaches the reader task's
  `receive()`, which aiohttp answers as before (RFC 6455 §5.5: pongs, the closing handshake). When the handler
  raises, it is dropped and the exception reaches the reader as a `TextHandlerError` message (`handler_error`);
  `StopReading` is the handler's way to say it wants no more messages.
* `write_text_nowait(text)`: one unmasked text frame (RFC 6455 §5.2: a server never masks) written to the
  transport now, unless the socket is closing or the transport's buffer is above the writer's limit; then the
  caller awaits `send_str`, which waits for the peer to read (aiohttp's flow control).

The text hook needs aiohttp's parser to feed a `WebSocketDataQueue` created in `WebSocketResponse._post_start`
(aiohttp 3.11 and later): `prepare()` substitutes a subclass whose `feed_data` hands text messages to the handler.
If a later aiohttp builds the queue differently, `on_text` returns False and the caller reads every message with
`receive()` as any websocket does (slower, same behaviour); tests/test_wsdirect.py fails then, so it is noticed.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import aiohttp.web_ws as aiohttp_web_ws
from aiohttp import WSMessage, WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.web_request import BaseRequest

#: the first byte of an unfragmented text frame (FIN + opcode 1) and the 16-bit length form's marker
_TEXT_FIN = 0x81
_LEN16 = struct.Struct("!BBH")


class StopReading(Exception):
    """Raised by a text handler that wants no more messages: the reader task sees it (`handler_error`) and stops."""


class TextHandlerError:
    """What reaches the reader task (as an ERROR message's data) when the text handler raised `error`."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def handler_error(msg: Any) -> Exception | None:
    """The exception the text handler raised, when `msg` (from `receive()`) carries one; else None."""
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, TextHandlerError):
        return msg.data.error
    return None


class _DispatchQueue(WebSocketDataQueue):
    """aiohttp's message queue, except that while `handler` is set a text message goes to it at once."""

    handler: Callable[[str], None] | None = None

    def pending(self) -> int:
        """Messages queued and not yet read."""
        return len(self._buffer)

    def feed_data(self, data: Any, size: int) -> None:
        handler = self.handler
        if handler is not None and data[0] is WSMsgType.TEXT:
            try:
                handler(data[1])
            except Exception as e:   # the reader task reports it; data_received must not raise
                self.handler = None
                super().feed_data(WSMessage(WSMsgType.ERROR, TextHandlerError(e), None), 0)
            return
        super().feed_data(data, size)


class DirectWebSocket(web.WebSocketResponse):
    """A `web.WebSocketResponse` with `on_text` and `write_text_nowait` (module docstring)."""

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

    def on_text(self, handler: Callable[[str], None] | None) -> bool:
        """Give text messages to `handler` in `data_received` from now on (None: queue them again). False when
        that is not possible (yet): messages are still queued for `receive()` (read them first, then ask again),
        the socket is closing, or this aiohttp builds its queue differently."""
        q = self._queue
        if q is None or (handler is not None and (q.pending() or self.closed)):
            return False
        q.handler = handler
        return True

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        q = self._queue
        if q is not None:
            q.handler = None      # what arrives during the closing handshake is read (and dropped) by aiohttp
        return await super().close(code=code, message=message, drain=drain)

    _transport: Any = None
    #: above this many bytes in the transport's buffer a frame waits (`send_str`) instead: aiohttp's writer limit
    write_limit = 2 ** 16

    def write_text_nowait(self, text: str) -> bool:
        """Write one text frame now; False (nothing written) when the socket is closing or the peer is not
        reading fast enough: the caller then awaits `send_str`."""
        t = self._transport
        if t is None or self.closed or t.is_closing() or t.get_write_buffer_size() > self.write_limit:
            return False
        data = text.encode()
        n = len(data)
        if n < 126:
            t.write(bytes((_TEXT_FIN, n)) + data)
        elif n < 65536:
            t.write(_LEN16.pack(_TEXT_FIN, 126, n) + data)
        else:
            return False      # (media messages are a few hundred bytes; large ones take aiohttp's writer)
        return True
