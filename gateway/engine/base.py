"""The voice-engine interface: what an engine implements and the per-call session it is handed.

An engine is any object with a `sample_rate` and an async `handle_call(session)`; the gateway calls it once per
call and converts every carrier's audio to and from `sample_rate`. Returning from `handle_call` ends the call
(hangup source `agent`), so an engine's lifetime is the conversation's.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..carrier import CarrierError
from ..consult import FAILED, ConsultError
from ..frames import (
    AudioFrame,
    BusItem,
    ConsultEvent,
    Event,
    Hangup,
    HangupSource,
    HoldRequest,
    Mark,
    SendDtmf,
    TransferResult,
)
from ..transfer import TransferRefused, transfer_settings

if TYPE_CHECKING:
    from ..bus import CallBus
    from ..call import Call


class VoiceEngine(ABC):
    """Implement this for an in-process engine (speech-to-text → LLM → text-to-speech, or anything else)."""

    sample_rate: int = 16000
    #: True when the engine turns text into speech: it is then asked to say an agent's transfer_message before the
    #: transfer (a SayThenTransfer event). Engines that cannot leave the message to the carrier (Twilio <Say>) or
    #: play it as a WAV when it is one.
    speaks_text: bool = False

    @abstractmethod
    async def handle_call(self, session: EngineSession) -> None:
        """Converse: read caller audio and events from `session`, answer with `session.play()` and actions."""


class EngineSession:
    """The engine's handle on one call. Audio in and out is PCM16 mono at the engine's sample rate."""

    def __init__(self, call: Call, sample_rate: int) -> None:
        self._call = call
        self.sample_rate = sample_rate
        self._reading = False      # set on the first receive(): the engine is connected (call setup is over)

    @property
    def call_id(self) -> str:
        return self._call.id

    @property
    def transfer_options(self) -> dict[str, Any]:
        """The agent's transfers: `{"enabled", "options": [{number, type, backup_numbers, transfer_condition}]}`.
        The engine decides from each `transfer_condition` which option applies and names a dynamic one's number."""
        enabled, options = transfer_settings(self._call.agent)
        return {"enabled": enabled, "options": [o.for_engine() for o in options]}

    @property
    def agent(self) -> dict[str, Any]:
        return self._call.agent or {}

    @property
    def info(self) -> dict[str, Any]:
        """Who is calling whom and through which carrier, plus carrier custom parameters and call context."""
        return self._call.describe()

    @property
    def ended(self) -> bool:
        """True once the call is over (the engine still gets the final `Hangup` from `receive()`)."""
        return self._call.ended.is_set()

    @property
    def _bus(self) -> CallBus:
        """The call's bus: an engine session exists only for an attached call."""
        bus = self._call.bus
        if bus is None:
            raise RuntimeError("engine session of a call without a bus (not attached)")
        return bus

    async def receive(self, *, on_audio: Callable[[AudioFrame], bool] | None = None) -> AudioFrame | Event | None:
        """Next caller frame or event; None once the call has ended.

        `on_audio`: for an engine that can take a caller frame without waiting (the built-in echo): while this
        waits, caller frames are given to `on_audio` where the carrier's socket read them, with no task switch
        per frame; it must not block or await, and returns False to get the frame from `receive()` instead."""
        if not self._reading:
            self._reading = True
            self._call.engine_connected()
        bus = self._bus
        if self._call.ended.is_set() and not len(bus.inbound):
            return None
        return await bus.next_inbound(on_audio)   # (what call.next_inbound() does, one coroutine less per frame)

    async def __aiter__(self) -> AsyncIterator[BusItem]:
        while (item := await self.receive()) is not None:
            yield item
            if isinstance(item, Hangup):
                return

    async def play(self, pcm: bytes, *, end_of_utterance: bool = False) -> None:
        """Queue engine audio for the caller; waits while several seconds are already queued; no-op once ended."""
        if self._call.ended.is_set():
            return
        gate = self._call.output_gate
        if gate is not None and await gate.engine_play(pcm, end_of_utterance):
            return
        await self._bus.play(pcm)
        if end_of_utterance:
            await self._bus.flush_play()

    def play_nowait(self, pcm: bytes) -> bool:
        """`play()` without waiting, for `receive(on_audio=…)` callbacks: False (nothing taken; use `play()`) when
        it would have to wait (several seconds already queued) or an output gate holds the engine's audio (AMD)."""
        if self._call.ended.is_set():
            return True
        if self._call.output_gate is not None:
            return False
        return self._bus.play_nowait(pcm)

    def clear(self) -> None:
        """Barge-in: drop what has not been played yet."""
        gate = self._call.output_gate
        if gate is not None and gate.engine_clear():
            return
        self._bus.clear()

    async def mark(self, name: str) -> None:
        """Ask to be told (a `Mark` event) when everything queued so far has been played to the caller."""
        gate = self._call.output_gate
        if gate is not None and await gate.engine_mark(name):
            return
        # the audio queued before the mark includes a partial 20 ms frame still in the re-framer: send it (padded)
        # first, or the mark would reach the carrier ahead of it and be reported played too early
        await self._bus.flush_play()
        await self._bus.send_control(Mark(name))

    async def send_dtmf(self, digits: str) -> None:
        await self._bus.send_control(SendDtmf(digits))

    async def transfer(self, number: str | None = None) -> None:
        """Transfer to `number`, or to the agent's configured transfer number and its backups."""
        await self._call.request_transfer(number, by_engine=True)

    async def consult(self, number: str | None = None, message: str | None = None) -> None:
        """Attended transfer, step 1: after the audio queued so far, put the caller on hold and call `number` (the
        transfer rules of `transfer()` apply). `ConsultEvent`s report it; once `answered` you hear the target and
        speak to it (a WAV `message` is played to it, a text one comes back on the event for you to say). Then
        `consult_complete()` or `consult_cancel()`."""
        try:
            req = self._call.consult_request(number, message, by_engine=True)
        except (ConsultError, TransferRefused) as e:
            self._call.feed_event(ConsultEvent(FAILED, number or "", str(e)))
            return
        await self._bus.flush_play()
        await self._bus.send_control(req)

    async def consult_complete(self) -> None:
        """Join the caller and the answered target and leave the call; the outcome comes as `TransferResult`."""
        try:
            await self._call.complete_consult()
        except (ConsultError, CarrierError) as e:
            c = self._call.consultation
            self._call.feed_event(TransferResult(c.number if c else None, f"failed: {e}"))

    async def consult_cancel(self) -> None:
        """End the consultation call and talk to the caller again (`ConsultEvent` `cancelled`)."""
        try:
            await self._call.cancel_consult()
        except (ConsultError, CarrierError) as e:
            c = self._call.consultation
            self._call.feed_event(ConsultEvent(c.state if c else FAILED, c.number if c else "", f"cancel: {e}"))

    async def hangup(self, reason: str = "agent_hangup") -> None:
        await self._call.request_hangup(HangupSource.AGENT, reason)

    async def hold(self) -> None:
        """Put the caller on hold once the audio queued so far has been handed on ("please hold" is heard): the
        gateway plays music on hold, this engine receives no caller audio and its further audio waits until
        `unhold()`. A `HoldState` event confirms it (and reports a hold by the API or the far end)."""
        await self._bus.flush_play()
        await self._bus.send_control(HoldRequest(True))

    async def unhold(self) -> None:
        """Take the caller off hold now (the engine's queued audio plays on)."""
        await self._call.set_hold(False, "engine")

    async def mute(self) -> None:
        """Stop receiving the caller's audio (the caller still hears the engine) until `unmute()`."""
        await self._call.set_mute(True, "engine")

    async def unmute(self) -> None:
        await self._call.set_mute(False, "engine")
