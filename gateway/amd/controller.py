"""AMD on a live outbound call: tap the callee's audio, decide, and act on the verdict.

    human / unknown → record the verdict, play what the engine has said so far, let the conversation run
    machine        → mute the engine; wait for the beep or the end of the greeting; play the voicemail WAV (or
                     hand the text to the engine); hang up with hangup_reason "voicemail"
    fax            → hang up (hangup_reason "fax")
    sit            → special information tones + network announcement: hang up (hangup_reason "sit"), no voicemail

Carriers call `maybe_start_amd(call)` once for an outbound call, before (or right after) `call.attach()`; it is a
no-op when the agent has AMD off. Carriers with their own AMD (Twilio, SignalWire, Telnyx: when the agent picks that
provider) pass their verdict to `report_amd(call, result)` and get the same behaviour and the same call-log fields.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from voicecodecs import StreamResampler

from ..frames import AmdResult, AnsweredBy, HangupSource
from .detector import AmdDecision, AmdDetector
from .gate import EngineOutputGate
from .settings import AmdSettings, amd_settings
from .wav import WavError, load_message

if TYPE_CHECKING:
    from ..call import Call

log = logging.getLogger("gateway.amd")

#: live controllers by call id (carriers reach theirs through report_amd)
_controllers: dict[str, AmdController] = {}

#: a carrier's own AMD that never reports is given up on after this long (the conversation then starts)
EXTERNAL_TIMEOUT_S = 40.0
#: a text voicemail message: the engine must start speaking within this, and is cut off after MAX
TEXT_START_TIMEOUT_S = 8.0
TEXT_MAX_S = 120.0
#: quiet after the engine's last audio that means it has finished the message
TEXT_DONE_QUIET_S = 1.5


def maybe_start_amd(call: Call, *, detector: AmdDetector | None = None) -> AmdController | None:
    """Start AMD for an outbound call if the agent enables it; returns the controller or None.

    `detector`: one fed with early media (SIP 183; build it with `early_media=True`). A machine greeting it heard
    counts at the answer; anything else heard before the answer (ringback, silence, an announcement) does not, and
    analysis restarts on the answered audio. Call this before `call.attach()` so the engine's first words are held
    from the start (after attach works too; anything queued before is not held).
    """
    if call.direction != "outbound" or call.id in _controllers:
        return _controllers.get(call.id)
    try:
        settings = amd_settings(call.agent)
    except ValueError as e:
        call.log.warning("AMD settings invalid, AMD off: %s", e)
        return None
    if not settings.enabled:
        return None
    external = settings.provider != "gateway" and settings.provider == call.carrier   # the carrier's own AMD
    ctl = AmdController(call, settings, detector=detector, external=external)
    ctl.start()
    return ctl


async def report_amd(call: Call, result: AmdResult) -> None:
    """A carrier's own AMD verdict (Twilio AnsweredBy): run the agent's behaviour, or just record it."""
    ctl = _controllers.get(call.id)
    if ctl is not None:
        await ctl.on_result(result)
    else:
        await call.set_amd(result)


def controller_for(call: Call) -> AmdController | None:
    return _controllers.get(call.id)


class AmdController:
    def __init__(self, call: Call, settings: AmdSettings, *, detector: AmdDetector | None = None,
                 external: bool = False) -> None:
        self.call = call
        self.settings = settings
        self.external = external
        self.source = settings.provider if external else "gateway"
        self.detector: AmdDetector | None = None
        self._message_end_next = False   # the next local detector starts in the end-of-message phase
        self._early = detector
        self.gate = EngineOutputGate(call)
        self.results: list[AmdResult] = []
        self.done = asyncio.Event()
        self._decisions: asyncio.Queue[AmdDecision | AmdResult] = asyncio.Queue()
        self._resampler: StreamResampler | None = None
        self._tapping = False
        self._offset_ms = 0          # for a local end-of-message detector started after an external machine_start
        self._started = time.monotonic()
        self._clock0: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.log = call.log

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        _controllers[self.call.id] = self
        self.call.output_gate = self.gate
        if not self.external:
            early = self._early
            if early is not None and early.machine_by_speech:
                # the greeting already played as early media (voicemail platforms answer in 183): machine at answer
                cause = early.first.cause if early.first else None
                self.log.info("AMD: machine greeting heard in early media", extra={"cause": cause})
                self._decisions.put_nowait(AmdResult(AnsweredBy.MACHINE_START, 0, self.source))
                self._message_end_next = True
            self._tap_on()
        self._task = asyncio.create_task(self._run(), name=f"amd-{self.call.id}")
        self.log.info("AMD started", extra={"provider": self.settings.provider,
                                             "voicemail": self.settings.message_kind})

    def _tap_on(self) -> None:
        if not self._tapping:
            self.call.add_tap(self._on_audio)
            self._tapping = True

    def _tap_off(self) -> None:
        if self._tapping:
            self.call.remove_tap(self._on_audio)
            self._tapping = False

    def _finish(self) -> None:
        self._tap_off()
        self.done.set()
        if not self.call.is_active:
            _controllers.pop(self.call.id, None)

    # -- audio (carrier reader context: synchronous and cheap) ---------------------------------------------------
    def _on_audio(self, pcm: bytes) -> None:
        det = self.detector
        if det is None:
            det = self._new_detector()
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        for d in det.feed(pcm):
            self._decisions.put_nowait(d)
        if det.done:
            self._tap_off()

    def _new_detector(self, *, message_end: bool | None = None) -> AmdDetector:
        if message_end is None:
            message_end = self._message_end_next
        rate = self.call.bus.carrier_rate if self.call.bus is not None else 8000
        det_rate = rate if rate in (8000, 16000) else 16000
        self._resampler = StreamResampler(rate, det_rate) if det_rate != rate else None
        self.detector = AmdDetector(self.settings.params, det_rate,
                                    detect_message_end=self.settings.voicemail,
                                    start_in_message_end=message_end)
        return self.detector

    # -- verdicts ------------------------------------------------------------------------------------------------
    async def on_result(self, result: AmdResult) -> None:
        """A verdict from the carrier's own AMD."""
        self._decisions.put_nowait(result)

    async def _run(self) -> None:
        try:
            while self.call.is_active and not self.done.is_set():
                try:
                    item = await asyncio.wait_for(self._decisions.get(), 0.25)
                except TimeoutError:
                    self._watchdog()
                    if self._watch_over():
                        self.done.set()
                    continue
                if isinstance(item, AmdDecision):
                    self.log.info("AMD decision", extra={"answered_by": item.answered_by.value,
                                                         "at_ms": item.at_ms, "cause": item.cause})
                    item = AmdResult(item.answered_by, item.at_ms + self._offset_ms, self.source)
                await self._act(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("AMD failed; letting the conversation run")
            if self.gate.mode == "hold":
                await self.gate.release()
        finally:
            self._finish()
        # stay registered until the call ends so a late carrier verdict is ignored, not recorded over ours
        await self.call.ended.wait()
        _controllers.pop(self.call.id, None)

    def _watchdog(self) -> None:
        """Audio that should have arrived but did not is silence (DTX, loss, a carrier that stopped sending)."""
        call = self.call
        if call.answered is None:
            return
        start = self._clock0 if self._clock0 is not None else max(call.answered, self._started)
        elapsed_ms = (time.monotonic() - start) * 1000
        if self.external and not self._tapping:
            if elapsed_ms > EXTERNAL_TIMEOUT_S * 1000 and not self.results:
                self._decisions.put_nowait(AmdResult(AnsweredBy.UNKNOWN, int(elapsed_ms), self.source))
            return
        det = self.detector or self._new_detector()
        lag = elapsed_ms - det.time_ms
        if lag > 1000 and not det.done:
            for d in det.feed_silence(int(lag - 500)):
                self._decisions.put_nowait(d)

    def _watching(self) -> bool:
        """Our detector gave human and still listens for a beep (a recording's long pause before it)."""
        det = self.detector
        return not self.external and det is not None and det.phase == "beep_watch"

    def _watch_over(self) -> bool:
        """A human verdict's beep watch ended without a beep: nothing more will come."""
        return (bool(self.results) and self.results[-1].answered_by is AnsweredBy.HUMAN and not self._watching()
                and self._decisions.empty())

    async def _act(self, result: AmdResult) -> None:
        call, ab = self.call, result.answered_by
        last = self.results[-1].answered_by if self.results else None
        beep_after_human = last is AnsweredBy.HUMAN and ab is AnsweredBy.MACHINE_END_BEEP and not self.external
        if last not in (None, AnsweredBy.MACHINE_START) and not beep_after_human:
            return                                       # already final (e.g. a late carrier callback)
        self.results.append(result)
        if ab in (AnsweredBy.HUMAN, AnsweredBy.UNKNOWN):
            if not self._watching():
                self._tap_off()
            await call.set_amd(result)
            await self.gate.release()
            if not self._watching():
                self.done.set()
        elif ab in (AnsweredBy.FAX, AnsweredBy.SIT):
            # a fax, or the network's "not in service" announcement after SIT tones: nobody to talk to and no
            # voicemail to leave (a message dropped into an intercept would be logged as left, and is lost)
            self._tap_off()
            self._silence_engine()
            await call.set_amd(result)
            await call.request_hangup(HangupSource.SYSTEM, ab.value)
            self.done.set()
        elif ab is AnsweredBy.MACHINE_START:
            if self.external or self.settings.message_kind == "none":
                self._silence_engine()
            # else the engine stays held, not muted: our machine_start may still turn into human (a person's long
            # answer, then their wait), and then its opening line plays; a machine_end_* mutes it
            await call.set_amd(result)
            if self.settings.message_kind == "none":
                await self._hangup_voicemail("none")
            elif self.external:
                # the carrier's AMD stops at machine_start: follow the greeting to its end ourselves
                self._offset_ms = result.duration_ms
                self._clock0 = time.monotonic()          # the local detector's audio clock starts now
                self._message_end_next = True
                self.detector = None                     # created at the first audio, at the carrier's rate
                self._tap_on()
        else:                                            # machine_end_beep / _silence / _other
            # (machine_end_beep may follow our human verdict: the engine, speaking by now, is cut off for the message)
            self._tap_off()
            self._silence_engine()
            if self.settings.message_kind == "text":
                result.voicemail_message = self.settings.message
                self.gate.open()                         # before the engine hears the verdict and starts speaking
            await call.set_amd(result)
            await self._leave_message()
            self.done.set()

    def _silence_engine(self) -> None:
        if self.gate.mode != "mute":
            self.gate.mute()
            if self.call.bus is not None:
                self.call.bus.clear()

    # -- voicemail drop --------------------------------------------------------------------------------------------
    async def _leave_message(self) -> None:
        kind = self.settings.message_kind
        if kind == "audio":
            await self._play_wav()
        elif kind == "text":
            await self._engine_speaks()
        await self._hangup_voicemail(kind)

    async def _play_wav(self) -> None:
        call = self.call
        bus, message = call.bus, self.settings.message
        if bus is None or message is None:
            return
        try:
            pcm = load_message(message, bus.engine_rate)
        except WavError as e:
            self.log.error("voicemail message not played: %s", e)
            await call.record(voicemail_type="none")
            return
        await call.record(voicemail_type="audio")
        await call.emit("call:voicemail_started", {"type": "audio", "duration_ms": len(pcm) * 500 // bus.engine_rate})
        t0 = time.monotonic()
        duration = len(pcm) / 2 / bus.engine_rate
        await bus.play(pcm)
        await bus.flush_play()
        # Sent is not played: carriers that buffer (media websockets) take the audio faster than real time.
        # Wait for both the audio duration and an empty outbound queue (clock-driven RTP senders drain in real time).
        deadline = t0 + duration + 10.0
        while call.is_active and time.monotonic() < deadline:
            if time.monotonic() - t0 >= duration + 0.2 and bus.outbound.empty():
                break
            await asyncio.sleep(0.05)

    async def _engine_speaks(self) -> None:
        """The engine got AmdResult.voicemail_message: let it speak, and end the call once it has finished."""
        call = self.call
        await call.record(voicemail_type="text")
        await call.emit("call:voicemail_started", {"type": "text"})
        t0 = time.monotonic()
        gate = self.gate
        rate = call.bus.engine_rate if call.bus is not None else 16000
        while call.is_active:
            now = time.monotonic()
            if now - t0 > TEXT_MAX_S:
                break
            if gate.first_play is None:
                if now - t0 > TEXT_START_TIMEOUT_S:
                    self.log.warning("engine did not speak the voicemail text")
                    break
            else:
                spoken = gate.played_bytes / 2 / rate
                last_play = gate.first_play if gate.last_play is None else gate.last_play
                if (now - gate.first_play >= spoken and now - last_play >= TEXT_DONE_QUIET_S
                        and (call.bus is None or call.bus.outbound.empty())):
                    break
            await asyncio.sleep(0.05)
        self.gate.mute()

    async def _hangup_voicemail(self, kind: str) -> None:
        if not self.call.is_active:
            return
        if kind == "none":
            await self.call.record(voicemail_type="none")
        await self.call.request_hangup(HangupSource.SYSTEM, "voicemail")
        self.done.set()
