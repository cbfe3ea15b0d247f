"""A pipecat pipeline as a gateway voice engine, over the engine websocket protocol (docs/engine-protocol.md).

`pip install 'telephony-gateway[pipecat]'`, then (docs/pipecat.md has the whole story):

    async def bot(transport: GatewayTransport) -> None:
        await run_pipeline(transport, stt, llm_context.user(), llm, tts, llm_context.assistant())  # your processors

    server = await serve(bot, "127.0.0.1", 9000)       # gateway serve --engine ws://127.0.0.1:9000
    await connect("ws://gw:8080/engine/ws", key, bot)  # or accept mode: gateway serve --engine accept

Why a transport of our own and not pipecat's websocket ones: one websocket carries one call and its first message
is `start` (the call, its sample rate); pipecat's `SingleClientWebsocketServerTransport` serves one client per
process and its client transport cannot answer the gateway's `redirect`. The per-connection structure follows
pipecat's `FastAPIWebsocketTransport` (a transport around a connection someone else accepted), on the `websockets`
library the gateway already uses. What maps to what is in `GatewayFrameSerializer`'s docstring and docs/pipecat.md.

The core never imports this module (it needs the optional extra); it speaks only the public protocol.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import websockets
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    AudioRawFrame,
    CancelFrame,
    CancelWorkerFrame,
    DataFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputDTMFFrame,
    OutputDTMFUrgentFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    SystemFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve

log = logging.getLogger("gateway.integrations.pipecat")

#: the protocol's limits (docs/engine-protocol.md, "Engine → gateway messages"): longer values close the socket
MAX_REASON = 200
MAX_MARK = 200
MAX_NUMBER = 64
_DIGITS = set("0123456789ABCD*#")
#: the gateway sends at most 4 MiB per message; engines may send audio of any length, so we accept the same
MAX_MESSAGE = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# The call, from the gateway's `start` message


@dataclass(frozen=True)
class CallStart:
    """The gateway's `start` message: who calls whom, at which sample rate, with which transfer options."""

    call_id: str
    sample_rate: int
    carrier: str = ""
    carrier_call_id: str | None = None
    direction: str = "inbound"
    from_number: str = ""
    to_number: str = ""
    agent_id: int | None = None
    custom_parameters: dict[str, Any] = field(default_factory=dict)
    call_context: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, msg: Any) -> CallStart:
        """Parse a decoded `start` message; ValueError when it is not one."""
        if not isinstance(msg, dict) or msg.get("type") != "start":
            raise ValueError("expected the gateway's start message")
        audio = msg.get("audio")
        rate = audio.get("sample_rate") if isinstance(audio, dict) else None
        if not isinstance(rate, int) or rate <= 0 or not isinstance(msg.get("call_id"), str):
            raise ValueError("start: call_id and audio.sample_rate are required")
        return cls(call_id=msg["call_id"], sample_rate=rate, carrier=str(msg.get("carrier") or ""),
                   carrier_call_id=msg.get("carrier_call_id"), direction=str(msg.get("direction") or "inbound"),
                   from_number=str(msg.get("from") or ""), to_number=str(msg.get("to") or ""),
                   agent_id=msg.get("agent_id"), custom_parameters=_object(msg.get("custom_parameters")),
                   call_context=_object(msg.get("call_context")), transfer=_object(msg.get("transfer")))


