"""Frame-level voice activity: webrtcvad-wheels or app_amd's energy threshold, behind one call.

Measured on bench/amd (dev split) and per frame on this machine; the numbers and the choice are in docs/amd.md.
Both take one 20 ms PCM16 frame at 8 or 16 kHz and answer "is this speech?".
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import webrtcvad


class SpeechVad(Protocol):
    """What the detector asks of a VAD (bench/amd passes other implementations to compare them)."""

    def is_speech(self, frame: bytes, mean_abs: int) -> bool: ...


class EnergyVad:
    """app_amd's silence detector: a frame is voice when its mean |sample| reaches the threshold."""

    def __init__(self, threshold: int = 256) -> None:
        self.threshold = threshold

    def is_speech(self, frame: bytes, mean_abs: int) -> bool:
        return mean_abs >= self.threshold


class WebRtcVad:
    """webrtcvad's GMM classifier, gated by a low energy floor so line hiss alone never counts as voice."""

    def __init__(self, sample_rate: int, mode: int = 3, floor: int = 64) -> None:
        self._vad = webrtcvad.Vad(mode)
        self.sample_rate = sample_rate
        self.floor = floor

    def is_speech(self, frame: bytes, mean_abs: int) -> bool:
        return mean_abs >= self.floor and self._vad.is_speech(frame, self.sample_rate)


class NoiseFloor:
    """The background level (mean |sample|) under the callee's voice, by minimum statistics: the quietest 20 ms
    frame of the last ~2 s. Speech always has quieter moments within two seconds (between words, stops), so a
    talker's words never become the floor, while steady noise (hiss, road, a room full of talk) does, at once."""

    BLOCK = 10            # frames per block
    BLOCKS = 10           # blocks remembered: 10 × 10 × 20 ms = 2 s

    def __init__(self) -> None:
        self._mins: list[float] = []
        self._cur = float("inf")
        self._n = 0

    def update(self, level: float) -> float:
        if level < self._cur:
            self._cur = float(level)
        self._n += 1
        if self._n == self.BLOCK:
            self._mins.append(self._cur)
            if len(self._mins) > self.BLOCKS:
                del self._mins[0]
            self._cur, self._n = float("inf"), 0
        return min(self._cur, min(self._mins)) if self._mins else self._cur


def make_vad(kind: str, sample_rate: int, *, threshold: int, mode: int) -> SpeechVad:
    if kind == "energy":
        return EnergyVad(threshold)
    return WebRtcVad(sample_rate, mode, floor=max(16, threshold // 4))


#: the loudest sample of a frame that carries nothing: a lost packet filled with zeros, or (A-law has no zero code)
#: the quietest A-law code, which decodes to ±8
DROPOUT_PEAK = 8
#: a dropout is only told apart from a pause where the background is well above digital silence
DROPOUT_MIN_FLOOR = 24.0


def is_dropout(level: int, mag: np.ndarray, floor: float) -> bool:
    """A 20 ms frame of digital silence on a line whose background (`floor`, mean |sample| of the quietest recent
    frames) never gets that quiet: a lost packet a receiver without concealment left as zeros, or the silence G.711
    Appendix I concealment fades into after 60 ms. `mag` is the frame's |samples|."""
    return level <= DROPOUT_PEAK and floor >= DROPOUT_MIN_FLOOR and int(mag.max()) <= DROPOUT_PEAK
