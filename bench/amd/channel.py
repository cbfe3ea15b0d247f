"""What a telephone line does to a greeting that TTS audio lacks, for the AMD corpus (bench/amd/corpus.py).

* ring-back heard before the answered audio (the tail of a cadence some carriers still pass after the answer),
* multi-tone voicemail beeps (two short beeps, a two-tone or three-tone chirp), each tone its own timeline segment,
* G.711 round trips on a middle leg (μ-law, A-law or a transcoding μ-law → A-law hop), done by sox as the final
  delivery is, so a 16 kHz clip can carry narrow-band (300–3400 Hz) speech like a call that crossed a PSTN leg,
* packet loss on the last leg: 20 ms frames lost in bursts (a Gilbert–Elliott two-state model), concealed the way a
  receiver does (ITU-T G.711 Appendix I in outline: repeat the last pitch period, fade 20 % per 10 ms, silence after
  60 ms) or left as zeros (a receiver without PLC).

Every function is deterministic given its inputs and numpy Generator; the corpus plans the parameters per clip so
they are in the manifest next to the true timeline.
"""
from __future__ import annotations

import subprocess

import numpy as np

#: ring-back tones (ITU-T E.180 Supplement 2 and national practice): frequencies, on/off cadence in ms
RINGBACK = {"us": ((440.0, 480.0), (2000, 4000)), "uk": ((400.0, 450.0), (400, 200, 400, 2000)),
            "eu": ((425.0,), (1000, 4000))}


def tone(freqs: tuple[float, ...], n: int, sr: int, ramp_ms: float = 5.0) -> np.ndarray:
    """A sum of sines, unit RMS, with raised edges (no click)."""
    t = np.arange(n) / sr
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs)
    x = np.asarray(x, dtype=np.float64)
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / (ramp_ms / 1000)) if n > 1 and ramp_ms > 0 else np.ones(n)
    x = x * ramp
    return x / (np.sqrt(np.mean(x * x)) or 1.0)