def _object(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------------------------
# Frames for what pipecat has no frame of its own for. Gateway → bot frames are SystemFrames (they are events,
# handled at once and never dropped by an interruption); bot → gateway requests are DataFrames that keep their
# place after the audio pushed before them and survive interruptions (`interruptible=False`), as the protocol
# carries actions out in order with the audio.


@dataclass
class GatewayHangupFrame(CancelWorkerFrame):
    """The call is over (gateway `hangup`): `source` is user/agent/carrier/system, `reason` the call log's.

    A CancelWorkerFrame, so when it reaches the end of the pipeline the pipeline is cancelled: nothing can be
    played to a call that has ended. Processors see it on its way down."""

    source: str = ""


@dataclass
class GatewayMarkPlayedFrame(SystemFrame):
    """Everything sent before the `GatewayMarkFrame(name)` of this name has been played (or cleared)."""

    mark: str = ""


@dataclass
class GatewaySpeechFrame(SystemFrame):
    """The gateway's VAD: caller speech started (`speaking=True`) or ended. Informational: turn-taking belongs to
    the pipeline's own VAD / turn analyzer, which sees the audio with less delay."""

    speaking: bool = False


@dataclass
class GatewayAmdResultFrame(SystemFrame):
    """Answering-machine detection finished (outbound calls with AMD). With `voicemail_message`: speak it, then
    end with `EndFrame(reason="voicemail")` (docs/amd.md)."""

    answered_by: str = "unknown"
    duration_ms: int | None = None
    voicemail_message: str | None = None


@dataclass
class GatewayTransferResultFrame(SystemFrame):
    """The outcome of a transfer the bot (or the API) asked for: `completed`, `busy`, `no-answer`, `failed…`."""

    target: str | None = None
    outcome: str = ""


@dataclass
class GatewaySayThenTransferFrame(SystemFrame):
    """The transfer asked for has a transfer message: speak `text`, then push `GatewayTransferFrame(number)`
    (the gateway transfers by itself after 15 s)."""

    text: str = ""
    number: str | None = None


@dataclass
class GatewayConsultStateFrame(SystemFrame):
    """Attended transfer: the consultation call changed `state` (dialing, answered, failed, ended, cancelled,
    completed). From `answered` on, audio in and out is the target's until the next state."""

    state: str = ""
    number: str | None = None
    reason: str = ""
    message: str | None = None


@dataclass
class GatewayTransferFrame(DataFrame):
    """Transfer the caller: to `number`, or (None) to the agent's configured number and its backups."""

    number: str | None = None
    interruptible: bool = field(default=False, init=False)


@dataclass
class GatewayConsultFrame(DataFrame):
    """Attended transfer, step 1: hold the caller and call `number` (None: the agent's); `message` is a WAV
    path/URL played to the target, or text handed back on `answered`."""

    number: str | None = None
    message: str | None = None
    interruptible: bool = field(default=False, init=False)


@dataclass
class GatewayConsultCompleteFrame(DataFrame):
    """Attended transfer: join the caller and the answered target."""

    interruptible: bool = field(default=False, init=False)


@dataclass
class GatewayConsultCancelFrame(DataFrame):
    """Attended transfer: end the consultation and talk to the caller again."""

    interruptible: bool = field(default=False, init=False)


@dataclass
class GatewayMarkFrame(DataFrame):
    """Ask for a `GatewayMarkPlayedFrame(name)` once the audio pushed before this frame has been played."""

    mark: str = ""
    interruptible: bool = field(default=False, init=False)


# ---------------------------------------------------------------------------------------------------------------
# The serializer


class GatewayFrameSerializer(FrameSerializer):
    """pipecat frames ⇄ the gateway's engine protocol (version 1).

    | gateway → engine | pipecat frame |
    |---|---|
    | binary PCM16 | `InputAudioRawFrame` (resampled to the pipeline rate if it differs) |
    | `dtmf` 0-9 * # | `InputDTMFFrame` (A-D, which pipecat's keypad lacks: `InputTransportMessageFrame`) |
    | `hangup` | `GatewayHangupFrame` (a `CancelWorkerFrame`: cancels the pipeline) |
    | `amd` | `GatewayAmdResultFrame` |
    | `transfer_result` | `GatewayTransferResultFrame` |
    | `say` / `consult` | `GatewaySayThenTransferFrame` / `GatewayConsultStateFrame` |
    | `mark` / `speech` | `GatewayMarkPlayedFrame` / `GatewaySpeechFrame` |
    | `start` (when another transport reads it) | `InputTransportMessageFrame` (and the call is learnt) |

    | pipecat frame | engine → gateway |
    |---|---|
    | `OutputAudioRawFrame` (any audio frame) | binary PCM16 at the call's rate |
    | `InterruptionFrame` | `clear` (barge-in) |
    | `EndFrame(reason)` / `CancelFrame(reason)` | `hangup` (a str reason, else `agent_hangup` / `pipecat_cancelled`) |
    | `OutputDTMFFrame` / `OutputDTMFUrgentFrame` | `dtmf` |
    | `GatewayTransferFrame(number)` | `transfer` |
    | `GatewayConsultFrame` / `…CompleteFrame` / `…CancelFrame` | `consult` / `consult_complete` / `consult_cancel` |
    | `GatewayMarkFrame(name)` | `mark` |
    | `OutputTransportMessageFrame(message)` | `message` as JSON, as it is (any protocol message) |

    After `hangup` (either way) nothing more is sent.
    """

    class InputParams(FrameSerializer.InputParams):
        """`sample_rate`: the pipeline's input rate (default: the pipeline's); `hangup_reason`: the reason sent
        for an EndFrame without a string reason."""

        sample_rate: int | None = None
        hangup_reason: str = "agent_hangup"

    def __init__(self, call: CallStart | None = None, params: InputParams | None = None) -> None:
        params = params or GatewayFrameSerializer.InputParams()
        super().__init__(params)
        self._params: GatewayFrameSerializer.InputParams = params
        self.call = call
        self._sample_rate = 0                      # the pipeline's input rate, known at setup
        self._in_resampler = create_stream_resampler(clear_after_secs=params.resampler_clear_after_secs)
        self._out_resampler = create_stream_resampler(clear_after_secs=params.resampler_clear_after_secs)
        #: a `hangup` went out or came in: the call is over, nothing more is sent
        self.ended = False

    @property
    def gateway_rate(self) -> int:
        """The rate of the PCM on the websocket: the call's (`start`), 16 kHz until it is known."""
        return self.call.sample_rate if self.call else 16000

    async def setup(self, setup: FrameProcessorSetup) -> None:
        self._sample_rate = self._params.sample_rate or setup.audio_in_sample_rate

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if self.ended:
            return None
        if isinstance(frame, (EndFrame, CancelFrame)):
            self.ended = True
            default = self._params.hangup_reason if isinstance(frame, EndFrame) else "pipecat_cancelled"
            reason = frame.reason if isinstance(frame.reason, str) and frame.reason.strip() else default
            return _json({"type": "hangup", "reason": reason[:MAX_REASON]})
        if isinstance(frame, InterruptionFrame):
            return _json({"type": "clear"})
        if isinstance(frame, AudioRawFrame):
            pcm: bytes = frame.audio
            if frame.sample_rate != self.gateway_rate:
                pcm = await self._out_resampler.resample(pcm, frame.sample_rate, self.gateway_rate)
            return pcm or None
        if isinstance(frame, (OutputDTMFFrame, OutputDTMFUrgentFrame)):
            digits = "".join(b.value for b in frame.buttons or ())[:32]
            return _json({"type": "dtmf", "digits": digits}) if digits else None
        if isinstance(frame, GatewayTransferFrame):
            return _json(_with_number({"type": "transfer"}, frame.number))
        if isinstance(frame, GatewayConsultFrame):
            msg = _with_number({"type": "consult"}, frame.number)
            if frame.message:
                msg["message"] = frame.message[:2000]
            return _json(msg)
        if isinstance(frame, GatewayConsultCompleteFrame):
            return _json({"type": "consult_complete"})
        if isinstance(frame, GatewayConsultCancelFrame):
            return _json({"type": "consult_cancel"})
        if isinstance(frame, GatewayMarkFrame):
            return _json({"type": "mark", "name": (frame.mark or "mark")[:MAX_MARK]})
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            return None if self.should_ignore_frame(frame) else _json(frame.message)
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, bytes):
            if not data:
                return None
            rate = self._sample_rate or self.gateway_rate
            pcm = data
            if rate != self.gateway_rate:
                pcm = await self._in_resampler.resample(data, self.gateway_rate, rate)
            return InputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1)
        try:
            msg = json.loads(data)
        except ValueError:
            log.warning("gateway sent a text frame that is not JSON; ignored")
            return None
        if not isinstance(msg, dict):
            return None
        return self._event(msg)

    def _event(self, msg: dict[str, Any]) -> Frame | None:
        kind = msg.get("type")
        if kind == "dtmf":
            digit = msg.get("digit")
            try:
                return InputDTMFFrame(button=KeypadEntry(digit))
            except ValueError:                     # A-D: no KeypadEntry for them
                return InputTransportMessageFrame(message=msg)
        if kind == "hangup":
            self.ended = True
            return GatewayHangupFrame(reason=str(msg.get("reason") or ""), source=str(msg.get("source") or ""))
        if kind == "mark":
            return GatewayMarkPlayedFrame(mark=str(msg.get("name") or ""))
        if kind == "speech":
            return GatewaySpeechFrame(speaking=bool(msg.get("speaking")))
        if kind == "amd":
            duration = msg.get("duration_ms")
            return GatewayAmdResultFrame(answered_by=str(msg.get("answered_by") or "unknown"),
                                         duration_ms=duration if isinstance(duration, int) else None,
                                         voicemail_message=msg.get("voicemail_message"))
        if kind == "transfer_result":
            return GatewayTransferResultFrame(target=msg.get("target"), outcome=str(msg.get("outcome") or ""))
        if kind == "say":
            return GatewaySayThenTransferFrame(text=str(msg.get("text") or ""), number=msg.get("number"))
        if kind == "consult":
            return GatewayConsultStateFrame(state=str(msg.get("state") or ""), number=msg.get("number"),
                                            reason=str(msg.get("reason") or ""), message=msg.get("message"))
        if kind == "start":
            self.call = CallStart.from_message(msg)
        # start, and types a newer gateway may add: visible to processors that want them
        return InputTransportMessageFrame(message=msg)


