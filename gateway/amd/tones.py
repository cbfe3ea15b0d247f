"""Narrow-band tone detection for answering-machine beeps and fax tones.

One 20 ms frame is scored by a Hann-windowed DFT evaluated at a bank of frequencies (350–2150 Hz every 25 Hz),
i.e. a bank of Goertzel filters done as one small matrix product. A frame's *purity* is the energy at the peak
frequency relative to what a pure sinusoid of the same total energy would put there (1.0 = a pure tone, white
noise ≈ 0.02, voiced speech spreads over many harmonics and scores well below a beep). A tone is a run of pure
frames whose peak frequency stays within ±50 Hz; a beep is such a run of at least `beep_min_ms` in the beep band.

Why not a single Goertzel per known frequency: beeps range from ~400 to ~2000 Hz and differ per device, so the whole
band is scanned; the bank costs a few microseconds per frame (measured in docs/amd.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BANK_HZ = np.arange(350.0, 2150.0 + 1, 25.0)
CNG_HZ = 1100.0   # ITU-T T.30 calling tone: 0.5 s on, 3 s off
CED_HZ = 2100.0   # ITU-T T.30 / V.25 called-station answer tone
FREQ_TOLERANCE_HZ = 50.0


@lru_cache(maxsize=4)
def _bank(n: int, sample_rate: int) -> np.ndarray:
    """(2K × n) matrix: rows are Hann-windowed cos and sin at each bank frequency."""
    t = np.arange(n)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * t / n)
    ang = 2 * np.pi * np.outer(BANK_HZ / sample_rate, t)
    return np.vstack([np.cos(ang) * w, np.sin(ang) * w]).astype(np.float32)


@lru_cache(maxsize=4)
def _window_energy(n: int) -> np.ndarray:
    t = np.arange(n)
    return ((0.5 - 0.5 * np.cos(2 * np.pi * t / n)) ** 2).astype(np.float32)


def tone_score(x: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(peak frequency Hz, purity 0..~1) of one frame of float samples."""
    n = len(x)
    bank = _bank(n, sample_rate)
    y = np.dot(bank, x)
    y *= y
    power = y.reshape(2, -1).sum(axis=0)
    i = int(power.argmax())
    energy = float(np.dot(x * x, _window_energy(n)))
    if energy <= 0.0:
        return 0.0, 0.0
    # pure sinusoid: |X(f0)|² = (A·N/4)², Σ(x·w)² = A²/2 · 3N/8  →  |X|² / Σ(xw)² = N/3
    return float(BANK_HZ[i]), float(power[i]) * 3.0 / (n * energy)


@dataclass(slots=True)
class Tone:
    freq_hz: float
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


class ToneTracker:
    """Follows runs of pure frames with a steady pitch; tolerates one impure frame inside a run (codec noise)."""

    def __init__(self, frame_ms: int = 20, max_gap_frames: int = 1) -> None:
        self.frame_ms = frame_ms
        self.max_gap = max_gap_frames
        self.freq = 0.0
        self.start_ms = -1
        self.last_ms = -1
        self._gap = 0

    @property
    def active(self) -> bool:
        return self.start_ms >= 0

    def current(self, now_ms: int) -> Tone | None:
        return Tone(self.freq, self.start_ms, self.last_ms) if self.active else None

    def update(self, now_ms: int, freq: float, tonal: bool) -> Tone | None:
        """Feed the frame ending at `now_ms`; returns the finished tone when a run ends."""
        if tonal and self.active and abs(freq - self.freq) <= FREQ_TOLERANCE_HZ:
            self.last_ms = now_ms
            self._gap = 0
            return None
        if tonal:
            done = self._finish()
            self.freq, self.start_ms, self.last_ms, self._gap = freq, now_ms - self.frame_ms, now_ms, 0
            return done
        if self.active:
            self._gap += 1
            if self._gap > self.max_gap:
                return self._finish()
        return None

    def _finish(self) -> Tone | None:
        if not self.active:
            return None
        tone = Tone(self.freq, self.start_ms, self.last_ms)
        self.start_ms = self.last_ms = -1
        self._gap = 0
        return tone
