"""What the websocket media carriers share: Twilio Media Streams (`twilio_media.MediaStream`, also SignalWire's,
and Telnyx's and Plivo's through their subclasses), Exotel Voicebot (`exotel.VoicebotStream`) and Vonage websockets
(`vonage.VonageStream`).

* The socket itself is served by carriers/wsdirect.py (`read_messages`, `send_text` / `send_binary`, the
  `direct_out` hand-over): messages are handled where they are parsed and frames written straight out.
* `StreamClosed`: a protocol error or an end; the stream closes its socket with the carrier's own close code.
* `decode_event` / `await_start`: the JSON text-frame protocol of Twilio and Exotel (`connected`, then `start`).
* `MarkedPlayout`: mark, drain, clear and playout-clock bookkeeping. The carrier supplies the wire format only
  (`_send_mark`, `_send_clear`, and `_send_json` when it needs a lock).
* Ports (`MarkedPlayout.port`): a socket normally feeds the call (the engine) and sends what the call gives it; during
  an attended transfer (carriers/socket_consult.py) the caller's socket is connected to a hold port instead, the
  target's socket to the call, and for a gateway bridge each socket to its end of a bridge (gateway/mediabridge.py).
  A call's outbound bus has exactly one reader at a time: a sender takes from the call only while its port is
  None, and a socket that gives the call up (`leave_call`) is out of `call.next_outbound()` before another takes
  it (`PortSwitch` wakes a sender waiting there).

Each carrier keeps its own `CloseCode` enum (their codes are documented per endpoint in docs/<carrier>.md); the
helpers here take that enum and only use the members the carriers have in common.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import WSMsgType, web

from gateway import safejson
from gateway.frames import AudioFrame, BusItem, Clear, Mark

from .wsdirect import DirectWebSocket, send_text

if TYPE_CHECKING:
    from gateway.call import Call

NORMAL_CLOSE = 1000


def token_digest(token: str) -> str:
    """What a call's row keeps of a one-time stream token (its SHA-256, hex): another process of the cluster
    checks a socket's token against it without the token itself being stored."""
    return hashlib.sha256(token.encode()).hexdigest()


