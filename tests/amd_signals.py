"""Synthetic test signals for the AMD tests: speech-like bursts, tones, silence, noise (PCM16 mono bytes)."""
from __future__ import annotations

import shutil
import subprocess
import wave

import numpy as np


def silence(ms: int, sr: int = 8000) -> bytes:
    return b"\x00\x00" * (sr * ms // 1000)


def tone(freq: float, ms: int, sr: int = 8000, amp: float = 8000.0) -> bytes:
    t = np.arange(sr * ms // 1000) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def noise(ms: int, sr: int = 8000, amp: float = 300.0, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(sr * ms // 1000) * amp).clip(-32768, 32767).astype("<i2").tobytes()


def _resonate(x: np.ndarray, fc: float, bw: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bw / sr)
    a1, a2 = -2 * r * np.cos(2 * np.pi * fc / sr), r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for i, v in enumerate(x):
        y0 = v - a1 * y1 - a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y


def word(ms: int, sr: int = 8000, f0: float = 120.0, amp: float = 10000.0, seed: int = 0) -> bytes:
    """A voiced 'syllable': a glottal pulse train through three formant resonators, with an onset/offset ramp."""
    rng = np.random.default_rng(seed)
    n = sr * ms // 1000
    t = np.arange(n) / sr
    phase = np.cumsum(f0 * (1 + 0.06 * np.sin(2 * np.pi * 4 * t)) / sr)
    x = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(float) + 0.03 * rng.standard_normal(n)
    for fc, bw in ((650, 110), (1150, 130), (2450, 220)):
        x = _resonate(x, fc, bw, sr)
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)
    x = x * env
    return (x / (np.abs(x).max() or 1) * amp).astype("<i2").tobytes()


def words(durations_ms: list[int], gap_ms: int = 120, sr: int = 8000) -> bytes:
    """Several words separated by short pauses (a phrase)."""
    out = b""
    for i, d in enumerate(durations_ms):
        out += word(d, sr, f0=110 + 15 * (i % 3), seed=i) + silence(gap_ms, sr)
    return out


def espeak(text: str, sr: int = 8000, voice: str = "en-us", speed: int = 160) -> bytes | None:
    """Real TTS speech at `sr` via espeak-ng + sox, or None when either is missing."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True, timeout=20).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(sr), "-e", "signed", "-b", "16", "-c",
                          "1", "-", "sinc", "300-3400"], input=raw, capture_output=True, check=True,
                         timeout=20).stdout
    return pcm


def write_wav(path, pcm: bytes, sr: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm)


def sit(sr: int = 8000, amp: float = 6000.0) -> bytes:
    """Special information tones, NANP 'intercept' code: 913.8 Hz 274 ms, 1370.6 Hz 274 ms, 1776.7 Hz 380 ms, then
    the ~1 s pause before the announcement (ITU-T E.180 / Bellcore)."""
    return (tone(913.8, 274, sr, amp) + tone(1370.6, 274, sr, amp) + tone(1776.7, 380, sr, amp)
            + silence(1000, sr))
