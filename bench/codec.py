"""Per-20 ms-frame cost of the codec path every telephone call takes, plus the resampler's delay and rejection.

The path: μ-law 8 kHz from the carrier → PCM16 → 16 kHz for the engine, and the engine's 16 kHz PCM16 → 8 kHz →
μ-law back. Each step is timed on its own (best of several repeats of a few thousand frames of a continuous
signal, so the streaming state is exercised), then the whole round trip. For context the same is measured for
audioop.ratecv (the unfiltered baseline) and, when installed, soxr and scipy.

    python bench/codec.py [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import table, write_section  # noqa: E402
from voicecodecs import SUPPORTED_RATES, StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402
from voicecodecs._audioop import audioop  # noqa: E402


def speech_like(rate: int, seconds: float) -> np.ndarray:
    """A few tones and noise at telephone levels: content in every band the filters treat differently."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    x = 4000 * np.sin(2 * np.pi * 220 * t) + 2000 * np.sin(2 * np.pi * 1330 * t) + rng.normal(0, 800, len(t))
    return x.clip(-32768, 32767).astype("<i2")


def frames(rate: int, count: int) -> list[bytes]:
    x = speech_like(rate, count / 50)
    step = rate // 50
    return [x[i : i + step].tobytes() for i in range(0, len(x), step)]


def measure(cases: dict[str, tuple], repeat: int) -> dict[str, float]:
    """Mean CPU time per item in µs for each case `name: (fn, items)`, best of `repeat` runs.

    CPU time of this process (not wall time), the best of several runs, and the runs of all cases interleaved
    round-robin: on a shared machine other processes then inflate every figure alike and as little as possible.
    """
    best = {name: float("inf") for name in cases}
    for _ in range(repeat):
        for name, (fn, items) in cases.items():
            t0 = time.process_time()
            for it in items:
                fn(it)
            best[name] = min(best[name], time.process_time() - t0)
    return {name: best[name] / len(cases[name][1]) * 1e6 for name in cases}


def codec_path_cases(n: int) -> tuple[dict[str, tuple], list[str]]:
    ulaw_in = [pcm16_to_ulaw(f) for f in frames(8000, n)]
    pcm8 = [ulaw_to_pcm16(f) for f in ulaw_in]
    engine16 = frames(16000, n)
    pcm8_back = [StreamResampler(16000, 8000).process(f) for f in engine16]
    up, down = StreamResampler(8000, 16000), StreamResampler(16000, 8000)
    up2, down2 = StreamResampler(8000, 16000), StreamResampler(16000, 8000)

    def round_trip(i: int) -> None:
        up2.process(ulaw_to_pcm16(ulaw_in[i]))
        pcm16_to_ulaw(down2.process(engine16[i]))

    cases = {
        "μ-law decode (160 B → PCM16 8 kHz)": (ulaw_to_pcm16, ulaw_in),
        "upsample 8 → 16 kHz (StreamResampler)": (up.process, pcm8),
        "downsample 16 → 8 kHz (StreamResampler)": (down.process, engine16),
        "μ-law encode (PCM16 8 kHz → 160 B)": (pcm16_to_ulaw, pcm8_back),
        "**total, both directions**": (round_trip, list(range(n))),
    }
    return cases, list(cases)


