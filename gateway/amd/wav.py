"""Load a voicemail message WAV once, as PCM16 mono at the rate the bus wants (the engine side).

Accepts what telephony teams actually have on disk: PCM 8/16-bit, G.711 μ-law / A-law (format tags 7 / 6),
WAVE_FORMAT_EXTENSIBLE, mono or stereo (downmixed), any sample rate. The stdlib `wave` module reads PCM only, so the
RIFF chunks are walked here.
"""
from __future__ import annotations

import os
import struct
from functools import lru_cache

from voicecodecs import SUPPORTED_RATES, StreamResampler, alaw_to_pcm16, ulaw_to_pcm16
from voicecodecs._audioop import audioop


class WavError(ValueError):
    pass


def load_message(path: str, rate: int) -> bytes:
    """PCM16 mono at `rate`; cached per (path, mtime, rate). Raises WavError with a readable reason."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise WavError(f"voicemail message {path!r} cannot be read: {e.strerror}") from None
    return _load(path, mtime, rate)


@lru_cache(maxsize=32)
def _load(path: str, _mtime: int, rate: int) -> bytes:
    with open(path, "rb") as f:
        return parse_wav(f.read(), rate, path)


def parse_wav(data: bytes, rate: int, path: str = "message") -> bytes:
    """A WAV file's bytes as PCM16 mono at `rate` (`path` names it in errors). Raises WavError."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"voicemail message {path!r} is not a WAV file")
    fmt = None
    samples = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            tag, channels, src_rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:      # WAVE_FORMAT_EXTENSIBLE: sub-format GUID starts with the tag
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, src_rate, bits)
        elif cid == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise WavError(f"voicemail message {path!r} has no fmt or data chunk")
    tag, channels, src_rate, bits = fmt
    if tag == 1 and bits == 16:
        pcm = samples
    elif tag == 1 and bits == 8:
        pcm = audioop.lin2lin(audioop.bias(samples, 1, -128), 1, 2)
    elif tag == 7 and bits == 8:
        pcm = ulaw_to_pcm16(samples)
    elif tag == 6 and bits == 8:
        pcm = alaw_to_pcm16(samples)
    else:
        raise WavError(f"voicemail message {path!r}: unsupported WAV encoding (format {tag}, {bits} bit); "
                       "use PCM 16-bit or G.711")
    if channels == 2:
        pcm = audioop.tomono(pcm[:len(pcm) // 4 * 4], 2, 0.5, 0.5)
    elif channels != 1:
        raise WavError(f"voicemail message {path!r}: {channels} channels (mono or stereo only)")
    if src_rate != rate:
        if src_rate in SUPPORTED_RATES and rate in SUPPORTED_RATES:
            pcm = StreamResampler(src_rate, rate).process(pcm)
        else:
            pcm, _ = audioop.ratecv(pcm, 2, 1, src_rate, rate, None)
    return pcm
