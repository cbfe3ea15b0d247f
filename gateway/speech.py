"""Offline text-to-speech (espeak-ng, else flite) and WAV reading, as PCM16 mono at a given rate.

Used for what a synthetic caller says (gateway/simulate) and for an agent's transfer_message on a call whose engine
cannot speak text (gateway/call.py), so the message is heard on every carrier. Both synthesizers write a WAV at
their own rate (espeak-ng 22 050 Hz, flite 8 or 16 kHz); the whole utterance is resampled at once in the frequency
domain (an exact band limit, no streaming state needed for a file).
"""
from __future__ import annotations

import asyncio
import functools
import io
import shutil
import subprocess
import tempfile
import wave
from collections import OrderedDict
from pathlib import Path

import numpy as np

#: seconds a synthesizer may take for one utterance
TIMEOUT_S = 30.0


class AudioError(ValueError):
    """Text or a WAV cannot be turned into audio (no synthesizer, synthesizer failed, unreadable WAV)."""


def resample(pcm: bytes, src: int, dst: int) -> bytes:
    """PCM16 mono from `src` to `dst` Hz by FFT (the utterance is short, so one transform is cheap)."""
    if src == dst or not pcm:
        return pcm
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    n = max(1, round(len(x) * dst / src))
    spec = np.fft.rfft(x)
    keep = n // 2 + 1
    out = np.zeros(keep, dtype=complex)
    m = min(keep, len(spec))
    out[:m] = spec[:m]
    y = np.fft.irfft(out, n) * (n / len(x))
    return np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()


def read_wav(data: bytes | str | Path, rate: int) -> bytes:
    """A mono or stereo 16-bit WAV (bytes or a path) as PCM16 mono at `rate`."""
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115 (closed by the with)
        with src, wave.open(src) as w:
            if w.getsampwidth() != 2:
                raise AudioError("WAV must be 16-bit PCM")
            frames = w.readframes(w.getnframes())
            channels, src_rate = w.getnchannels(), w.getframerate()
    except (OSError, wave.Error, EOFError) as e:
        raise AudioError(f"cannot read WAV: {e}") from None
    x = np.frombuffer(frames, "<i2")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1).astype("<i2")
    return resample(x.tobytes(), src_rate, rate)


def synthesizer() -> str | None:
    """The text-to-speech program available here: espeak-ng, else flite, else None."""
    for prog in ("espeak-ng", "flite"):
        if shutil.which(prog):
            return prog
    return None


def _command(prog: str, text: str, out: str, voice: str, words_per_minute: int) -> list[str]:
    if prog == "espeak-ng":
        return ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", out, "--", text]
    return ["flite", "-t", text, "-o", out]


def _program() -> str:
    prog = synthesizer()
    if prog is None:
        raise AudioError("no text-to-speech program: install espeak-ng or flite, or use a WAV")
    return prog


@functools.lru_cache(maxsize=256)
def speak(text: str, rate: int, voice: str = "en-us", words_per_minute: int = 175) -> bytes:
    """`text` spoken by espeak-ng (or flite) as PCM16 mono at `rate` (cached: every caller says the same lines)."""
    prog = _program()
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        proc = subprocess.run(_command(prog, text, f.name, voice, words_per_minute), capture_output=True,
                              timeout=TIMEOUT_S)
        if proc.returncode != 0:
            raise AudioError(f"{prog} failed: {proc.stderr.decode(errors='replace')[:200]}")
        return read_wav(f.name, rate)


_spoken: OrderedDict[tuple[str, int], bytes] = OrderedDict()


async def synthesize(text: str, rate: int, voice: str = "en-us", words_per_minute: int = 175) -> bytes:
    """`speak()` for the event loop: the synthesizer runs as a child process the loop does not wait on, and the
    last 64 utterances are kept (an agent's transfer message is the same on every call)."""
    key = (text, rate)
    if key in _spoken:
        _spoken.move_to_end(key)
        return _spoken[key]
    prog = _program()
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        proc = await asyncio.create_subprocess_exec(*_command(prog, text, f.name, voice, words_per_minute),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AudioError(f"{prog} took more than {TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise AudioError(f"{prog} failed: {err.decode(errors='replace')[:200]}")
        pcm = await asyncio.to_thread(read_wav, f.name, rate)
    _spoken[key] = pcm
    while len(_spoken) > 64:
        _spoken.popitem(last=False)
    return pcm


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
