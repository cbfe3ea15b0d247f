"""What a synthetic caller says: text spoken by espeak-ng (or flite), or a WAV file, as PCM16 mono at the line's rate.

Both synthesizers write a WAV at their own rate (espeak-ng 22 050 Hz, flite 8 or 16 kHz); the whole utterance is
resampled at once in the frequency domain (an exact band limit, no streaming state needed for a file).
"""
from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """A line of the script cannot be turned into audio (no synthesizer, unreadable WAV)."""


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


@functools.lru_cache(maxsize=256)
def speak(text: str, rate: int, voice: str = "en-us", words_per_minute: int = 175) -> bytes:
    """`text` spoken by espeak-ng (or flite) as PCM16 mono at `rate` (cached: every caller says the same lines)."""
    prog = synthesizer()
    if prog is None:
        raise AudioError("no text-to-speech program: install espeak-ng or flite, or use a WAV")
    if prog == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise AudioError(f"espeak-ng failed: {proc.stderr.decode(errors='replace')[:200]}")
        return read_wav(proc.stdout, rate)
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        proc = subprocess.run(["flite", "-t", text, "-o", f.name], capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise AudioError(f"flite failed: {proc.stderr.decode(errors='replace')[:200]}")
        return read_wav(f.name, rate)


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
