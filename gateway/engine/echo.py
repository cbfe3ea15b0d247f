"""Built-in `echo` engine: returns the caller's audio, so audio paths can be checked with no AI."""
from __future__ import annotations

from ..frames import AudioFrame, Hangup
from .base import EngineSession, VoiceEngine


class EchoEngine(VoiceEngine):
    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate

    async def handle_call(self, session: EngineSession) -> None:
        def echo_now(frame: AudioFrame) -> bool:    # in the carrier's reader: no task switch per frame
            return session.play_nowait(frame.pcm)

        while (item := await session.receive(on_audio=echo_now)) is not None:
            if isinstance(item, AudioFrame):
                await session.play(item.pcm)
            elif isinstance(item, Hangup):
                return
