"""Re-framing arbitrary chunk sizes into exact fixed-duration frames.

Carriers send odd sizes (Exotel 100 ms+ chunks, browsers 10 ms, TTS whole sentences); the frame bus speaks
20 ms frames only, so every edge in and out goes through a Reframer.
"""
from __future__ import annotations

FRAME_MS = 20


def frame_bytes(sample_rate: int, ms: int = FRAME_MS, sample_width: int = 2) -> int:
    """Bytes in one frame of `ms` milliseconds of mono audio."""
    return sample_rate * ms // 1000 * sample_width


class Reframer:
    """Accumulates bytes and hands out whole frames of `size` bytes; keeps the remainder for the next push."""

    __slots__ = ("size", "held")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("frame size must be positive")
        self.size = size
        #: the bytes held back until they make a whole frame. Empty while a stream comes in whole frames, the usual
        #: case: a per-frame caller then skips `push` (`(data,)` is what it would return) and saves its call
        self.held = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        buf = self.held
        if not buf and len(data) == self.size:
            return [bytes(data)]
        buf += data
        n = len(buf) // self.size
        if not n:
            return []
        cut = n * self.size
        frames = [bytes(buf[i : i + self.size]) for i in range(0, cut, self.size)]
        del buf[:cut]
        return frames

    @property
    def pending(self) -> int:
        return len(self.held)

    def flush(self, pad: bool = True) -> bytes | None:
        """Return what is left as one frame, zero-padded (silence) to full size when `pad`."""
        if not self.held:
            return None
        out = bytes(self.held)
        self.held.clear()
        if pad:
            out += b"\x00" * (self.size - len(out))
        return out

    def reset(self) -> None:
        self.held.clear()
