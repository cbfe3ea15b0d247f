"""Why do G.711 clips score lower? The same dev clips (the 16 kHz PCM ones) delivered several ways, so only the
delivery differs: 16 kHz PCM as generated, 8 kHz PCM, 8 kHz μ-law and A-law (G.711 quantisation), and the phone band
(300–3400 Hz, as sox's `sinc 300-3400` gives the corpus's 8 kHz clips) at 8 and 16 kHz.

    python bench/amd/delivery.py                     # every delivery, dev split only
    python bench/amd/delivery.py band8 pcm8 --set tone_purity=0.9

Dev split only: the test split is run by evaluate.py once the defaults are frozen. Results: docs/amd.md ("Why G.711
clips scored lower").
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate as ev  # noqa: E402

from gateway.amd.params import AmdParams  # noqa: E402
from voicecodecs import StreamResampler, alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402


def to8k(pcm: bytes) -> bytes:
    return StreamResampler(16000, 8000).process(pcm)


def phone_band(pcm: bytes, sr: int = 16000, lo: float = 300.0, hi: float = 3400.0) -> bytes:
    """Band-pass by FFT with 100 Hz linear edges (whole clip at once: this is an offline experiment)."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    gain = np.clip((f - lo + 50) / 100, 0, 1) * np.clip((hi + 50 - f) / 100, 0, 1)
    return np.clip(np.fft.irfft(spec * gain, len(x)), -32768, 32767).astype("<i2").tobytes()


DELIVERIES: dict[str, Callable[[bytes], tuple[bytes, int]]] = {
    "pcm16": lambda x: (x, 16000),
    "pcm8": lambda x: (to8k(x), 8000),
    "ulaw8": lambda x: (ulaw_to_pcm16(pcm16_to_ulaw(to8k(x))), 8000),
    "alaw8": lambda x: (alaw_to_pcm16(pcm16_to_alaw(to8k(x))), 8000),
    "band16": lambda x: (phone_band(x), 16000),
    "band8": lambda x: (to8k(phone_band(x)), 8000),
    "band_ulaw8": lambda x: (ulaw_to_pcm16(pcm16_to_ulaw(to8k(phone_band(x)))), 8000),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("deliveries", nargs="*", choices=[[], *DELIVERIES], default=[])
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="detector parameter override")
    args = ap.parse_args(argv)
    params = AmdParams().with_overrides(dict(kv.split("=", 1) for kv in args.set))
    clips = [c for c in ev.load("dev") if c["codec"] == "pcm" and c["rate_hz"] == 16000]
    for name in args.deliveries or list(DELIVERIES):
        way = DELIVERIES[name]
        s = ev.evaluate(params, [{**c, **dict(zip(("pcm", "rate_hz"), way(c["pcm"]), strict=True))} for c in clips])
        print(ev.line("dev", name, s))
        for g in ("noise", "line"):
            print(f"     {g:8} " + "  ".join(f"{k}={a * 100:.0f}%/{n}" for k, (a, n) in s["groups"][g].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
