"""One synthetic caller: follows a script, says its lines on the line's 20 ms clock, listens, and keeps its own
turn timeline (gateway/turns.py) of what it said and heard — the caller's side of the figures the gateway reports.

A line (gateway/simulate/lines.py) drives it: `next_frame(now)` every 20 ms for the audio to send (silence when the
script says nothing), `heard(pcm, now)` for each 20 ms of agent audio as it arrives (the Timeline plays it out
like the carrier would), `cleared(now)` when the carrier is told to drop its buffer. What counts as the caller's
speech is decided by the gateway's own VAD (`gateway.vad.SpeechDetector`) over the audio exactly as the gateway
will decode it (`roundtrip`: μ-law/A-law encode and decode), so both sides draw the same turn boundaries.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from gateway.turns import Timeline
from gateway.vad import FRAME_S, SpeechDetector
from voicecodecs import frame_bytes

from ..speech import read_wav, speak
from . import script as sc


class ScriptedCaller:
    def __init__(self, script: sc.Script, rate: int = 8000,
                 roundtrip: Callable[[bytes], bytes] | None = None) -> None:
        self.script = script
        self.rate = rate
        self.roundtrip = roundtrip
        self.frame_bytes = frame_bytes(rate)
        self.silence = bytes(self.frame_bytes)
        self.detector = SpeechDetector(rate)
        self.timeline: Timeline | None = None
        self.failures: list[str] = []
        self.heard_pcm = bytearray()
        self.dtmf: deque[str] = deque()         # digits for the line to send (it pops them)
        self.hangup = asyncio.Event()           # the script is over: the line hangs up
        self.remote_hangup = asyncio.Event()    # the line says the far end hung up
        self._out: deque[bytes] = deque()
        self._reply_from = 0                    # agent utterances before the last `say`: a reply is any after
        self._drained = asyncio.Event()
        self._drained.set()

    def answered(self, now: float) -> None:
        """The call is up: the timeline starts here."""
        self.timeline = Timeline(now)

    # -- the line's clock ---------------------------------------------------------------------------------------
    def next_frame(self, now: float) -> bytes:
        """The next 20 ms to send, ending at `now` (the gateway dates a frame by its arrival)."""
        out = self._out
        frame = out.popleft() if out else self.silence
        if not out:
            self._drained.set()
        d = self.detector
        change = d.process(self.roundtrip(frame) if self.roundtrip else frame, now)
        if change is not None and self.timeline is not None:
            if change:
                self.timeline.caller_started(d.onset_at)
            else:
                self.timeline.caller_ended(d.offset_at)
        return frame

    def heard(self, pcm: bytes, now: float, *, paced: bool = False) -> None:
        """20 ms of agent audio arrived at `now`. `paced`: the sender paces it in real time (RTP) and `now` is when
        it arrived, so it plays then; else (media-stream websockets, which may send ahead) it plays after what
        arrived before it. (On RTP the playout clock would otherwise carry every past burst of network jitter into
        the next talk spurt: the gateway sends silence between its utterances.)"""
        self.heard_pcm += pcm
        tl = self.timeline
        if tl is not None:
            if paced and tl.play_end > now:
                tl.play_end = now
            tl.agent_frame(pcm, now)

    def cleared(self, now: float) -> None:
        if self.timeline is not None:
            self.timeline.agent_clear(now)

    # -- the script -----------------------------------------------------------------------------------------------
    def audio_for(self, step: sc.Say) -> bytes:
        if step.wav is not None:
            return read_wav(step.wav, self.rate)
        return speak(step.text, self.rate, self.script.voice)

    async def run(self) -> None:
        """Follow the script to its end (or until the far end hangs up); then ask the line to hang up."""
        try:
            for i, step in enumerate(self.script.steps):
                if self.remote_hangup.is_set():
                    return
                if isinstance(step, sc.Hangup):
                    return
                if isinstance(step, sc.Say):
                    await self._say(i, step)
                elif isinstance(step, sc.WaitReply):
                    await self._wait_reply(i, step)
                elif isinstance(step, sc.Dtmf):
                    self.dtmf.extend(step.digits)
                elif isinstance(step, sc.Silence):
                    await self._until_remote_hangup(step.ms / 1000)
        finally:
            self.hangup.set()

    async def _until_remote_hangup(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.remote_hangup.wait(), seconds)
        except TimeoutError:
            pass

    def _agent_playing(self, now: float) -> bool:
        agent = self.timeline.agent if self.timeline else []
        return bool(agent) and agent[-1][1] > now

    async def _say(self, i: int, step: sc.Say) -> None:
        pcm = self.audio_for(step)
        if step.barge_in_after_ms is not None:
            started = await self._agent_starts(i, 15.0, len(self.timeline.agent) if self.timeline else 0)
            if started is None:
                return
            loop = asyncio.get_running_loop()
            await self._until_remote_hangup(max(0.0, started + step.barge_in_after_ms / 1000 - loop.time()))
        n = self.frame_bytes
        self._reply_from = len(self.timeline.agent) if self.timeline else 0
        self._drained.clear()
        self._out.extend(pcm[k:k + n].ljust(n, b"\0") for k in range(0, len(pcm), n))
        done = asyncio.ensure_future(self._drained.wait())
        gone = asyncio.ensure_future(self.remote_hangup.wait())
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        for f in (done, gone):
            f.cancel()

    async def _agent_starts(self, i: int, timeout: float, seen: int) -> float | None:
        """Wait for agent audio playing now or an utterance after the first `seen`; its start time, or None (a
        failure) on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not self.remote_hangup.is_set():
            now = loop.time()
            agent = self.timeline.agent if self.timeline else []
            if self._agent_playing(now):
                return agent[-1][0]
            if len(agent) > seen:
                return agent[-1][0]
            await asyncio.sleep(FRAME_S)
        if not self.remote_hangup.is_set():
            self.failures.append(f"step {i + 1}: no agent audio within {timeout:g} s")
        return None

    async def _wait_reply(self, i: int, step: sc.WaitReply) -> None:
        """The reply may have begun while the caller was still speaking (an echo, an eager agent)."""
        if await self._agent_starts(i, step.timeout_ms / 1000, self._reply_from) is None:
            return
        loop = asyncio.get_running_loop()
        quiet = step.quiet_ms / 1000
        while not self.remote_hangup.is_set() and self.timeline is not None:   # (set when the agent started)
            now = loop.time()
            if now - self.timeline.agent[-1][1] >= quiet:
                return
            await asyncio.sleep(FRAME_S)
