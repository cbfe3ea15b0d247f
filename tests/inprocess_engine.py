"""Small in-process engines that tests load by spec (`inprocess_engine:HearThenHangUp`…) through `gateway serve`."""
from __future__ import annotations

from gateway.engine import EngineSession, VoiceEngine
from gateway.frames import AudioFrame

#: caller frames (20 ms each) the engine waits for before it hangs up
FRAMES = 25


class HearThenHangUp(VoiceEngine):
    """Echoes the caller; after FRAMES frames of caller audio hangs up with a reason that proves it heard them."""

    sample_rate = 8000

    async def handle_call(self, session: EngineSession) -> None:
        heard = 0
        async for item in session:
            if isinstance(item, AudioFrame):
                await session.play(item.pcm)
                heard += 1
                if heard == FRAMES:
                    await session.hangup(f"inprocess_heard_{heard}_frames")
                    return


def make_engine() -> VoiceEngine:
    """A factory function (rather than a class) returning the same engine."""
    return HearThenHangUp()


def not_an_engine() -> str:
    return "hello"


NOT_CALLABLE = 42
