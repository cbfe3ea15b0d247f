"""A live call: the carrier leg, the frame bus and the engine session, and the call-log row behind them.

Carriers drive a Call:
    call = await gateway.calls.create(carrier="twilio", direction="inbound", ...)
    await call.attach(leg, carrier_rate=8000)          # media is up: engine starts
    call.feed_audio(pcm) / call.feed_event(Dtmf("5"))  # from the socket reader, never blocks
    item = await call.next_outbound()                  # AudioFrame | Clear | Mark | SendDtmf, carrier rate
    await call.end(HangupSource.USER, "stop")          # the carrier leg is gone
Hangup and transfer requests queued by the engine are carried out inside `next_outbound()` through the leg,
after the audio queued before them, so a goodbye is not cut off.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .bus import CallBus
from .carrier import CallLeg, CarrierError
from .consult import ANSWERED, COMPLETED, ENDED, FAILED, Consultation, ConsultError, ConsultingLeg, is_wav
from .engine.base import EngineSession
from .frames import (
    AmdResult,
    AudioFrame,
    BusItem,
    CallStarted,
    Clear,
    ConsultEvent,
    ConsultRequest,
    Hangup,
    HangupSource,
    HoldRequest,
    HoldState,
    MuteState,
    SayThenTransfer,
    TransferRequest,
    TransferResult,
    Wake,
)
from .hold import HoldMusic, music_for
from .logsetup import ContextLogger
from .recording.recorder import Recorder
from .transfer import TransferRefused
from .transfer import resolve as resolve_transfer
from .turns import Timeline, analyze
from .vad import SpeechTap

if TYPE_CHECKING:
    from voicecodecs import StreamResampler

    from .callmanager import CallManager

log = logging.getLogger("gateway.call")

Tap = Callable[[bytes], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


#: seconds an engine may take to say a transfer_message and transfer; then the gateway transfers by itself
SAY_TIMEOUT = 15.0
#: seconds of music on hold handed to a media-socket carrier ahead of real time (it plays what it is sent in turn)
MUSIC_LEAD = 0.06


class Call:
    def __init__(self, manager: CallManager, log_row: dict[str, Any], *, carrier: str, direction: str,
                 from_number: str, to_number: str, agent: dict[str, Any] | None, number: dict[str, Any] | None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.id: str = log_row["call_uuid"]
        self.log_id: int = log_row["id"]
        self.carrier = carrier
        self.direction = direction
        self.from_number = from_number
        self.to_number = to_number
        self.agent = agent
        self.number = number
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.carrier_sid: str | None = log_row.get("carrier_sid")
        self.status: str = log_row.get("call_status") or "queued"
        self.created = time.monotonic()
        self.answered: float | None = None
        self.leg: CallLeg | None = None
        self.bus: CallBus | None = None
        self.amd: AmdResult | None = None
        self.transfer: TransferRequest | None = None
        self.transfer_result: TransferResult | None = None
        self.hangup: Hangup | None = None
        self.ended = asyncio.Event()
        #: the store confirmed this process owns the call and may end it (`CallManager.owns`)
        self.end_claimed = False
        #: another process adopted the call and this one let it go (`released`, or an end that lost the row)
        self.moved = False
        #: the conversation's turn timeline (gateway/turns.py), from the answer on
        self.timeline: Timeline | None = None
        #: loop time the audio now being fed reached the carrier side, when `feed_audio()` runs later than that (RTP's
        #: jitter buffer sets it per frame); None: the audio is fed as it arrives. The timeline dates caller
        #: speech by it.
        self.inbound_arrived: float | None = None
        #: pieces of caller audio fed after the call ended (the carrier's media was still closing: a busy loop
        #: plays a burst of buffered RTP out then): ignored, counted, so the media's counters add up
        self.audio_after_end = 0
        self._clock: Callable[[], float] = time.monotonic
        self._taps: list[Tap] = []
        #: when set (AMD), the engine's play/mark/clear go through it first: held until a human is confirmed,
        #: dropped while a voicemail message plays. Duck-typed: engine_play(), engine_mark(), engine_clear().
        self.output_gate: Any = None
        self._engine_task: asyncio.Task[None] | None = None
        self._attaching = False      # attach() began (open_media() alone leaves it False)
        #: API transfers waiting to hear whether the carrier took the request (id of the TransferRequest → future)
        self._transfer_waiters: dict[int, asyncio.Future[None]] = {}
        self._engine: Any = None
        #: a transfer waiting for the engine to say its transfer_message (then the engine transfers)
        self._say_pending: TransferRequest | None = None
        #: the attended transfer's consultation call, current or last (gateway/consult.py)
        self.consultation: Consultation | None = None
        #: the call's recording while it is written (gateway/recording/), and where it goes
        self.recorder: Recorder | None = None
        self.recording_info: dict[str, Any] = {}
        #: hold and mute (docs/hold.md). `held`: by the gateway (API or engine): music to
        #: the caller, the engine's output waits; `remote_held`: by the far end (SIP re-INVITE sendonly/inactive);
        #: `muted`: the caller's audio does not reach the engine. Held either way the engine hears nothing either.
        self.held = False
        self.remote_held = False
        self.muted = False
        self._music: HoldMusic | None = None
        self._music_due = 0.0
        #: a per-call recording override given to dispatch ({enabled, channels}); travels in the row (adoption)
        self.recording_request: dict[str, Any] | None = (log_row.get("recording") or {}).get("request")
        self.log = ContextLogger(log, {"call_id": self.id, "carrier": carrier})

    # -- description --------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Live view of the call (API, live page, engine info)."""
        c = self.bus.counters if self.bus else None
        return {
            "call_id": self.id, "id": self.log_id, "carrier": self.carrier, "direction": self.direction,
            "from_number": self.from_number, "to_number": self.to_number,
            "agent_id": (self.agent or {}).get("id"), "status": self.status, "carrier_sid": self.carrier_sid,
            "duration": round(time.monotonic() - (self.answered or self.created), 1),
            "amd": self.amd.answered_by.value if self.amd else None,
            "transfer": {"target": self.transfer.number, "outcome": self.transfer_result.outcome
                         if self.transfer_result else "pending"} if self.transfer else None,
            "consult": self.consultation.describe() if self.consultation else None,
            "metadata": self.metadata, "held": self.held, "remote_held": self.remote_held, "muted": self.muted,
            "frames_in": c.frames_in if c else 0, "frames_out": c.frames_out if c else 0,
            "dropped_in": c.dropped_in if c else 0, "level_in": c.level_in if c else 0,
            "level_out": c.level_out if c else 0,
            "timing": self.timing()["summary"] if self.timeline is not None else None,
        }

    def timing(self) -> dict[str, Any]:
        """Turns, summary and long silences so far (gateway/turns.py); empty before the answer."""
        if self.timeline is None:
            return {"summary": None, "turns": [], "long_silences": []}
        return analyze(self.timeline, self._clock())

    @property
    def is_active(self) -> bool:
        return not self.ended.is_set()

    # -- call log -----------------------------------------------------------------------------------------------
    async def record(self, **fields: Any) -> None:
        """Update this call's log row (errors are logged, never raised into a media path)."""
        if "call_status" in fields:
            self.status = fields["call_status"]
        try:
            await self.manager.store.update_call(self.log_id, **fields)
        except Exception:
            self.log.exception("call log update failed")

    async def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Record a call event and deliver the agent's lifecycle webhook (queued; never blocks audio)."""
        await self.manager.emit(self, event, data or {})

    def set_carrier_sid(self, sid: str) -> None:
        old, self.carrier_sid = self.carrier_sid, sid
        self.manager.index_sid(self, sid, old)

    # -- media --------------------------------------------------------------------------------------------------
    def open_media(self, leg: CallLeg, carrier_rate: int) -> None:
        """The synchronous first half of `attach()`: the bus exists from here on, so the caller's audio queues for
        the engine (behind `CallStarted`) instead of being dropped. A carrier whose caller may speak before
        `attach()` has run (SIP: the caller may send RTP right after our 200 OK, RFC 3264 §6) calls this the moment
        it answers, then `attach()`, which starts the engine after its call-log writes."""
        if self.bus is not None:
            raise RuntimeError("call already attached")
        engine = self.manager.engines.for_agent(self.agent)
        self.leg = leg
        self.bus = CallBus(carrier_rate, engine.sample_rate)
        self.bus.on_turnaround = self.manager.metrics.turnaround_observer(self.carrier)
        self._engine = engine
        self._clock = asyncio.get_running_loop().time
        self.timeline = Timeline(self._clock())
        self.add_tap(SpeechTap(self))
        self.bus.feed_event(CallStarted(self.id, self.carrier, self.direction, self.from_number, self.to_number,
                                        (self.agent or {}).get("id"), dict(self.metadata)))

    async def attach(self, leg: CallLeg, carrier_rate: int) -> None:
        """Media is flowing: create the bus at the carrier's rate (unless `open_media()` did) and start the agent's
        engine."""
        if self._attaching:
            raise RuntimeError("call already attached")
        self._attaching = True
        if self.bus is None:
            self.open_media(leg, carrier_rate)
        elif self.leg is not leg:
            raise RuntimeError("call already attached to another leg")
        engine = self._engine
        metrics = self.manager.metrics
        await self.manager.gateway.recordings.start(self)
        self.answered = time.monotonic()
        metrics.child(metrics.setup, self.carrier, self.direction).observe(self.answered - self.created)
        self.manager.gateway.tracing.media_up(self)
        await self.record(call_status="in-progress", answered_at=utcnow())
        await self.emit("phone_call:accepted")
        if self.ended.is_set():  # hung up while the row was written: no engine for a finished call
            return
        session = EngineSession(self, engine.sample_rate)
        self._engine_task = asyncio.create_task(self._run_engine(engine, session), name=f"engine-{self.id}")
        await self.emit("conversation:started")
        self.log.info("call attached", extra={"rate": carrier_rate, "engine_rate": engine.sample_rate})

    def engine_connected(self) -> None:
        """The engine read the call for the first time (EngineSession): the end of call setup."""
        self.manager.gateway.tracing.engine_connected(self)

    def add_tap(self, tap: Tap) -> None:
        """Observe inbound carrier-rate PCM (AMD, VAD, meters) before it reaches the engine."""
        self._taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    def feed_audio(self, pcm: bytes) -> None:
        if self.bus is None or self.ended.is_set():
            if self.ended.is_set():
                self.audio_after_end += 1
            return
        for tap in self._taps:
            tap(pcm)
        if self.muted or self.held or self.remote_held:
            return
        self.bus.feed_audio(pcm)

    def resample_job(self, pcm: bytes) -> tuple[StreamResampler, bytes] | None:
        """The resampling `feed_audio(pcm)` will do, if any (gateway/mediabatch.py computes it ahead, batched)."""
        bus = self.bus
        if bus is None or self.muted or self.held or self.remote_held or self.ended.is_set():
            return None
        return bus.inbound_job(pcm)

    def feed_event(self, event: BusItem) -> None:
        if self.bus is not None and not self.ended.is_set():
            self.bus.feed_event(event)

    def _attached_bus(self) -> CallBus:
        """The bus of an attached call: what runs after attach() (engine, carrier sender, transfers) uses this."""
        if self.bus is None:
            raise RuntimeError(f"call {self.id} is not attached")
        return self.bus

    async def next_inbound(self) -> BusItem:
        return await self._attached_bus().next_inbound()

    async def next_outbound(self, *, on_wire: bool = True,
                            direct: Callable[[AudioFrame], bool] | None = None) -> BusItem:
        """Next item for the carrier to send; hangup/transfer/hold requests are carried out here, in order. While
        the gateway holds the call it is music on hold, paced at real time, and the engine's output waits.

        `on_wire=False`: the carrier sends agent audio later than it takes it (Exotel packs frames into chunks) and
        reports each frame with `sent()` when it really goes out, so the turn timeline dates it there.

        `direct`: a sender that can write an audio frame synchronously (returning whether it did) gets the engine's
        frames handed to it while it waits here, without a task switch per frame (CallBus.next_outbound)."""
        bus = self._attached_bus()
        sink = self._direct_sink(direct, on_wire) if direct is not None else None
        while True:
            if self.held:
                frame = await self._music_paced()
                if frame is not None:
                    return frame
                continue
            item = await bus.next_outbound(sink)
            if type(item) is AudioFrame:       # nearly every item: straight out (the checks below are for actions)
                if on_wire:
                    self._played(item)
                return item
            if isinstance(item, Hangup):
                await self._hangup_now(item.source, item.reason)
            elif isinstance(item, TransferRequest):
                await self._transfer_now(item)
            elif isinstance(item, ConsultRequest):
                await self._consult_from_engine(item)
            elif isinstance(item, HoldRequest):
                if self._hold_state(item.held, "engine"):
                    await self._engine_hold(item.held)
            elif type(item) is not Wake:
                self._played(item)             # a Clear, Mark, SendDtmf… (audio returned above)
                return item

    def _direct_sink(self, direct: Callable[[AudioFrame], bool], on_wire: bool) -> Callable[[AudioFrame], bool]:
        """`direct` as the bus calls it: not while the call is held (the music plays; engine audio waits), and a
        frame it wrote is the agent's audio played (turn timeline, recording) as next_outbound() would say."""
        def sink(item: AudioFrame) -> bool:
            if self.held or not direct(item):
                return False
            if on_wire:
                self._played(item)
            return True
        return sink

    def sent(self, frame: AudioFrame) -> None:
        """A frame taken with `next_outbound(on_wire=False)` went out to the carrier now."""
        self._played(frame)

    def next_outbound_nowait(self) -> BusItem | None:
        """For clock-driven senders (RTP, one call per 20 ms tick); leg actions run in their own task."""
        bus = self._attached_bus()
        while True:
            if self.held:
                return self._music_frame()
            item = bus.next_outbound_nowait()
            if type(item) is AudioFrame:       # nearly every item: straight out (the checks below are for actions)
                self._played(item)
                return item
            if isinstance(item, Hangup):
                asyncio.create_task(self._hangup_now(item.source, item.reason))
            elif isinstance(item, TransferRequest):
                asyncio.create_task(self._transfer_now(item))
            elif isinstance(item, ConsultRequest):
                asyncio.create_task(self._consult_from_engine(item))
            elif isinstance(item, HoldRequest):
                if self._hold_state(item.held, "engine"):   # at once: the next frame is already music
                    asyncio.create_task(self._engine_hold(item.held))
            elif type(item) is not Wake:
                if item is not None:
                    self._played(item)
                return item

    # -- hold, music on hold, mute ---------------------------------------------------------------------------------
    def _music_frame(self) -> AudioFrame:
        music = self._music
        assert music is not None and self.bus is not None
        frame = AudioFrame(music.frame(), self.bus.carrier_rate)
        if self.recorder is not None:
            self.recorder.agent(frame.pcm)
        return frame

    async def _music_paced(self) -> AudioFrame | None:
        """The next 20 ms of music, handed out at real time (at most MUSIC_LEAD ahead); None when the hold ended
        while waiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._music_due < now - 0.2:           # the first frame, or the sender fell behind: restart the clock
            self._music_due = now
        wait = self._music_due - MUSIC_LEAD - now
        if wait > 0:
            await asyncio.sleep(wait)
            if not self.held:
                return None
        self._music_due += 0.02
        return self._music_frame()

    def _hold_state(self, on: bool, source: str) -> bool:
        """Switch the gateway's hold at once (the media side); False when it already was so."""
        if on == self.held or self.bus is None or (on and self.ended.is_set()):
            return False
        self.held = on
        if on:
            rate = self.bus.carrier_rate
            self._music = HoldMusic(music_for(self.manager.gateway.settings.moh_file, rate), rate)
            self._music_due = 0.0
            if self.bus.outbound.empty():
                self.bus.outbound.put_nowait(Wake())   # a sender waiting for engine audio starts the music now
        self.feed_event(HoldState(on, source))
        return True

    async def set_hold(self, on: bool, source: str) -> bool:
        """Put the caller on hold (music on hold, the engine paused and hearing nothing) or take them off it, and
        tell the carrier where it has a hold of its own (SIP re-INVITE a=sendonly / a=sendrecv). A carrier's
        refusal (CarrierError) undoes the change and is raised. False when nothing changed."""
        changed = self._hold_state(on, source)
        return await self._carrier_hold(on, source) if changed else False

    async def _carrier_hold(self, on: bool, source: str) -> bool:
        set_hold = getattr(self.leg, "set_hold", None)
        if set_hold is not None:
            try:
                await set_hold(self, on)
            except CarrierError:
                self._hold_state(not on, source)
                raise
        self.log.info("on hold" if on else "off hold", extra={"source": source})
        await self.emit("call:hold" if on else "call:resumed", {"source": source})
        return True

    async def _engine_hold(self, on: bool) -> None:
        """The engine's hold request reached the head of its audio and the media side is held: tell the carrier
        (a refusal is logged, not raised: the engine hears the hold undone)."""
        try:
            await self._carrier_hold(on, "engine")
        except CarrierError as e:
            self.log.warning("hold refused by the carrier: %s", e.message)

    async def remote_hold(self, on: bool) -> None:
        """The far end put the call on hold (SIP re-INVITE a=sendonly/inactive) or resumed it: the engine hears
        nothing meanwhile and is told; nothing is sent to the far end (the carrier stops sending)."""
        if on == self.remote_held or self.ended.is_set():
            return
        self.remote_held = on
        self.feed_event(HoldState(on, "remote"))
        await self.emit("call:hold" if on else "call:resumed", {"source": "remote"})

    async def set_mute(self, on: bool, source: str) -> bool:
        """Stop (or resume) passing the caller's audio to the engine; the caller still hears the agent. False when
        nothing changed."""
        if on == self.muted or self.ended.is_set():
            return False
        self.muted = on
        self.feed_event(MuteState(on, source))
        await self.emit("call:muted" if on else "call:unmuted", {"source": source})
        return True

    def _played(self, item: BusItem) -> None:
        """An item handed to the carrier: agent audio and clears go on the turn timeline and into the recording."""
        recorder, timeline = self.recorder, self.timeline   # (the timeline is set by attach(), with the bus)
        if type(item) is AudioFrame:
            if timeline is not None:
                timeline.agent_frame(item.pcm, self._clock())   # bus frames are 20 ms
            if recorder is not None:
                recorder.agent(item.pcm)
        elif type(item) is Clear:
            if timeline is not None:
                timeline.agent_clear(self._clock())
            if recorder is not None:
                recorder.clear_agent()

    # -- actions ------------------------------------------------------------------------------------------------
    async def request_hangup(self, source: HangupSource, reason: str, *, immediate: bool = False) -> None:
        """Hang up: the engine's request waits behind queued audio; API/system requests act at once."""
        if self.ended.is_set():
            return
        if self.bus is None or immediate or source is not HangupSource.AGENT:
            if self.bus is not None:
                self.bus.clear()
            await self._hangup_now(source, reason)
        else:
            await self.bus.flush_play()
            await self.bus.send_control(Hangup(source, reason))

    async def _hangup_now(self, source: HangupSource, reason: str) -> None:
        if self.ended.is_set() or self.hangup is not None:
            return
        self.hangup = Hangup(source, reason)
        if not await self.manager.owns(self, source.value, reason):
            return          # adopted by another process meanwhile: the call goes on there
        try:
            if self.leg is not None:
                await self.leg.hangup(self, reason)
        except Exception:
            self.log.exception("carrier hangup failed")
        finally:
            await self.end(source, reason)

    def transfer_request(self, number: str | None = None, *, by_engine: bool = False) -> TransferRequest:
        """The transfer to perform under the agent's transfer settings (gateway/transfer.py); TransferRefused
        says why there is none."""
        return resolve_transfer(self.agent, number, by_engine=by_engine)

    async def request_transfer(self, number: str | None = None, *, wait: float | None = None,
                               by_engine: bool = False) -> None:
        """Transfer behind the audio already queued, after the option's transfer_message (spoken by the engine,
        or played when it is a WAV). With `wait` (the API), return once the carrier has taken the request,
        raising what the carrier's refusal raised (CarrierError), so a refused transfer is reported as an error
        rather than as a success; after `wait` seconds with the request still queued, return (pending)."""
        try:
            req = self.transfer_request(number, by_engine=by_engine)
        except TransferRefused as e:
            self.log.warning("transfer refused: %s", e)
            self.feed_event(TransferResult(number, f"failed: {e}"))
            return
        pending = self._say_pending
        if pending is not None and by_engine and pending.number == req.number:
            self._say_pending = None        # the engine said the message: this is its "then transfer"
            req = TransferRequest(pending.number, pending.backup_numbers, None)
        elif req.message:
            after = await self._before_transfer(req)
            if after is None:
                return                      # the engine is saying the message; its transfer follows
            req = after
        await self._queue_transfer(req, wait)

    async def _before_transfer(self, req: TransferRequest) -> TransferRequest | None:
        """The transfer_message before the transfer: a WAV is played here; text goes to an engine that speaks
        (None: wait for its transfer, bounded by SAY_TIMEOUT), else to a carrier leg that says text itself
        (`says_text`, Twilio's <Say>), else it is spoken here by the offline synthesizer (gateway/speech.py) and
        played, so the caller hears it on every carrier."""
        message = (req.message or "").strip()
        if is_wav(message):
            await self._play(message, "transfer message")
            return TransferRequest(req.number, req.backup_numbers, None)
        if getattr(self._engine, "speaks_text", False):
            self._say_pending = req
            self.feed_event(SayThenTransfer(message, req.number))
            asyncio.get_running_loop().call_later(SAY_TIMEOUT, self._say_timed_out, req)
            return None
        if getattr(self.leg, "says_text", False):
            return req
        if await self._play(message, "transfer message"):
            return TransferRequest(req.number, req.backup_numbers, None)
        return req

    async def _play(self, message: str, what: str) -> bool:
        """Play `message` into the bus and let it drain: a WAV file or URL (SSRF rule: docs/security.md), or text
        spoken by the offline synthesizer (gateway/speech.py). A message that cannot be made is logged, not
        fatal: False."""
        from .amd.wav import WavError, load_message
        from .speech import AudioError, synthesize
        from .wavfetch import fetch_wav, is_wav_url
        bus = self._attached_bus()
        try:
            if not is_wav(message):
                pcm = await synthesize(message, bus.engine_rate)
            elif is_wav_url(message):
                pcm = await fetch_wav(message, bus.engine_rate, self.manager.gateway.settings.allow_private_webhooks)
            else:
                pcm = load_message(message, bus.engine_rate)
        except (WavError, AudioError) as e:
            self.log.error("%s not played: %s", what, e)
            return False
        await bus.play(pcm)
        await bus.flush_play()
        return True

    def _say_timed_out(self, req: TransferRequest) -> None:
        if self._say_pending is req and not self.ended.is_set():
            self._say_pending = None
            self.log.warning("engine did not transfer after saying the transfer message: transferring now")
            asyncio.ensure_future(self._queue_transfer(req, None))

    async def _queue_transfer(self, req: TransferRequest, wait: float | None) -> None:
        taken: asyncio.Future[None] | None = asyncio.get_running_loop().create_future() if wait is not None else None
        if taken is not None:
            self._transfer_waiters[id(req)] = taken
        try:
            bus = self._attached_bus()
            await bus.flush_play()
            await bus.send_control(req)
            if taken is not None:
                await asyncio.wait({taken}, timeout=wait)
        finally:
            self._transfer_waiters.pop(id(req), None)
            if taken is not None and not taken.done():
                taken.cancel()      # still queued: the outcome reaches the log and the engine as usual
        failure = taken.exception() if taken is not None and not taken.cancelled() else None
        if failure is not None:
            raise failure

    async def _transfer_now(self, req: TransferRequest) -> None:
        taken = self._transfer_waiters.pop(id(req), None)
        self.transfer = req
        await self.emit("call:transfer_requested", {"number": req.number, "backup_numbers": req.backup_numbers})
        try:
            if self.leg is None:
                raise RuntimeError(f"call {self.id} has no carrier leg")
            await self.leg.transfer(self, req)
        except Exception as e:
            if isinstance(e, CarrierError):
                self.log.warning("transfer refused: %s", e.message)
            else:
                self.log.exception("transfer failed")
            # is_call_transfer stays false: the carrier never took the transfer
            await self.transfer_finished(TransferResult(req.number, f"failed: {e}"))
            if taken is not None and not taken.done():
                taken.set_exception(e)
            return
        await self.record(is_call_transfer=True, transfer_target=req.number)
        if taken is not None and not taken.done():
            taken.set_result(None)

    async def transfer_finished(self, result: TransferResult) -> None:
        """Carriers report the outcome of a transfer (target reached, busy, no-answer…)."""
        self.transfer_result = result
        await self.record(transfer_target=result.target, transfer_outcome=result.outcome)
        await self.emit("call:transfer_result", {"target": result.target, "outcome": result.outcome})
        self.feed_event(result)

    # -- attended transfer (gateway/consult.py) -------------------------------------------------------------------
    def consult_request(self, number: str | None = None, message: str | None = None, *,
                        by_engine: bool = False) -> ConsultRequest:
        """The consultation a request means, or ConsultError / TransferRefused saying why there is none. The target
        follows the transfer rules (gateway/transfer.py): the agent's first static option when no number is named,
        and only an option's number when the engine names one of an agent with dynamic options."""
        if self.bus is None or self.leg is None:
            raise ConsultError(f"call {self.log_id} is not connected yet (status {self.status}); a consultation "
                               "needs media")
        if not isinstance(self.leg, ConsultingLeg):
            raise ConsultError(f"carrier {self.carrier} has no attended transfer in this gateway (docs/api.md, "
                               "attended transfer); use a blind transfer")
        if self.consultation is not None and self.consultation.active:
            raise ConsultError(f"a consultation with {self.consultation.number} is already in progress "
                               f"({self.consultation.state})")
        return ConsultRequest(self.transfer_request(number, by_engine=by_engine).number, message)

    def _consulting_leg(self) -> ConsultingLeg:
        """The leg, as one that runs attended transfers (consult_request() refused the others already)."""
        if not isinstance(self.leg, ConsultingLeg):
            raise ConsultError(f"carrier {self.carrier} has no attended transfer in this gateway")
        return self.leg

    async def start_consult(self, req: ConsultRequest) -> None:
        """Put the caller on hold and dial the target through the carrier (raises what the carrier's refusal
        raised, CarrierError, after reporting the consultation `failed`)."""
        if self.consultation is not None and self.consultation.active:
            raise ConsultError(f"a consultation with {self.consultation.number} is already in progress")
        self.consultation = Consultation(req.number, req.message)
        self._attached_bus().clear()   # what the engine still had queued for the caller is not for the target
        await self._consult_changed()
        try:
            await self._consulting_leg().consult(self, req)
        except Exception as e:
            if not isinstance(e, CarrierError):
                self.log.exception("consultation call failed")
            await self.consult_update(FAILED, getattr(e, "message", None) or str(e) or type(e).__name__)
            raise

    async def _consult_from_engine(self, req: ConsultRequest) -> None:
        """The engine's consult request, reached after the audio queued before it."""
        try:
            await self.start_consult(req)
        except ConsultError as e:
            self.log.warning("consultation refused: %s", e.message)
            self.feed_event(ConsultEvent(FAILED, req.number, e.message))
        except Exception:  # noqa: BLE001 - start_consult reported it `failed` (log, webhook, engine)
            return

    async def consult_update(self, state: str, reason: str = "") -> None:
        """Carriers report the consultation's progress. `answered` moves the engine's audio path to the target
        (and plays a WAV message to it); any end state moves it back to the caller."""
        c = self.consultation
        if c is None or not c.active or c.state == state:
            return
        c.state, c.reason = state, reason
        if self.bus is not None:
            self.bus.clear()        # audio queued for the previous party must not reach the new one
        await self._consult_changed()
        if state == ANSWERED and is_wav(c.message) and self.bus is not None:
            await self._play((c.message or "").strip(), "consultation message")

    async def consult_completed(self, method: str) -> None:
        """The carrier joined caller and target (`method`: refer_replaces, bridge, conference): the call log and
        the engine get the transfer's outcome, as for a blind transfer."""
        c = self.consultation
        if c is None or not c.active:
            return
        c.state, c.method = COMPLETED, method
        await self.record(is_call_transfer=True, transfer_target=c.number, extra={"transfer_method": method})
        await self._consult_changed()
        await self.transfer_finished(TransferResult(c.number, "completed"))

    async def _consult_changed(self) -> None:
        c = self.consultation
        assert c is not None
        await self.record(extra={"consult": c.describe()})
        await self.emit("call:consult", c.describe())
        text = c.message if c.state == ANSWERED and not is_wav(c.message) else None
        self.feed_event(ConsultEvent(c.state, c.number, c.reason, text))
        self.log.info("consultation %s", c.state, extra={"target": c.number, "reason": c.reason})

    async def complete_consult(self) -> str:
        """Join the caller and the answered target (attended transfer); returns how it was done."""
        c = self.consultation
        if c is None or c.state != ANSWERED:
            raise ConsultError("no answered consultation to complete" + (f" (it is {c.state})" if c else ""))
        self.transfer = TransferRequest(c.number)
        await self.emit("call:transfer_requested", {"number": c.number, "backup_numbers": [], "attended": True})
        await self._consulting_leg().consult_complete(self)
        return c.method or ""

    async def cancel_consult(self) -> None:
        """End the consultation call and give the caller back to the engine."""
        c = self.consultation
        if c is None or not c.active:
            raise ConsultError("no consultation in progress" + (f" (the last one is {c.state})" if c else ""))
        await self._consulting_leg().consult_cancel(self)

    def hold_frames(self) -> Iterator[bytes] | None:
        """What a caller on hold hears, as an endless iterator of 20 ms PCM16 frames at the carrier's rate: the
        music on hold (docs/hold.md). Carriers that hold the caller themselves (SIP consultation) pull from it."""
        rate = self.bus.carrier_rate if self.bus is not None else 8000
        return iter(HoldMusic(music_for(self.manager.gateway.settings.moh_file, rate), rate).frame, b"")

    async def set_amd(self, result: AmdResult) -> None:
        """Record an AMD verdict from any source and pass it to the engine."""
        self.amd = result
        ab = result.answered_by
        metrics = self.manager.metrics
        metrics.amd.labels(self.carrier, ab.value, result.source).inc()
        metrics.amd_decision.labels(self.carrier, result.source).observe(result.duration_ms / 1000)
        await self.record(amd_detected=True, amd_answered_by=ab.value, amd_duration=result.duration_ms / 1000,
                          is_fax=ab.value == "fax", is_voicemail=ab.is_machine)
        await self.emit("call:amd_result", {"answered_by": ab.value, "duration_ms": result.duration_ms,
                                            "source": result.source})
        self.feed_event(result)

    # -- end ----------------------------------------------------------------------------------------------------
    async def end(self, source: HangupSource | str, reason: str = "", status: str | None = None) -> None:
        """The call is over at the carrier: close the log row, stop the engine, fire the closing webhooks."""
        if self.ended.is_set():
            return
        source = HangupSource(source)
        if not await self.manager.owns(self, (self.hangup.source if self.hangup else source).value,
                                       self.hangup.reason if self.hangup else reason):
            return          # adopted by another process meanwhile: the call goes on there
        if self.ended.is_set():
            return          # ended by another path while the store answered
        if self.hangup is None:
            self.hangup = Hangup(source, reason)
        self.ended.set()
        self.held = False              # a sender still asking for frames gets the engine's queue again
        self.manager.gateway.tracing.call_ended(self, self.hangup.reason)
        if self.bus is not None:
            self.bus.feed_event(self.hangup)
        await self.manager.gateway.recordings.finish(self)
        final = status or ("completed" if self.answered else self.status if self.status not in
                           ("queued", "ringing", "initiated") else "canceled")
        duration = round(time.monotonic() - self.answered, 3) if self.answered else 0.0
        timing = self.timing() if self.timeline is not None else None
        extra: dict[str, Any] = {}
        if self.consultation is not None and self.consultation.active:   # the carrier leg ends its call too
            self.consultation.state, self.consultation.reason = ENDED, "the call ended"
            extra["extra"] = {"consult": self.consultation.describe()}
        await self.record(call_status=final, ended_at=utcnow(), call_duration_in_seconds=duration,
                          hangup_source=self.hangup.source.value, hangup_reason=self.hangup.reason,
                          **({"timing": timing["summary"]} if timing else {}), **extra)
        if timing:
            self.manager.observe_timing(timing)
        if self.answered:
            await self.emit("conversation:ended", {"timing": timing["summary"], "turns": timing["turns"],
                                                   "long_silences": timing["long_silences"]} if timing else {})
        await self.emit("hang_up", {"source": self.hangup.source.value, "reason": self.hangup.reason})
        await self.manager.finished(self)
        task = self._engine_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            # give the engine a moment to see the Hangup event and finish on its own
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done:
                task.cancel()
        self.log.info("call ended", extra={"source": source.value, "reason": reason, "status": final})
        self._release()

    def _release(self) -> None:
        """Break the references that make a finished call a cycle (call ↔ leg, call ↔ its taps, call ↔ AMD
        gate), so reference counting frees it at once. `gateway serve` leaves cycles to a collector it runs
        rarely (cli.py), and every call left to it grew RSS until the next full collection (issue 13:
        ≈ 32 KB per finished call, no plateau). The call's row, its bus counters and describe() stay valid."""
        self._taps.clear()
        self.output_gate = None
        self.leg = None

    async def _run_engine(self, engine: Any, session: EngineSession) -> None:
        reason = "agent_finished"
        try:
            await engine.handle_call(session)
        except asyncio.CancelledError:
            return
        except Exception:
            self.log.exception("engine failed")
            reason = "engine_error"
        if not self.ended.is_set():
            await self.request_hangup(HangupSource.AGENT, reason)


def new_call_uuid() -> str:
    return uuid.uuid4().hex
