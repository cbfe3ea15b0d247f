"""Stateful streaming resampling between 8, 16, 24 and 48 kHz PCM16 mono."""
from __future__ import annotations

from ._audioop import audioop

SUPPORTED_RATES = (8000, 16000, 24000, 48000)


class StreamResampler:
    """Resamples a continuous stream chunk by chunk, carrying filter state across chunks (no edge clicks)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate not in SUPPORTED_RATES or out_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported rate conversion {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._state = None

    def process(self, pcm: bytes) -> bytes:
        if self.in_rate == self.out_rate:
            return pcm
        out, self._state = audioop.ratecv(pcm, 2, 1, self.in_rate, self.out_rate, self._state)
        return out

    def reset(self) -> None:
        self._state = None
