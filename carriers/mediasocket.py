"""What the websocket media carriers share: Twilio Media Streams (`twilio_media.MediaStream`), Exotel Voicebot
(`exotel.VoicebotStream`) and Vonage websockets (`vonage.VonageStream`).

* `StreamClosed`: a protocol error or an end; the stream closes its socket with the carrier's own close code.
* `decode_event` / `await_start`: the JSON text-frame protocol of Twilio and Exotel (`connected`, then `start`).
* `MarkedPlayout`: mark, drain, clear and playout-clock bookkeeping. The carrier supplies the wire format only
  (`_send_mark`, `_send_clear`, and `_send_json` when it needs a lock).

Each carrier keeps its own `CloseCode` enum (their codes are documented per endpoint in docs/<carrier>.md); the
helpers here take that enum and only use the members the carriers have in common.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from gateway import safejson
from gateway.frames import Clear, Mark

if TYPE_CHECKING:
    from gateway.call import Call

NORMAL_CLOSE = 1000


class StreamClosed(Exception):
    """Close the media socket with `code` (a member of the carrier's CloseCode) and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def decode_event(msg: Any, codes: Any, binary_reason: str) -> dict[str, Any] | None:
    """A JSON text message as a dict with a string `event`; None when the socket is closing; StreamClosed on a
    protocol error (`codes.BAD_MESSAGE`, or `codes.BINARY_FRAME` with `binary_reason` for a binary frame)."""
    if msg.type == WSMsgType.TEXT:
        try:
            m = safejson.loads(msg.data)
        except safejson.BadJson:
            raise StreamClosed(codes.BAD_MESSAGE, "message is not JSON") from None
        if not isinstance(m, dict) or not isinstance(m.get("event"), str):
            raise StreamClosed(codes.BAD_MESSAGE, "message is not a JSON object with an event")
        return m
    if msg.type == WSMsgType.BINARY:
        raise StreamClosed(codes.BINARY_FRAME, binary_reason)
    return None  # CLOSE, CLOSING, CLOSED, ERROR


async def await_start(ws: web.WebSocketResponse, codes: Any, timeout: float, timeout_reason: str,
                      binary_reason: str) -> dict[str, Any]:
    """Skip `connected` and return the `start` message; anything else first, or nothing within `timeout` seconds,
    is a StreamClosed (START_TIMEOUT, NORMAL when the socket closes, BAD_MESSAGE, UNKNOWN_EVENT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StreamClosed(codes.START_TIMEOUT, timeout_reason)
        try:
            msg = await asyncio.wait_for(ws.receive(), remaining)
        except TimeoutError:
            continue
        m = decode_event(msg, codes, binary_reason)
        if m is None:
            raise StreamClosed(codes.NORMAL, "socket closed before start")
        event = m["event"]
        if event == "connected":
            continue
        if event == "start":
            return m
        if event in ("media", "dtmf", "mark", "stop"):
            raise StreamClosed(codes.BAD_MESSAGE, f"{event} before start")
        raise StreamClosed(codes.UNKNOWN_EVENT, f"unknown event {event[:40]!r}")


class MarkedPlayout:
    """Mark / drain / clear / playout-clock bookkeeping of one media socket.

    Engine marks are sent in order with the audio and reported back to the call (`call.feed_event(Mark)`) once the
    carrier echoes them; a clear makes the marks still pending 'forgotten' (their audio never played). `drain()`
    sends a mark of our own (`internal_mark` + a per-class counter) and waits for its echo, bounded by the audio
    still queued (`playout_end`, the loop time at which the carrier will have played what we sent).
    """

    internal_mark = "gw-"
    drain_errors: tuple[type[BaseException], ...] = (asyncio.TimeoutError, ConnectionError)
    ws: web.WebSocketResponse
    call: Call | None
    _mark_ids: itertools.count[int]

    if TYPE_CHECKING:
        @property
        def log(self) -> logging.LoggerAdapter[Any]: ...   # the streams that pass `late` to _stop_sender have one

    @property
    def live_call(self) -> Call:
        """The call this stream carries: set by its start message, before the loops that use it run."""
        if self.call is None:
            raise RuntimeError("media stream without a call (no start message yet)")
        return self.call

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._mark_ids = itertools.count(1)     # each carrier numbers its drain marks on its own

    def __init__(self) -> None:
        self.pending_marks: deque[str] = deque()    # engine marks sent, not yet echoed
        self.forgotten: set[str] = set()             # marks whose audio a clear dropped
        self._drain_waiters: dict[str, asyncio.Future[None]] = {}
        self.playout_end = 0.0

    # -- wire format: the carrier's --------------------------------------------------------------------------------
    async def _send_mark(self, name: str) -> None:
        raise NotImplementedError

    async def _send_clear(self) -> None:
        raise NotImplementedError

    async def _send_json(self, obj: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(obj, separators=(",", ":")))

    async def _before_drain(self) -> None:
        """Send whatever audio is held back before the drain mark (Exotel's partial chunk)."""

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    async def send_engine_mark(self, name: str) -> None:
        self.pending_marks.append(name)
        await self._send_mark(name)

    def _mark_played(self, name: str) -> bool:
        """The carrier echoed mark `name`: wake its drain, drop it if cleared, else tell the call. False when we
        never sent it."""
        waiter = self._drain_waiters.pop(name, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return True
        if name in self.forgotten:   # its audio was cleared, so it was not played: do not say it was
            self.forgotten.discard(name)
            return True
        try:
            self.pending_marks.remove(name)
        except ValueError:
            return False
        self.live_call.feed_event(Mark(name))
        return True

    async def clear(self) -> None:
        """Barge-in: the carrier drops its buffer; the marks still pending will never mean 'played'."""
        if self.call is not None and self.call.bus is not None:
            self.call.bus.clear_pending.clear()   # audio queued after this Clear is to be sent again
        await self._send_clear()
        self.forgotten.update(self.pending_marks)
        self.pending_marks.clear()
        self.playout_end = asyncio.get_running_loop().time()

    async def drain(self, cap: float = 30.0) -> None:
        """Wait until the carrier has played what we sent (a mark of our own), bounded by the audio still queued."""
        if self.ws.closed:
            return
        await self._before_drain()
        loop = asyncio.get_running_loop()
        left = self.playout_end - loop.time()
        if left <= 0:
            return
        name = f"{self.internal_mark}{next(self._mark_ids)}"
        fut = loop.create_future()
        self._drain_waiters[name] = fut
        try:
            await self._send_mark(name)
            await asyncio.wait_for(fut, min(left + 2.0, cap))
        except self.drain_errors:
            pass
        finally:
            self._drain_waiters.pop(name, None)

    def _release_drain_waiters(self) -> None:
        """The socket is gone: no echo will come, let every drain return."""
        for w in self._drain_waiters.values():
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def _pace(self, max_ahead: float) -> bool:
        """Stay at most `max_ahead` seconds ahead of playback. False when a barge-in (the bus's clear_pending) came
        first or comes while waiting: the audio in hand is not to be sent."""
        bus = self.call.bus if self.call is not None else None
        pending = bus.clear_pending if bus is not None else None
        if pending is not None and pending.is_set():
            return False
        ahead = self.playout_end - asyncio.get_running_loop().time() - max_ahead
        if ahead > 0:
            if pending is None:
                await asyncio.sleep(ahead)
            else:
                try:
                    await asyncio.wait_for(pending.wait(), ahead)
                    return False
                except TimeoutError:
                    pass
        return True

    def _played(self, seconds: float) -> None:
        """We just sent `seconds` of audio: it plays after what is queued, or from now."""
        now = asyncio.get_running_loop().time()
        self.playout_end = max(self.playout_end, now) + seconds

    async def _close_when_call_ends(self) -> None:
        await self.live_call.ended.wait()
        await asyncio.sleep(0)   # let a sender mid-send finish its frame
        if not self.ws.closed:
            await self.ws.close(code=NORMAL_CLOSE, message=b"call ended")

    # -- a sender that stops on `_stopping` (Exotel, Vonage) -------------------------------------------------------
    def _wake_sender(self) -> None:
        """Unblock `call.next_outbound()` with a harmless item instead of cancelling it: it may be running a
        hangup or transfer (and then `call.end()`), which must not be cut short."""
        bus = self.call.bus if self.call is not None else None
        if bus is not None and not bus.outbound.full():
            bus.outbound.put_nowait(Clear())

    async def _settle_next(self, nxt: asyncio.Future[Any] | None) -> None:
        """The sender loop is over with `next_outbound()` maybe still running a leg action: let it finish
        (bounded), never cut it short."""
        if nxt is not None and not nxt.done():
            self._wake_sender()
            done, _ = await asyncio.wait({nxt}, timeout=15)
            if not done:
                nxt.cancel()

    async def _stop_sender(self, sender: asyncio.Task[None] | None, late: str | None = None) -> None:
        """Wake the sender and wait (15 s at most) for it to end; `late` is logged when it had to be cancelled."""
        if sender is not None and not sender.done():
            self._wake_sender()
            try:
                await asyncio.wait_for(asyncio.shield(sender), 15)
            except TimeoutError:
                if late:
                    self.log.warning(late)
                sender.cancel()
            except Exception:
                pass
