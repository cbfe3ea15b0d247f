"""What the engine may say while AMD works: nothing yet (held), everything (human), nothing ever (machine).

Installed as `call.output_gate`; `EngineSession.play/mark/clear` consult it first. Holding keeps the engine's
opening line (a greeting engine speaks at once) and plays it as soon as a human is confirmed, the way Twilio's
synchronous AMD delays the call's TwiML; on a machine the held audio is discarded and later engine audio is dropped
so it cannot mix with the voicemail message.
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from ..frames import Mark

if TYPE_CHECKING:
    from ..call import Call

HOLD, OPEN, MUTE = "hold", "open", "mute"


class EngineOutputGate:
    def __init__(self, call: Call, max_hold_s: float = 30.0) -> None:
        self.call = call
        self.mode = HOLD
        self.max_hold_s = max_hold_s
        self._held: deque[tuple[str, bytes | str, bool]] = deque()   # ("audio", pcm, eou) | ("mark", name, _)
        self._held_bytes = 0
        self.dropped_bytes = 0
        # engine speech while open (a text voicemail message spoken by the engine is watched through these)
        self.played_bytes = 0
        self.first_play: float | None = None
        self.last_play: float | None = None

    # -- called by EngineSession: True = handled here, the session must not touch the bus ------------------------
    async def engine_play(self, pcm: bytes, end_of_utterance: bool) -> bool:
        if self.mode == OPEN:
            self._note_play(len(pcm))
            return False
        if self.mode == MUTE:
            self.dropped_bytes += len(pcm)
            return True
        self._held.append(("audio", pcm, end_of_utterance))
        self._held_bytes += len(pcm)
        self._bound()
        return True

    async def engine_mark(self, name: str) -> bool:
        if self.mode == OPEN:
            return False
        if self.mode == MUTE:
            self.call.feed_event(Mark(name))   # nothing of the engine's will play: its marks are "done" at once
            return True
        self._held.append(("mark", name, False))
        return True

    def engine_clear(self) -> bool:
        if self.mode == MUTE:
            return True                        # the engine cannot clear the voicemail message
        if self.mode == HOLD:
            self._ack_marks()
            self._held.clear()
            self._held_bytes = 0
        return False

    # -- called by the AMD controller ----------------------------------------------------------------------------
    async def release(self) -> None:
        """A human (or unknown): play what the engine has said so far, in order, then let it through."""
        bus = self.call.bus
        while self._held and bus is not None and self.call.is_active:
            _, value, eou = self._held.popleft()
            if not isinstance(value, str):   # audio (bytes or another buffer an engine played); marks are names
                self._held_bytes -= len(value)
                self._note_play(len(value))
                await bus.play(value)
                if eou:
                    await bus.flush_play()
            else:
                await bus.send_control(Mark(value))
        self._held.clear()
        self._held_bytes = 0
        self.mode = OPEN

    def mute(self) -> None:
        """A machine or fax: drop the engine's held audio and everything it says from now on."""
        self._ack_marks()
        self.dropped_bytes += self._held_bytes
        self._held.clear()
        self._held_bytes = 0
        self.mode = MUTE

    def open(self) -> None:
        """Let the engine speak (a text voicemail message); counters restart so its speech can be timed."""
        self.played_bytes = 0
        self.first_play = self.last_play = None
        self.mode = OPEN

    # -- internals -------------------------------------------------------------------------------------------------
    def _note_play(self, nbytes: int) -> None:
        now = time.monotonic()
        if self.first_play is None:
            self.first_play = now
        self.last_play = now
        self.played_bytes += nbytes

    def _bound(self) -> None:
        rate = self.call.bus.engine_rate if self.call.bus is not None else 16000
        limit = int(self.max_hold_s * rate * 2)
        while self._held_bytes > limit and self._held:
            for i, (_, value, _) in enumerate(self._held):
                if not isinstance(value, str):
                    del self._held[i]
                    self._held_bytes -= len(value)
                    self.dropped_bytes += len(value)
                    break
            else:
                break

    def _ack_marks(self) -> None:
        for _, value, _ in self._held:
            if isinstance(value, str):
                self.call.feed_event(Mark(value))