def _json(msg: Any) -> str:
    return json.dumps(msg, separators=(",", ":"))


def _with_number(msg: dict[str, Any], number: str | None) -> dict[str, Any]:
    if number:
        msg["number"] = number[:MAX_NUMBER]
    return msg


# ---------------------------------------------------------------------------------------------------------------
# The transport: one websocket, one call


class GatewayParams(TransportParams):
    """pipecat transport parameters with telephony defaults: audio both ways at the call's rate (announced in
    `start`; set `audio_in_sample_rate` / `audio_out_sample_rate` to run the transport at another), no trailing
    silence after an EndFrame and none while idle (the gateway plays silence itself when nothing is queued).
    `serializer`: a `GatewayFrameSerializer` (default: one for the call)."""

    audio_in_enabled: bool = True
    audio_out_enabled: bool = True
    audio_out_end_silence_secs: int = 0
    audio_out_auto_silence: bool = False
    serializer: GatewayFrameSerializer | None = None


class GatewayTransport(BaseTransport):
    """A pipecat transport for one call on one gateway engine websocket (either mode). `call` is its `start`.

    The pipeline ends when the gateway hangs up (`GatewayHangupFrame` cancels it) or when the websocket drops;
    an EndFrame/CancelFrame from the pipeline hangs the call up and closes the websocket."""

    def __init__(self, websocket: Connection, call: CallStart, params: GatewayParams | None = None,
                 input_name: str | None = None, output_name: str | None = None) -> None:
        super().__init__(input_name=input_name, output_name=output_name)
        params = params or GatewayParams()
        in_rate = params.audio_in_sample_rate or call.sample_rate
        serializer = params.serializer or GatewayFrameSerializer(
            call, GatewayFrameSerializer.InputParams(sample_rate=in_rate))
        self.call = call
        self.params: GatewayParams = params.model_copy(update={
            "audio_in_sample_rate": in_rate,
            "audio_out_sample_rate": params.audio_out_sample_rate or call.sample_rate,
            "serializer": serializer})
        self.serializer: GatewayFrameSerializer = serializer
        self.websocket = websocket
        self._input = GatewayInputTransport(self, name=self._input_name)
        self._output = GatewayOutputTransport(self, name=self._output_name)

    def input(self) -> GatewayInputTransport:
        return self._input

    def output(self) -> GatewayOutputTransport:
        return self._output

    async def close(self) -> None:
        """Close the websocket (1000), bounded: the gateway answers the close handshake at once."""
        try:
            await asyncio.wait_for(self.websocket.close(1000, "bot finished"), 5)
        except (TimeoutError, websockets.WebSocketException, OSError):
            pass


