"""Built-in `echo` engine: returns the caller's audio, so audio paths can be checked with no AI."""
from __future__ import annotations

from ..frames import AudioFrame, Hangup
from .base import EngineSession, VoiceEngine


class EchoEngine(VoiceEngine):
    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                await session.play(item.pcm)
            elif isinstance(item, Hangup):
                return