def ringback(kind: str, ms: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """`ms` of a ring-back cadence from a random point of it (it may start mid-ring or in a gap), unit RMS while
    ringing, 5 ms edges."""
    freqs, cadence = RINGBACK[kind]
    n = sr * ms // 1000
    t_ms = (int(rng.integers(0, sum(cadence))) + np.arange(n) * 1000 / sr) % sum(cadence)
    ringing = (np.searchsorted(np.cumsum(cadence), t_ms, side="right") % 2 == 0).astype(np.float64)
    w = sr // 200
    ringing = np.convolve(ringing, np.ones(w) / w, "same")
    return tone(freqs, n, sr, ramp_ms=0.0) * ringing


def beep_tones(pattern: str, rng: np.random.Generator) -> list[tuple[float, int, int]]:
    """A voicemail beep as (Hz, ms, gap after ms) tones. single: one tone 80–1000 ms; double: the same short tone
    twice (80–200 ms); two_tone: a lower then a higher tone; three_tone: three rising short tones. Sequences of
    different tones never look like special information tones (ITU-T E.180: 950/1400/1800 Hz, 180–480 ms each),
    which mean something else: three-tone beeps stay under 180 ms a tone, a two-tone beep never pairs two SIT
    frequencies."""
    if pattern == "single":
        return [(float(rng.integers(42, 201) * 10), int(rng.choice([80, 100, 150, 250, 400, 600, 1000])), 0)]
    if pattern == "double":
        hz, ms = float(rng.integers(42, 201) * 10), int(rng.integers(80, 201))
        return [(hz, ms, int(rng.integers(60, 151))), (hz, ms, 0)]
    if pattern == "two_tone":
        while True:
            lo = float(rng.integers(50, 121) * 10)
            hi = min(2000.0, round(lo * rng.uniform(1.2, 1.6) / 10) * 10)
            if not (sit_like(lo) and sit_like(hi)):
                break
        return [(lo, int(rng.integers(120, 301)), int(rng.integers(0, 51))), (hi, int(rng.integers(120, 301)), 0)]
    if pattern == "three_tone":
        lo = float(rng.integers(50, 101) * 10)
        steps = (1.0, 1.25, 1.5)
        return [(round(lo * s / 10) * 10, int(rng.integers(80, 171)), int(rng.integers(0, 61)) if k < 2 else 0)
                for k, s in enumerate(steps)]
    raise ValueError(pattern)


def sit_like(hz: float) -> bool:
    """Within 60 Hz of a special-information-tone frequency (E.180 ± 50 Hz, and the North-American 913.8 Hz)."""
    return any(abs(hz - f) <= 60 for f in (950.0, 1400.0, 1800.0))


def g711_round_trip(pcm: np.ndarray, law: str, sr: int) -> np.ndarray:
    """PCM16 at `sr` → 8 kHz G.711 (`ulaw` / `alaw`, phone band 300–3400 Hz) → PCM16 at `sr`, by sox, same length."""
    enc = "u-law" if law == "ulaw" else "a-law"
    raw = ["-t", "raw", "-r", str(sr), "-e", "signed", "-b", "16", "-c", "1"]
    g711 = ["-t", "raw", "-r", "8000", "-e", enc, "-b", "8", "-c", "1"]
    narrow = subprocess.run(["sox", "-R", *raw, "-", *g711, "-", "sinc", "300-3400"], input=pcm.astype("<i2").tobytes(),
                            capture_output=True, check=True, timeout=60).stdout
    back = subprocess.run(["sox", "-R", *g711, "-", *raw, "-"], input=narrow, capture_output=True, check=True,
                          timeout=60).stdout
    y = np.frombuffer(back, "<i2")
    out = np.zeros(len(pcm), dtype="<i2")
    out[:min(len(y), len(pcm))] = y[:len(pcm)]
    return out


def lost_frames(n_frames: int, loss_pct: float, mean_burst: float, rng: np.random.Generator) -> list[int]:
    """Indices of lost 20 ms frames: a two-state (Gilbert–Elliott) chain whose long-run loss is `loss_pct` and whose
    bursts last `mean_burst` frames on average."""
    p_end = 1.0 / max(1.0, mean_burst)
    loss = loss_pct / 100
    p_start = loss * p_end / max(1e-9, 1 - loss)
    out, bad = [], False
    for i in range(n_frames):
        bad = (rng.random() >= p_end) if bad else (rng.random() < p_start)
        if bad:
            out.append(i)
    return out


def conceal(x: np.ndarray, lost: list[int], sr: int, plc: bool) -> np.ndarray:
    """Replace the lost 20 ms frames of float signal `x`: with PLC, repeat the last pitch period found in the 40 ms
    before the loss (autocorrelation, 2.5–15 ms), fading 20 % per 10 ms after the first 10 ms and silent after
    60 ms; without PLC, zeros."""
    y = x.copy()
    frame = sr // 50
    lost_set = set(lost)
    run = 0
    period = frame
    for i in sorted(lost_set):
        a, b = i * frame, min(len(y), (i + 1) * frame)
        if a >= len(y):
            break
        run = run + 1 if i - 1 in lost_set else 1
        if not plc:
            y[a:b] = 0.0
            continue
        if run == 1:
            hist = y[max(0, a - 2 * frame):a]
            period = _pitch_period(hist, sr)
        src = y[max(0, a - period):a] if a >= period else np.zeros(period)
        fill = np.resize(src, b - a) if len(src) else np.zeros(b - a)
        t0 = (run - 1) * 20                     # ms into the loss at the start of this frame
        ms = t0 + np.arange(b - a) * 1000 / sr
        gain = np.clip(1.0 - 0.2 * np.maximum(0.0, ms - 10) / 10, 0.0, 1.0)
        gain[ms >= 60] = 0.0
        y[a:b] = fill * gain
    return y


def _pitch_period(hist: np.ndarray, sr: int) -> int:
    lo, hi = int(sr * 0.0025), int(sr * 0.015)
    if len(hist) < 2 * hi or not np.any(hist):
        return sr // 100
    ref = hist[-hi:]
    best, lag = -np.inf, sr // 100
    for k in range(lo, hi + 1):
        seg = hist[-hi - k:-k]
        c = float(np.dot(ref, seg)) / (np.sqrt(float(np.dot(seg, seg)) * float(np.dot(ref, ref))) or 1.0)
        if c > best:
            best, lag = c, k
    return lag