class GatewayInputTransport(BaseInputTransport):
    """Reads the websocket: audio and events become frames (GatewayFrameSerializer.deserialize)."""

    def __init__(self, transport: GatewayTransport, **kwargs: Any) -> None:
        super().__init__(transport.params, **kwargs)
        self._transport = transport
        self._receive_task: asyncio.Task[None] | None = None

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        await self._transport.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if self._receive_task is None:
            self._receive_task = self.create_task(self._receive())
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._stop_receiving()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_receiving()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop_receiving()

    async def _stop_receiving(self) -> None:
        if self._receive_task is not None and self._receive_task is not asyncio.current_task():
            await self.cancel_task(self._receive_task)
        self._receive_task = None

    async def _receive(self) -> None:
        serializer = self._transport.serializer
        try:
            async for message in self._transport.websocket:
                frame = await serializer.deserialize(message)
                if frame is None:
                    continue
                if isinstance(frame, InputAudioRawFrame):
                    await self.push_audio_frame(frame)
                elif isinstance(frame, InputTransportMessageFrame):
                    await self.broadcast_frame(InputTransportMessageFrame, message=frame.message)
                else:
                    await self.push_frame(frame)
        except websockets.ConnectionClosed:
            pass
        if not serializer.ended:
            # the socket dropped without a `hangup`: the call is gone all the same
            serializer.ended = True
            await self.push_frame(GatewayHangupFrame(reason="gateway_disconnected", source="system"))


