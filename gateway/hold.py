"""Music on hold: what the gateway plays to a caller it has put on hold, 20 ms at a time, looping.

The default is generated here, so nothing with a licence ships: a slow, soft arpeggio of sine tones (C major,
F major, G major, C major; 0.5 s notes with raised-cosine fades, about -20 dBFS), 8 s long. An operator's own
file (`GATEWAY_MOH_FILE`, any WAV the voicemail loader reads: PCM 8/16-bit, G.711, any rate, mono or stereo) is
used instead when set. Both are made once per sample rate and shared by every held call.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np

from voicecodecs import frame_bytes

log = logging.getLogger("gateway.hold")

#: the default loop: (note frequencies in Hz, one chord per two seconds, played as an arpeggio)
CHORDS = ((261.63, 329.63, 392.00, 523.25), (349.23, 440.00, 523.25, 698.46),
          (392.00, 493.88, 587.33, 783.99), (261.63, 329.63, 392.00, 523.25))
NOTE_S = 0.5
AMPLITUDE = 3200          # of 32767: about -20 dBFS, soft next to speech


@lru_cache(maxsize=8)
def default_music(rate: int) -> bytes:
    """The generated loop as PCM16 mono at `rate`."""
    n = int(NOTE_S * rate)
    t = np.arange(n) / rate
    fade = int(0.06 * rate)
    envelope = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, fade))
    envelope[:fade] = ramp
    envelope[-fade:] = ramp[::-1]
    notes = []
    for chord in CHORDS:
        for f in chord:
            tone = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2 * f * t)   # a touch of the octave
            notes.append(tone / 1.3 * envelope)
    return (np.concatenate(notes) * AMPLITUDE).astype("<i2").tobytes()


def music_for(path: str, rate: int) -> bytes:
    """The operator's WAV (`moh_file`) as PCM16 mono at `rate` (gateway.amd.wav: read once per file and mtime),
    else the generated loop; a file that cannot be read is logged and the generated loop plays instead."""
    if path:
        from .amd.wav import WavError, load_message
        try:
            return load_message(path, rate)
        except WavError as e:
            log.error("music on hold file not used: %s", e, extra={"path": path})
    return default_music(rate)


class HoldMusic:
    """One held call's position in the loop; `frame()` gives the next 20 ms."""

    def __init__(self, pcm: bytes, rate: int) -> None:
        size = frame_bytes(rate)
        usable = len(pcm) - len(pcm) % size
        self._pcm = pcm[:usable] if usable else bytes(size)
        self._size = size
        self._pos = 0

    def frame(self) -> bytes:
        out = self._pcm[self._pos:self._pos + self._size]
        self._pos = (self._pos + self._size) % len(self._pcm)
        return out