def baseline_cases(n: int) -> tuple[dict[str, tuple], list[list[str]]]:
    """Other resamplers on the same frames; returns the cases and the table layout [label, up, down, delay]."""
    pcm8, pcm16 = frames(8000, n), frames(16000, n)
    state = {"up": None, "down": None}

    def ratecv(key: str, rate_in: int, rate_out: int):
        def f(x):
            _, state[key] = audioop.ratecv(x, 2, 1, rate_in, rate_out, state[key])
        return f

    ours_up, ours_down = StreamResampler(8000, 16000), StreamResampler(16000, 8000)
    cases = {"ratecv up": (ratecv("up", 8000, 16000), pcm8), "ratecv down": (ratecv("down", 16000, 8000), pcm16),
             "ours up": (ours_up.process, pcm8), "ours down": (ours_down.process, pcm16)}
    layout = [["audioop.ratecv (no anti-alias filter)", "ratecv up", "ratecv down", "0"],
              ["voicecodecs.StreamResampler", "ours up", "ours down", f"{ours_up.delay_ms:.2f}"]]
    try:
        import soxr

        for q in ("HQ", "MQ"):
            u = soxr.ResampleStream(8000, 16000, 1, dtype="int16", quality=q)
            d = soxr.ResampleStream(16000, 8000, 1, dtype="int16", quality=q)
            cases[f"soxr {q} up"] = (u.resample_chunk, [np.frombuffer(x, "<i2") for x in pcm8])
            cases[f"soxr {q} down"] = (d.resample_chunk, [np.frombuffer(x, "<i2") for x in pcm16])
            layout.append([f"soxr ResampleStream {q}", f"soxr {q} up", f"soxr {q} down", "see notes"])
    except ImportError:
        layout.append(["soxr", None, None, "not installed"])
    try:
        from scipy.signal import resample_poly

        few = max(50, n // 20)     # ~40× slower: fewer frames keep the run short
        cases["scipy up"] = (lambda x: resample_poly(x, 2, 1), [np.frombuffer(x, "<i2") for x in pcm8[:few]])
        cases["scipy down"] = (lambda x: resample_poly(x, 1, 2), [np.frombuffer(x, "<i2") for x in pcm16[:few]])
        layout.append(["scipy resample_poly per frame (stateless: edge errors)", "scipy up", "scipy down", "0"])
    except ImportError:
        layout.append(["scipy", None, None, "not installed"])
    return cases, layout


def tone(freq: float, rate: int, amp: float = 16000.0) -> np.ndarray:
    t = np.arange(rate) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2")


def streamed(in_rate: int, out_rate: int, x: np.ndarray) -> np.ndarray:
    r = StreamResampler(in_rate, out_rate)
    step = in_rate // 50
    pcm = x.tobytes()
    out = b"".join(r.process(pcm[i : i + 2 * step]) for i in range(0, len(pcm), 2 * step))
    return np.frombuffer(out, "<i2").astype(np.float64)[out_rate // 50 :]   # skip the start-up transient


def worst_rejection_db(in_rate: int, out_rate: int, points: int) -> tuple[float, float]:
    """Measured on the streaming output, 20 ms frames, 1 s tones at 16000 peak.

    Downsampling: every output component of a tone above the output Nyquist frequency is an alias. Upsampling:
    every output component above the input Nyquist frequency is an image. Returns (worst level re input, freq)."""
    ref = 16000 / np.sqrt(2)
    worst = (-999.0, 0.0)
    if in_rate > out_rate:
        freqs = np.linspace(out_rate / 2, in_rate / 2 * 0.98, points)
        for f in freqs:
            y = streamed(in_rate, out_rate, tone(f, in_rate))
            worst = max(worst, (20 * np.log10(max(np.sqrt(np.mean(y**2)), 1e-3) / ref), float(f)))
    else:
        freqs = np.linspace(50, in_rate / 2 - 50, points)
        for f in freqs:
            y = streamed(in_rate, out_rate, tone(f, in_rate))
            w = np.hanning(len(y))
            spec = np.abs(np.fft.rfft(y * w)) / (w.sum() / 2)
            hz = np.fft.rfftfreq(len(y), 1 / out_rate)
            band = hz > in_rate / 2 + 20
            images = np.sqrt(np.sum(spec[band] ** 2) / 2)          # RMS of everything above the input band
            worst = max(worst, (20 * np.log10(max(images, 1e-3) / ref), float(f)))
    return worst


def resampler_table(repeat: int, points: int) -> list[list[str]]:
    pairs = list(itertools.permutations(SUPPORTED_RATES, 2))
    cases = {f"{a}>{b}": (StreamResampler(a, b).process, frames(a, 500)) for a, b in pairs}
    cost = measure(cases, repeat)
    rows = []
    for a, b in pairs:
        level, freq = worst_rejection_db(a, b, points)
        kind = "alias" if a > b else "image"
        rows.append([f"{a // 1000}k → {b // 1000}k", f"{cost[f'{a}>{b}']:.2f}",
                     f"{StreamResampler(a, b).delay_ms:.2f}", f"{-level:.1f} ({kind}, worst at {freq:.0f} Hz in)"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and tones (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    n, repeat, points = (500, 3, 8) if args.quick else (2000, 11, 40)

    path_cases, path_order = codec_path_cases(n)
    base_cases, base_layout = baseline_cases(n)
    cost = measure({**path_cases, **base_cases}, repeat)
    fmt = lambda name: "" if name is None else f"{cost[name]:.2f}"  # noqa: E731
    path = table(["step (one 20 ms frame)", "µs per frame"],
                 [[name, f"**{cost[name]:.2f}**" if name.startswith("**") else fmt(name)] for name in path_order])
    base = table(["resampler 8 ↔ 16 kHz", "up µs/frame", "down µs/frame", "delay ms"],
                 [[label, fmt(up), fmt(down), delay] for label, up, down, delay in base_layout])
    pairs = table(["pair", "µs per 20 ms frame", "delay ms", "stop-band rejection dB (measured)"],
                  resampler_table(repeat, points))
    body = f"""### μ-law 8 kHz ⇄ PCM16 16 kHz engine, per call per 20 ms frame

CPU time per frame, best of {repeat} interleaved runs of {n} consecutive frames of one continuous signal.

{path}

### Resamplers compared (same frames)

{base}

soxr delays measured on this kind of machine (shared notes): HQ ≈ 66 ms, MQ ≈ 26 ms — too much for a live call.

### StreamResampler, every supported pair

Polyphase Kaiser-windowed sinc, stop band from the lower rate's Nyquist frequency (design 60 dB), pass band to
0.8 × that Nyquist frequency (3.2 kHz at 8 kHz; gain flat within 0.1 dB up to 0.75 ×). Rejection is measured on
the streamed output with {points} test tones per pair (20 ms frames, 1 s each): the worst alias (downsampling)
or total image energy (upsampling) relative to the input tone. Delay is the filter's group delay, verified by
the phase of a 100 Hz tone in tests/test_voicecodecs_resample.py.

{pairs}
"""
    print(body)
    if not args.no_write:
        print("written to", write_section("codec", "Codec path cost (voicecodecs)", body,
                                          command="python bench/codec.py" + (" --quick" if args.quick else "")))


if __name__ == "__main__":
    main()