class PortSwitch:
    """Queued on the call's outbound bus when a socket stops taking the call's audio (hold, bridge, end of a
    consultation): its sender, waiting for the call's next item, wakes and takes its new port; any other sender
    skips it."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream


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
        return decode_text(msg.data, codes)
    if msg.type == WSMsgType.BINARY:
        raise StreamClosed(codes.BINARY_FRAME, binary_reason)
    return None  # CLOSE, CLOSING, CLOSED, ERROR


def decode_text(text: str, codes: Any) -> dict[str, Any]:
    """A JSON text message as a dict with a string `event`; StreamClosed (`codes.BAD_MESSAGE`) when it is not."""
    try:
        m = safejson.loads_media(text)
    except safejson.BadJson:
        raise StreamClosed(codes.BAD_MESSAGE, "message is not JSON") from None
    if not isinstance(m, dict) or not isinstance(m.get("event"), str):
        raise StreamClosed(codes.BAD_MESSAGE, "message is not a JSON object with an event")
    return m


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


def start_object(m: dict[str, Any], codes: Any) -> dict[str, Any]:
    """The `start` object of a start message (every media-stream protocol nests one), or a protocol error
    (`codes.BAD_MESSAGE`)."""
    start = m.get("start")
    if not isinstance(start, dict):
        raise StreamClosed(codes.BAD_MESSAGE, "start without a start object")
    return start


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
    #: what this socket's audio goes to and comes from instead of the call: a HoldPort or a BridgePort
    #: (gateway/mediabridge.py); None: the call
    port: Any = None
    #: the attended transfer this socket is the target's leg of (carriers/socket_consult.py), else None
    consultation: Any = None
    #: the carrier's CloseCode enum (UNKNOWN_CALL, BAD_MEDIA_FORMAT … are used here and by socket_consult.py)
    close_codes: Any = None
    #: a synchronous frame writer the call hands engine audio to while the sender waits for it (`_take`,
    #: `Call.next_outbound(direct=…)`); None: every frame comes through the sender
    direct_out: Callable[[AudioFrame], bool] | None = None
    #: the close reason when no `start` arrives in time (`{timeout}`: the carrier's start timeout in seconds)
    start_timeout_reason = "no start message within {timeout:g} s"
    #: the close reason for a binary frame on a protocol of JSON text messages
    binary_reason = "binary frames are not part of this protocol"

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

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        #: the socket when it takes frames synchronously (carriers/wsdirect.py): a sender writes without a task
        #: switch, and the call may hand engine audio straight to `direct_out`
        self.direct_ws = ws if isinstance(ws, DirectWebSocket) else None
        self.pending_marks: deque[str] = deque()    # engine marks sent, not yet echoed
        self.forgotten: set[str] = set()             # marks whose audio a clear dropped
        self._drain_waiters: dict[str, asyncio.Future[None]] = {}
        self.playout_end = 0.0
        #: the loop's clock, looked up once (`_played` runs per frame; on Python 3.11 every
        #: `asyncio.get_running_loop()` is a getpid() system call)
        self._now = asyncio.get_running_loop().time
        self._off_call = asyncio.Event()            # set while the sender is not inside call.next_outbound()
        self._off_call.set()
        #: the `start` message, as read (replayed to the call's owner when the socket is relayed there)
        self.start_message: dict[str, Any] = {}

    # -- the start of a stream ----------------------------------------------------------------------------------
    async def _await_start(self, timeout: float) -> None:
        """Skip `connected`, keep the `start` message and hand it to `_on_start`; a protocol error or no `start`
        within `timeout` seconds is a StreamClosed with the carrier's close code."""
        m = await await_start(self.ws, self.close_codes, timeout, self.start_timeout_reason.format(timeout=timeout),
                              self.binary_reason)
        self.start_message = m
        await self._on_start(m)

    async def _on_start(self, m: dict[str, Any]) -> None:
        """Check the `start` message and claim its call (the carrier's)."""
        raise NotImplementedError

    # -- wire format: the carrier's --------------------------------------------------------------------------------
    async def _send_mark(self, name: str) -> None:
        raise NotImplementedError

    async def _send_clear(self) -> None:
        raise NotImplementedError

    async def _send_json(self, obj: dict[str, Any]) -> None:
        await send_text(self.ws, json.dumps(obj, separators=(",", ":")))

    async def _before_drain(self) -> None:
        """Send whatever audio is held back before the drain mark (Exotel's partial chunk)."""

    # -- ports -----------------------------------------------------------------------------------------------------
    @property
    def inlet(self) -> Any:
        """Where the socket's audio and digits go: its port, else the call."""
        port = self.port     # (per media frame: `live_call`'s check written out, one property call less)
        if port is not None:
            return port
        if self.call is None:
            raise RuntimeError("media stream without a call (no start message yet)")
        return self.call

    def switch_port(self, port: Any) -> None:
        """From now on send what `port` gives and feed it what the socket hears (None: the call again). A sender
        waiting for the call's next item is woken by a PortSwitch; one waiting on the old port by its `wake()`."""
        old, self.port = self.port, port
        if old is not None:
            old.wake()
        elif port is not None and self.call is not None and self.call.bus is not None \
                and not self._off_call.is_set() and not self.call.bus.outbound.full():
            # (a full queue: the sender is not waiting, and drops the item it takes next as no longer its own)
            self.call.bus.outbound.put_nowait(cast(BusItem, PortSwitch(self)))

    async def leave_call(self, port: Any, timeout: float = 5.0) -> bool:
        """Give the call's audio up for `port` and wait (bounded) until the sender is out of
        `call.next_outbound()`, so another socket may take the call; False if it did not leave in time."""
        self.switch_port(port)
        return await self.off_call(timeout)

    async def off_call(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the sender is not inside `call.next_outbound()`; False if it still is."""
        if self._off_call.is_set():
            return True
        try:
            await asyncio.wait_for(self._off_call.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _take(self, *, on_wire: bool = True) -> tuple[Any, BusItem]:
        """The sender's next item and where it came from: the port, else the call."""
        port = self.port
        if port is not None:
            return port, await port.next_outbound(on_wire=on_wire)
        call = self.live_call
        self._off_call.clear()
        try:
            return call, await call.next_outbound(on_wire=on_wire, direct=self.direct_out)
        finally:
            self._off_call.set()

    def _still_ours(self, source: Any, item: Any) -> bool:
        """Whether an item taken from `source` is to be sent: not a PortSwitch, and the port did not change while
        the sender waited (then it was meant for the party this socket no longer carries)."""
        return not isinstance(item, PortSwitch) and source is (self.port if self.port is not None else self.call)

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
        self.playout_end = self._now()

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
        # (a barge-in is the call's: a socket on hold or bridged is not paced by it)
        bus = self.call.bus if self.call is not None and self.port is None else None
        pending = bus.clear_pending if bus is not None else None
        if pending is not None and pending.is_set():
            return False
        ahead = self.playout_end - self._now() - max_ahead
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
        now = self._now()
        self.playout_end = max(self.playout_end, now) + seconds

    async def _close_when_call_ends(self) -> None:
        await self.live_call.ended.wait()
        await asyncio.sleep(0)   # let a sender mid-send finish its frame
        if not self.ws.closed:
            await self.ws.close(code=NORMAL_CLOSE, message=b"call ended")

    # -- a sender that stops on `_stopping` (Exotel, Vonage) -------------------------------------------------------
    def _wake_sender(self) -> None:
        """Unblock `call.next_outbound()` with a harmless item instead of cancelling it: it may be running a
        hangup or transfer (and then `call.end()`), which must not be cut short. A sender on a port is woken
        by the port."""
        if self.port is not None:
            self.port.wake()
            return
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
