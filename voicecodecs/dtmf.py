"""In-band DTMF (ITU-T Q.23 tone pairs) as PCM16: for media paths that have no way to signal digits (Exotel's
Voicebot stream, and any websocket carrier), digits are played as audio like any other engine output."""
from __future__ import annotations

import numpy as np

#: (low, high) frequencies in Hz per key, ITU-T Q.23
DTMF_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}


def dtmf_pcm(digits: str, sample_rate: int = 8000, tone_ms: int = 100, gap_ms: int = 60,
             amplitude: int = 9000) -> bytes:
    """PCM16 little-endian mono for `digits`: each tone `tone_ms` long followed by `gap_ms` of silence (Q.24 asks
    for at least 40 ms of each). Characters that are not DTMF keys are skipped."""
    n_tone, n_gap = sample_rate * tone_ms // 1000, sample_rate * gap_ms // 1000
    t = np.arange(n_tone) / sample_rate
    gap = np.zeros(n_gap, dtype="<i2")
    parts = []
    for d in digits.upper():
        pair = DTMF_FREQS.get(d)
        if pair is None:
            continue
        wave = amplitude * (np.sin(2 * np.pi * pair[0] * t) + np.sin(2 * np.pi * pair[1] * t))
        parts += [np.clip(wave, -32768, 32767).astype("<i2"), gap]
    return b"".join(p.tobytes() for p in parts)
