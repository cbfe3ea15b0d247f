"""Built-in `greeting` engine: a spoken prompt, then an echo, with DTMF `#` to hang up and `0` to transfer.

It lets an operator try every telephony feature of a freshly imported number with no AI behind it: the caller
hears the packaged prompt (so outbound audio works), then their own voice (inbound audio and latency), and the
keypad exercises DTMF detection, hangup and transfer to the agent's configured transfer number.

The prompt, `prompts/greeting.wav` (mono PCM16 16 kHz, 3.9 s), was generated once with:
    espeak-ng -v en-us -s 200 -w g.wav \
        "Hello, you're connected to the gateway. Press pound to hang up, or zero to transfer."
    sox g.wav -r 16000 -c 1 -b 16 -e signed-integer greeting.wav \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse tempo -s 1.2 norm -3 pad 0.1 0.2
"""
from __future__ import annotations

import asyncio
import functools
import wave
from importlib import resources

from voicecodecs import StreamResampler

from ..frames import AudioFrame, Dtmf, Hangup, Mark
from .base import EngineSession, VoiceEngine

PROMPT = "greeting.wav"
PROMPT_MARK = "greeting-played"


@functools.lru_cache(maxsize=8)
def load_prompt(sample_rate: int, name: str = PROMPT) -> bytes:
    """The packaged prompt as PCM16 mono at `sample_rate` (read once per process and rate)."""
    with resources.files(__package__).joinpath("prompts", name).open("rb") as f, wave.open(f) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"prompt {name} must be mono 16-bit PCM")
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    return StreamResampler(rate, sample_rate).process(pcm)


class GreetingEngine(VoiceEngine):
    def __init__(self, sample_rate: int = 16000, prompt: str = PROMPT) -> None:
        self.sample_rate = sample_rate
        self.prompt = prompt

    async def handle_call(self, session: EngineSession) -> None:
        pcm = load_prompt(self.sample_rate, self.prompt)
        await session.play(pcm, end_of_utterance=True)
        await session.mark(PROMPT_MARK)
        # Echo only once the prompt has been heard: caller audio during the prompt is not queued behind it. If the
        # carrier never confirms the mark, start anyway a second after the prompt should have finished.
        loop = asyncio.get_running_loop()
        echo_from = loop.time() + len(pcm) / 2 / self.sample_rate + 1.0
        echoing = False
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                echoing = echoing or loop.time() >= echo_from
                if echoing:
                    await session.play(item.pcm)
            elif isinstance(item, Mark) and item.name == PROMPT_MARK:
                echoing = True
            elif isinstance(item, Dtmf):
                if item.digit == "#":
                    session.clear()
                    await session.hangup("caller_requested")
                elif item.digit == "0":
                    session.clear()
                    await session.transfer()
            elif isinstance(item, Hangup):
                return
