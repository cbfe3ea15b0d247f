"""Generate the labelled AMD corpus on this machine (espeak-ng + sox), as a carrier would deliver it.

    python bench/amd/corpus.py [--out bench/amd/corpus] [--scale 1.0] [--jobs 2]

Every clip is built at 8 kHz: TTS speech band-limited to the phone band (sox `sinc 300-3400`), placed on a
timeline with pauses, beeps or fax tones, mixed with pink noise at one of four levels, scaled to a random level,
then encoded to 8 kHz μ-law WAV by sox — the bytes a Twilio/Exotel media stream or a G.711 RTP trunk carries.
The evaluator decodes the μ-law back to PCM16 exactly as the gateway does.

Splits: the test split holds out whole voices AND whole text templates (neither appears in dev), so thresholds
tuned on dev cannot have seen them. `manifest.json` records, per clip, the label and the ground-truth timeline
(speech end, beep start/end) that the evaluator checks decisions against.

Bounded: ~600 clips, utterances cached per (voice, speed, text), a process pool; about a minute on 2 cores.
TTS audio is not real calls: accuracy on it is an engineering signal, not a field accuracy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SR = 8000
HERE = Path(__file__).resolve().parent

VOICES = {
    "dev": ["en-us+m3", "en-gb+f2", "en-gb-scotland+m1", "en-029+f4", "en-gb-x-rp+m5", "en-us+f1"],
    "test": ["en-us-nyc+f3", "en-gb-x-gbclan+m2", "en-gb-x-gbcwmd+f5"],
}
SPEEDS = [130, 150, 170, 190]
NOISE = {"none": 0.0, "low": 60.0, "mid": 250.0, "high": 700.0}   # pink-noise RMS in PCM16 units

HUMAN_FIRST = {
    "dev": ["Hello?", "Yes?", "Hello, yes?", "Hi, who's calling?", "Hello, this is Sam.", "Yeah, hello?",
            "Good morning.", "Hi there.", "Speaking.", "Hello, Mark speaking."],
    "test": ["Hi?", "Hello, who is this?", "Yes, hello?", "Hey, this is Dana.", "Good afternoon.", "Hello there.",
             "Yep?", "Hi, Priya speaking."],
}
HUMAN_SECOND = {
    "dev": ["Hello? Anyone there?", "Hello?", "Can you hear me?"],
    "test": ["Who is this?", "Hello, is anybody there?"],
}
MACHINE = {
    "dev": [
        "Hi, you've reached {name}. I can't take your call right now. Please leave a message after the tone.",
        "Hello, this is {name}. Sorry I missed your call. Leave your name and number and I'll get back to you "
        "as soon as I can.",
        "The person you are calling is not available. At the tone, please record your message. When you have "
        "finished recording, you may hang up.",
        "Thank you for calling {company}. Our office is currently closed. Our business hours are Monday through "
        "Friday, nine to five. Please leave a message.",
        "Hey, it's {name}. Leave a message.",
    ],
    "test": [
        "You have reached the voicemail of {name}. Please leave your message after the beep.",
        "Hi, this is {name}. I'm away from my phone. Please leave a detailed message and I will return your call.",
        "The number you have dialed is not available. Please leave a message after the tone.",
        "Hello, you've reached {company}. All of our representatives are busy. Please leave your name, number "
        "and a brief message, and we will call you back.",
        "It's {name}, leave a message.",
    ],
}
NAMES = {"dev": ["Alex Turner", "Maria Gonzalez", "the Johnson family", "Chris"],
         "test": ["Jordan Lee", "Priya Patel", "the Miller residence", "Sam"]}
COMPANIES = {"dev": ["Acme Plumbing", "Northside Dental"], "test": ["Bright Solar", "Lakeview Clinic"]}
BEEP_HZ = [440, 500, 700, 850, 1000, 1200, 1400, 1800, 2000]
COUNTS = {"dev": {"human": 150, "machine": 150, "fax": 14, "silence": 14},
          "test": {"human": 120, "machine": 120, "fax": 10, "silence": 10}}


def tts(voice: str, speed: int, text: str, cache: Path) -> np.ndarray:
    """espeak-ng → sox (8 kHz, phone band) → float PCM; cached on disk."""
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = cache / f"{key}.raw"
    if not path.exists():
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                             capture_output=True, check=True, timeout=30).stdout
        raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16",
                              "-c", "1", "-", "sinc", "300-3400"], input=wav, capture_output=True, check=True,
                             timeout=30).stdout
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        tmp.replace(path)
    return np.frombuffer(path.read_bytes(), "<i2").astype(np.float64)


def trim(x: np.ndarray, thr: float = 200.0) -> np.ndarray:
    """Cut espeak's leading/trailing silence so the timeline's pauses are the ones we chose."""
    idx = np.flatnonzero(np.abs(x) > thr)
    return x[idx[0]:idx[-1] + 1] if len(idx) else x


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec))
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() or 1.0)


def sine(freq: float, ms: int, amp: float) -> np.ndarray:
    t = np.arange(SR * ms // 1000) / SR
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)
    return amp * np.sin(2 * np.pi * freq * t) * ramp


def zeros(ms: int) -> np.ndarray:
    return np.zeros(SR * ms // 1000)


def build(spec: dict, cache: Path) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(spec["seed"])
    kind, voice, speed = spec["kind"], spec["voice"], spec["speed"]
    parts: list[np.ndarray] = []
    truth: dict = {}

    def ms() -> int:
        return sum(len(p) for p in parts) * 1000 // SR

    if kind == "human":
        parts.append(zeros(int(rng.integers(200, 1000))))
        parts.append(trim(tts(voice, speed, spec["text"], cache)) * rng.uniform(0.5, 1.0))
        truth["speech_end_ms"] = ms()
        if spec.get("second"):
            parts.append(zeros(int(rng.integers(1200, 2500))))
            truth["second_start_ms"] = ms()
            parts.append(trim(tts(voice, speed, spec["second"], cache)) * rng.uniform(0.5, 1.0))
            parts.append(zeros(2000))
        else:
            parts.append(zeros(4500))
    elif kind == "machine":
        parts.append(zeros(int(rng.integers(100, 800))))
        parts.append(trim(tts(voice, speed, spec["text"], cache)) * rng.uniform(0.5, 1.0))
        truth["greeting_end_ms"] = ms()
        if spec.get("beep_hz"):
            parts.append(zeros(int(rng.integers(200, 800))))
            truth["beep_start_ms"] = ms()
            parts.append(sine(spec["beep_hz"], spec["beep_ms"], rng.uniform(3000, 12000)))
            truth["beep_end_ms"] = ms()
            parts.append(zeros(2500))
        else:
            parts.append(zeros(3000))
    elif kind == "fax":
        parts.append(zeros(int(rng.integers(300, 1200))))
        truth["tone_start_ms"] = ms()
        if spec["fax"] == "cng":
            for _ in range(3):
                parts += [sine(1100, 500, 6000), zeros(3000)]
        else:
            parts.append(sine(2100, int(rng.integers(2600, 4000)), 6000))
            parts.append(rng.standard_normal(SR * 3) * 2000)   # V.21 preamble stand-in: wide-band
    else:  # silence: the callee picks up and says nothing
        parts.append(zeros(8000))
    x = np.concatenate(parts)
    if spec["noise"] != "none":
        x = x + pink(len(x), rng) * NOISE[spec["noise"]]
    return np.clip(x, -32768, 32767).astype("<i2"), truth


def render(spec: dict, out: Path, cache: Path) -> dict:
    pcm, truth = build(spec, cache)
    tmp = out / f"{spec['id']}.pcm.wav"
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    final = out / f"{spec['id']}.wav"
    subprocess.run(["sox", str(tmp), "-r", str(SR), "-c", "1", "-e", "u-law", str(final)], check=True, timeout=30)
    tmp.unlink()
    return {**spec, **truth, "file": final.name, "duration_ms": len(pcm) * 1000 // SR}


def plan(scale: float, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    specs = []
    for split, counts in COUNTS.items():
        for kind, n in counts.items():
            for i in range(max(1, int(n * scale))):
                s = {"id": f"{split}-{kind}-{i:03d}", "split": split, "kind": kind, "seed": rng.randrange(1 << 30),
                     "voice": rng.choice(VOICES[split]), "speed": rng.choice(SPEEDS),
                     "noise": rng.choice(list(NOISE))}
                if kind == "human":
                    s["template"] = rng.randrange(len(HUMAN_FIRST[split]))
                    s["text"] = HUMAN_FIRST[split][s["template"]]
                    s["words"] = len(s["text"].split())
                    if rng.random() < 0.4:
                        s["second"] = rng.choice(HUMAN_SECOND[split])
                elif kind == "machine":
                    s["template"] = rng.randrange(len(MACHINE[split]))
                    s["text"] = MACHINE[split][s["template"]].format(name=rng.choice(NAMES[split]),
                                                                      company=rng.choice(COMPANIES[split]))
                    if rng.random() < 0.7:
                        s["beep_hz"] = rng.choice(BEEP_HZ)
                        s["beep_ms"] = rng.choice([150, 250, 400, 600, 800])
                elif kind == "fax":
                    s["fax"] = rng.choice(["cng", "ced"])
                specs.append(s)
    return specs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "corpus"))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default clip counts")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install -y espeak-ng sox)", file=sys.stderr)
            return 2
    out = Path(args.out)
    cache = out / "_tts"
    cache.mkdir(parents=True, exist_ok=True)
    specs = plan(args.scale)
    t0 = time.monotonic()
    with ProcessPoolExecutor(args.jobs) as pool:
        clips = list(pool.map(render, specs, [out] * len(specs), [cache] * len(specs), chunksize=8))
    (out / "manifest.json").write_text(json.dumps({"sample_rate": SR, "encoding": "mu-law", "clips": clips},
                                                  indent=1))
    print(f"{len(clips)} clips in {time.monotonic() - t0:.1f} s → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
