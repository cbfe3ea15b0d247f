"""Narrow-band tone detection for answering-machine beeps and fax tones.

One 20 ms frame is scored by a Hann-windowed DFT evaluated at a bank of frequencies (350–2150 Hz every 25 Hz),
i.e. a bank of Goertzel filters done as one small matrix product. A frame's *purity* is the energy at the peak
frequency relative to what a pure sinusoid of the same total energy would put there (1.0 = a pure tone, white
noise ≈ 0.02, voiced speech spreads over many harmonics and scores well below a beep). A tone is a run of pure
frames whose peak frequency stays within ±50 Hz; what makes such a run a beep, a SIT or a fax tone is decided in
`detector.py` from the run's length, pitch drift, onset and what follows it.

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
#: ring-back tones (ITU-T E.180 Supplement 2: US 440+480 Hz, UK 400+450 Hz, most of Europe 425 Hz) lie in this band
RINGBACK_BAND_HZ = (350.0, 550.0)
#: the level steadiness of a tone ignores its lowest frame in every this many (lost packets; ToneTracker._tone)
LEVEL_DIP_EVERY = 8


_RING = (RINGBACK_BAND_HZ[0] <= BANK_HZ) & (RINGBACK_BAND_HZ[1] >= BANK_HZ)
#: the bank's cos and sin rows of the ring-back band
_RING_ROWS = np.concatenate([np.flatnonzero(_RING), len(BANK_HZ) + np.flatnonzero(_RING)])


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
    """(peak frequency Hz, purity 0..~1) of one frame of float samples.

    The frequency is refined between bank bins by a parabola through the log power of the peak and its two
    neighbours (a few Hz accurate for a tone, far finer than the 25 Hz grid): a beep's pitch is steady to a few Hz
    over its whole length, a voice's harmonics glide, so the detector can tell them apart by drift.
    """
    n = len(x)
    bank = _bank(n, sample_rate)
    y = np.dot(bank, x)
    y *= y
    power = y.reshape(2, -1).sum(axis=0)
    i = int(power.argmax())
    energy = float(np.dot(x * x, _window_energy(n)))
    if energy <= 0.0:
        return 0.0, 0.0
    freq = float(BANK_HZ[i])
    if 0 < i < len(power) - 1 and power[i - 1] > 0 and power[i + 1] > 0:
        a, b, c = np.log(power[i - 1]), np.log(power[i]), np.log(power[i + 1])
        den = a - 2 * b + c
        if den < 0:
            freq += float(0.5 * (a - c) / den) * (BANK_HZ[1] - BANK_HZ[0])
    # pure sinusoid: |X(f0)|² = (A·N/4)², Σ(x·w)² = A²/2 · 3N/8  →  |X|² / Σ(xw)² = N/3
    return freq, float(power[i]) * 3.0 / (n * energy)


def ringback_fraction(x: np.ndarray, sample_rate: int) -> float:
    """Share of one frame's energy in RINGBACK_BAND_HZ. Two ring-back tones 40–50 Hz apart are closer than a 20 ms
    frame resolves: they beat, so the frame is not *pure*, yet nearly all its energy is in that band (≥ 0.89 per
    frame on bench/amd/channel.py's cadences). Parseval over one 50 Hz grid of Hann-windowed bins: Σ|X_k|² (k > 0)
    = N/2 · Σ(x·w)²; the bank is two such grids interleaved 25 Hz apart, so the band's sum counts twice."""
    n = len(x)
    energy = float(np.dot(x * x, _window_energy(n)))
    if energy <= 0.0:
        return 0.0
    y = np.dot(_bank(n, sample_rate)[_RING_ROWS], x)
    return float(np.dot(y, y)) / (n * energy)


@dataclass(slots=True)
class Tone:
    freq_hz: float
    start_ms: int
    end_ms: int
    #: spread (max − min) of the refined frequency over the tone's inner frames: a beep holds its pitch
    drift_hz: float = 0.0
    #: mean |sample| over the tone, and the loudest of the frames just before it (its onset contrast)
    level: float = 0.0
    pre_level: float = 0.0
    #: mean purity of the tone's frames (1.0 = a pure sine; a voice's strongest harmonic stays well below)
    purity: float = 0.0
    #: (max − min) / mean of the level over the tone's inner frames: a beep holds its loudness, a vowel swells
    #: and fades with its syllable
    level_spread: float = 0.0
    #: how much of the tone the partial frames at its two edges hold (ms, estimated from their level): a beep
    #: rarely starts on a frame edge, so an 80 ms beep fills only three whole 20 ms frames
    edge_ms: int = 0

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


class ToneTracker:
    """Follows runs of pure frames with a steady pitch; tolerates one impure frame inside a run (codec noise).

    Per run it keeps the refined frequency and level of every frame (drift, loudness) and the level just before
    the run began (skipping the frame right before, which may hold the tone's first milliseconds): a beep starts
    out of quiet, a note of a melody or a vowel starts out of other sound.
    """

    def __init__(self, frame_ms: int = 20, max_gap_frames: int = 1) -> None:
        self.frame_ms = frame_ms
        self.max_gap = max_gap_frames
        self.freq = 0.0
        self.start_ms = -1
        self.last_ms = -1
        self._gap = 0
        self._freqs: list[float] = []
        self._levels: list[float] = []
        self._purities: list[float] = []
        self._pre = 0.0
        self._edge_pre = 0.0                 # level of the frame right before the run (may hold its first ms)
        self._edge_post = 0.0                # level of the first frame after it (may hold its last ms)
        self._history = [0.0, 0.0, 0.0]      # levels of the last three frames

    @property
    def active(self) -> bool:
        return self.start_ms >= 0

    def current(self, now_ms: int) -> Tone | None:
        return self._tone() if self.active else None

    def update(self, now_ms: int, freq: float, tonal: bool, level: float = 0.0, purity: float = 1.0) -> Tone | None:
        """Feed the frame ending at `now_ms`; returns the finished tone when a run ends."""
        hist = self._history
        done = None
        if tonal and self.active and abs(freq - self.freq) <= FREQ_TOLERANCE_HZ:
            self.last_ms = now_ms
            self._gap = 0
            self._edge_post = 0.0
            self._freqs.append(freq)
            self._levels.append(level)
            self._purities.append(purity)
        elif tonal:
            done = self._finish()
            self.freq, self.start_ms, self.last_ms, self._gap = freq, now_ms - self.frame_ms, now_ms, 0
            self._freqs, self._levels, self._purities = [freq], [level], [purity]
            self._pre = max(hist[0], hist[1])
            self._edge_pre, self._edge_post = hist[2], 0.0
        elif self.active:
            self._gap += 1
            if self._gap == 1:
                self._edge_post = level
            if self._gap > self.max_gap:
                done = self._finish()
        hist[0], hist[1], hist[2] = hist[1], hist[2], level
        return done

    def _tone(self) -> Tone:
        # the drift of a tone of three frames or fewer is taken over all of them (one inner frame has no drift)
        inner = self._freqs[1:-1] if len(self._freqs) > 3 else self._freqs
        # a lost packet inside a long beep is concealed by a fading repeat (G.711 Appendix I) or left as zeros: a
        # dip of a frame or two. Up to one frame in LEVEL_DIP_EVERY may dip; a voice's swell changes every frame.
        levels = sorted(self._levels[1:-1] or self._levels)[len(self._levels) // LEVEL_DIP_EVERY:]
        mean = sum(levels) / len(levels)
        level = sum(self._levels) / len(self._levels)
        # each edge frame's share of the tone: its level above the sound before the tone, against the tone's
        edges = sum(min(1.0, max(0.0, (e - self._pre) / (level - self._pre))) if level > self._pre else 0.0
                    for e in (self._edge_pre, self._edge_post))
        return Tone(self.freq, self.start_ms, self.last_ms, drift_hz=max(inner) - min(inner),
                    level=level, pre_level=self._pre, edge_ms=round(edges * self.frame_ms),
                    purity=sum(self._purities) / len(self._purities),
                    level_spread=(max(levels) - min(levels)) / mean if mean else 0.0)

    def _finish(self) -> Tone | None:
        if not self.active:
            return None
        tone = self._tone()
        self.start_ms = self.last_ms = -1
        self._gap = 0
        return tone
