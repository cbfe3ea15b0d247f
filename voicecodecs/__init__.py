"""Pure audio helpers for telephony: G.711, L16, streaming resampling, 20 ms framing."""
from .framing import FRAME_MS, Reframer, frame_bytes
from .g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from .l16 import l16_to_pcm16, pcm16_to_l16
from .resample import SUPPORTED_RATES, StreamResampler

__all__ = [
    "FRAME_MS", "Reframer", "frame_bytes", "alaw_to_pcm16", "pcm16_to_alaw", "pcm16_to_ulaw", "ulaw_to_pcm16",
    "l16_to_pcm16", "pcm16_to_l16", "SUPPORTED_RATES", "StreamResampler",
]