class GatewayOutputTransport(BaseOutputTransport):
    """Writes frames to the websocket (GatewayFrameSerializer.serialize), audio paced at twice real time as
    pipecat's websocket transports do, so an interruption (`clear`) finds little queued in the gateway."""

    def __init__(self, transport: GatewayTransport, **kwargs: Any) -> None:
        super().__init__(transport.params, **kwargs)
        self._transport = transport
        self._send_interval = 0.0
        self._next_send_time = 0.0

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._send_interval = (self.audio_chunk_size / self.sample_rate) / 2
        await self._transport.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)                  # plays out what is queued first
        await self._write_frame(frame)             # hangup
        await self._transport.close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._write_frame(frame)             # hangup, unless the gateway hung up first
        await self._transport.close()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            await self._write_frame(frame)
            self._next_send_time = 0.0

    async def send_message(self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame) -> None:
        await self._write_frame(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if not await self._write_frame(frame):
            return False
        now = time.monotonic()
        wait = max(0.0, self._next_send_time - now)
        await asyncio.sleep(wait)
        self._next_send_time = (now if wait == 0 else self._next_send_time) + self._send_interval
        return True

    def _supports_native_dtmf(self) -> bool:
        return True

    async def _write_dtmf_native(self, frame: OutputDTMFFrame | OutputDTMFUrgentFrame) -> None:
        await self._write_frame(frame)

    async def write_transport_frame(self, frame: Frame) -> None:
        """Our request frames (transfer, consult, mark), after the audio pushed before them has gone out."""
        await self._write_frame(frame)

    async def _write_frame(self, frame: Frame) -> bool:
        try:
            payload = await self._transport.serializer.serialize(frame)
            if payload:
                await self._transport.websocket.send(payload)
            return True
        except websockets.ConnectionClosed:
            return False


# ---------------------------------------------------------------------------------------------------------------
# Running bots: connect mode (the gateway dials us) and accept mode (we dial the gateway)

#: the bot: build and run a pipeline on the transport; returning (or the pipeline ending) ends the call
Bot = Callable[[GatewayTransport], Awaitable[None]]


async def run_pipeline(transport: GatewayTransport, *processors: FrameProcessor, **worker_kwargs: Any) -> None:
    """Run `transport.input() → processors → transport.output()` until the call ends (a `PipelineWorker` on a
    `WorkerRunner`, no signal handlers: the process serves many calls). `worker_kwargs` go to PipelineWorker
    (`params=PipelineParams(...)`, `idle_timeout_secs`…); RTVI is off unless asked for (the gateway does not speak
    it)."""
    worker_kwargs.setdefault("enable_rtvi", False)
    pipeline = Pipeline([transport.input(), *processors, transport.output()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(PipelineWorker(pipeline, **worker_kwargs))
    await runner.run()


class GatewayRefused(Exception):
    """The gateway refused this engine (wrong API key, bad pool name): retrying would not help."""


async def serve(bot: Bot, host: str = "127.0.0.1", port: int = 9000, *,
                params: GatewayParams | None = None) -> Server:
    """Connect mode: a websocket server the gateway dials once per call (agent engine `ws://host:port`); each
    connection runs `bot`. Returns the listening server (`server.sockets[0].getsockname()` for port 0)."""
    async def handler(ws: ServerConnection) -> None:
        await run_call(ws, bot, params)

    return await ws_serve(handler, host, port, compression=None, max_size=MAX_MESSAGE, close_timeout=2)


async def connect(url: str, api_key: str, bot: Bot, *, concurrency: int = 1,
                  params: GatewayParams | None = None) -> None:
    """Accept mode: keep `concurrency` idle connections at the gateway's `ws://…/engine/ws?pool=…`, each running
    `bot` for the call it is handed, then connecting again. Runs until cancelled; raises GatewayRefused when the
    gateway rejects the key or pool."""
    await asyncio.gather(*(_accept_worker(url, api_key, bot, params) for _ in range(concurrency)))


async def run_call(ws: Connection, bot: Bot, params: GatewayParams | None = None) -> str | None:
    """One call on one open connection: read `start`, run the bot. Returns the URL to reconnect to when the
    gateway sent `redirect` instead (accept mode in a cluster)."""
    try:
        first = await ws.recv()
    except websockets.ConnectionClosed:
        return None
    if (target := redirect_target(first)) is not None:
        return target
    try:
        call = CallStart.from_message(json.loads(first))
    except ValueError as e:
        await ws.close(1008, str(e)[:120])
        return None
    log.debug("call %s %s at %d Hz", call.call_id, call.direction, call.sample_rate)
    transport = GatewayTransport(ws, call, params)
    try:
        await bot(transport)
    finally:
        await transport.close()
    return None


def redirect_target(message: str | bytes) -> str | None:
    """The URL of a gateway `redirect` message ({"type": "redirect", "url": "ws[s]://…"}), else None.
    (examples/engine_client.py has the same check: that example needs only `websockets`, so it cannot import it.)"""
    if not isinstance(message, str):
        return None
    try:
        msg = json.loads(message)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("type") != "redirect" or not isinstance(msg.get("url"), str):
        return None
    parts = urlsplit(msg["url"])
    return msg["url"] if parts.scheme in ("ws", "wss") and parts.hostname else None


async def _accept_worker(url: str, api_key: str, bot: Bot, params: GatewayParams | None) -> None:
    delay = 0.5
    target = url
    while True:
        try:
            async with ws_connect(target, additional_headers={"Authorization": f"Bearer {api_key}"},
                                  compression=None, max_size=MAX_MESSAGE, close_timeout=2) as ws:
                delay = 0.5
                target = await run_call(ws, bot, params) or url
            continue                               # call over or redirected: offer ourselves again at once
        except websockets.InvalidStatus as e:
            if e.response.status_code in (400, 401):
                raise GatewayRefused(f"gateway refused the engine: {e.response.status_code}") from e
            log.warning("engine connection refused (%s); retrying in %.1fs", e, delay)
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as e:
            log.warning("engine connection failed (%s); retrying in %.1fs", e, delay)
        target = url
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
