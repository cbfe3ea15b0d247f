"""Generate the labelled AMD corpus on this machine (three TTS engines + sox), as a carrier would deliver it.

    python bench/amd/corpus.py [--out bench/amd/corpus] [--scale 1.0] [--jobs 2]

Broad by construction (issue 15): every clip draws a TTS engine and voice, a speaking rate and pitch, one
*scenario* (the failure classes seen on independently built corpora, below), a noise type and SNR, and a carrier
format. Its true timeline — every speech, pause, music, tone and beep segment with start/end in ms — is written to
`manifest.json` next to the clips.

* engines: espeak-ng (formant synthesis), flite (CMU diphone/clunits voices), festival (diphone and HTS voices).
* scenarios — people: short answer (+ sometimes a second one after a wait), "Hello? … Hello? Who's calling?" with
  short gaps, business answers ("Good morning, Acme support, …"), silent pick-up; machines: greeting ± beep, a
  greeting with a 1.2–2 s pause late in it (before a last sentence, or before the beep) and a short beep,
  "Hi!" + ~1 s pause + the rest, greetings that start with music, high-pitched female voices (harmonics near the
  400 Hz bottom of the beep band); SIT (three rising tones then a "not in service" announcement) — its own
  outcome, never a voicemail drop; fax CNG / CED.
* noise: none, white, pink, babble (other TTS voices talking), music-like tones, car/road low-frequency rumble, at
  10–40 dB SNR against the clip's active audio (fax CNG also at 10–15 dB).
* carrier format: 8 kHz μ-law, 8 kHz A-law (phone band 300–3400 Hz), 16 kHz PCM16 (wide band 100–7000 Hz). The
  codec step is done by sox, not by the gateway's codec; the evaluator decodes as the gateway does.

A third round (`plan_round3`, voices and scripts in corpus_round3.py, line effects in channel.py) adds what a phone
line does and TTS lacks — a random answer delay with sometimes a ring-back tail before it, levels of −30…−10 dBFS,
a G.711 middle leg (μ-law, A-law or a μ-law/A-law transcoding hop: 16 kHz clips then carry narrow-band speech), a
little packet loss (0.5–3 % of 20 ms frames in bursts, concealed or left as gaps) — long greetings (name + "is not
available" + instructions), carrier voicemail (with the person's own recorded name in another voice), multi-tone
beeps (two short beeps, two-tone, three rising tones), many more espeak-ng accents × variants, flite's kal voices,
festival's Italian voices, and ≥ 30 person/machine clips of every noise kind per split.

Splits differ by ENGINE and SCRIPT, not only by voice: festival is never used in dev; espeak-ng and flite voices
are split (dev voices never appear in test); every text (greetings, answers, announcements, babble) comes from
per-split pools (only one-word calls such as "Hello?" occur in both). Thresholds are tuned on dev only.

Deterministic: one seed per round plans its clips (adding a round never moves an earlier clip); each clip has its
own numpy seed; sox runs in repeatable mode (`-R`: its dither is seeded); byte-identical clips on every run
(checked with md5sum). TTS output is cached per (engine, voice, rate, pitch, text). 1820 clips in 2 min on a
2-core box at load ~4 (7.5 min at load ~19) with the TTS cache in place; TTS from scratch adds about 2–3 min
(festival batches its utterances into one process per voice). TTS audio is not real calls: accuracy on it is an
engineering signal.
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
import tempfile
import time
import wave
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import channel  # noqa: E402
import corpus_round3 as R3  # noqa: E402

SR = 16000          # clips are built at 16 kHz, then delivered at 8 or 16 kHz
HERE = Path(__file__).resolve().parent

# ---- voices -------------------------------------------------------------------------------------------------------
VOICES = {
    "dev": {
        "espeak-ng": ["en-us+m3", "en-gb+f2", "en-gb-scotland+m1", "en-029+f4", "en-gb-x-rp+m5", "en-us+f1",
                      "en-us+klatt", "en-gb+f5"],
        "flite": ["awb", "rms"],
    },
    "test": {
        "espeak-ng": ["en-us-nyc+f3", "en-gb-x-gbclan+m2", "en-gb-x-gbcwmd+f5", "en-us+m7"],
        "flite": ["slt", "kal16"],
        "festival": ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"],
    },
}
FEMALE = {"espeak-ng": ("+f",), "flite": ("slt",), "festival": ("slt",)}
#: share of clips per engine in each split
ENGINE_SHARE = {"dev": {"espeak-ng": 0.6, "flite": 0.4},
                "test": {"espeak-ng": 0.34, "flite": 0.33, "festival": 0.33}}
RATES = [0.8, 0.9, 1.0, 1.12, 1.25]      # speaking-rate factor (espeak words/min, flite/festival duration stretch)
PITCHES = [-2, -1, 0, 1, 2]              # pitch step (espeak -p, flite f0 target); festival keeps its own pitch

NOISES = ["none", "white", "pink", "babble", "music", "car"]
FORMATS = [("ulaw", 8000), ("alaw", 8000), ("pcm", 16000)]

# ---- scripts (per split: no text is shared between dev and test) --------------------------------------------------
T = {
    "dev": {
        "short": ["Hello?", "Yes?", "Hello, yes?", "Hi, who's calling?", "Hello, this is Sam.", "Yeah, hello?",
                  "Good morning.", "Hi there.", "Speaking.", "Hello, Mark speaking.", "Hey.", "This is Robin."],
        "second": ["Hello? Anyone there?", "Hello?", "Can you hear me?", "Who is it?"],
        "repeat": [("Hello?", "Hello? Who's calling?"), ("Yes?", "Hello?"), ("Hello?", "Hello, can you hear me?"),
                   ("Hi?", "Hi, who is this?"), ("Hello?", "Hello?", "Anyone there?")],
        "business": ["Good morning, Acme support, Tom speaking, how can I help?",
                     "Northside Dental, this is Karen.", "Thanks for calling Acme, this is Joe.",
                     "Reception, how can I help you?", "Parts department, Luis speaking.",
                     "Good afternoon, city library, how may I help?"],
        "greeting": [
            "Hi, you've reached {name}. I can't take your call right now. Please leave a message after the tone.",
            "Hello, this is {name}. Sorry I missed your call. Leave your name and number and I'll get back to you "
            "as soon as I can.",
            "The person you are calling is not available. At the tone, please record your message. When you have "
            "finished recording, you may hang up.",
            "Thank you for calling {company}. Our office is currently closed. Our business hours are Monday "
            "through Friday, nine to five. Please leave a message.",
            "Hey, it's {name}. Leave a message.",
            "You've reached {name} at {company}. I'm either on the phone or away from my desk. Leave a message.",
            "This is {name}. I'm out of the office until Monday. For urgent matters call the front desk.",
        ],
        "pause_tail": ["Please leave a message after the tone.", "Leave your number and I'll call you back.",
                       "Record your message at the beep."],
        "hi": ["Hi!", "Hello!", "Yeah?"],
        "hi_tail": ["Just kidding, I'm not here right now. Leave a message and I'll call you back.",
                    "Sorry, this is a recording. I can't get to the phone, so leave me a message.",
                    "Got you, this is my voicemail. You know what to do."],
        "sit": ["We're sorry. The number you have dialed is not in service. Please check the number and try again.",
                "Your call cannot be completed as dialed. Please check the number and dial again.",
                "All circuits are busy now. Please try your call again later."],
        "babble": ["I told him we would meet at the station around six.", "Did you see the game last night?",
                   "Can you pass me the salt please?", "We should really get going soon.",
                   "She said the report is due on Friday."],
        "name": ["Alex Turner", "Maria Gonzalez", "the Johnson family", "Chris", "Dr. Patel"],
        "company": ["Acme Plumbing", "Northside Dental", "Riverside Auto"],
    },
    "test": {
        "short": ["Hi?", "Hello, who is this?", "Yes, hello?", "Hey, this is Dana.", "Good afternoon.",
                  "Hello there.", "Yep?", "Hi, Priya speaking.", "Hello, it's Leo.", "Uh, hello?"],
        "second": ["Who is this?", "Hello, is anybody there?", "Hello? Are you there?"],
        "repeat": [("Hello?", "Hello? Who is this?"), ("Hi?", "Hello?"), ("Yes?", "Yes, hello, who's there?"),
                   ("Hello?", "Hello?", "I can't hear you.")],
        "business": ["Bright Solar, this is Mia, how can I help you today?", "Lakeview Clinic, front desk.",
                     "Hi, thanks for calling Bright Solar, Jake speaking.", "Service desk, what can I do for you?",
                     "Morning, Lakeview Clinic, Anna here, how can I help?"],
        "greeting": [
            "You have reached the voicemail of {name}. Please leave your message after the beep.",
            "Hi, this is {name}. I'm away from my phone. Please leave a detailed message and I will return your "
            "call.",
            "The number you have dialed is not available. Please leave a message after the tone.",
            "Hello, you've reached {company}. All of our representatives are busy. Please leave your name, number "
            "and a brief message, and we will call you back.",
            "It's {name}, leave a message.",
            "Thanks for calling {company}. We are closed for the holiday. Please call again tomorrow morning.",
        ],
        "pause_tail": ["Leave a message after the beep.", "Please say your name and number after the tone."],
        "hi": ["Hey!", "Hello?", "Yes!"],
        "hi_tail": ["Ha, fooled you, I'm not actually here. Leave a message after the beep.",
                    "This is {name}'s voicemail. Please leave your message and I will call you back soon."],
        "sit": ["The number you have reached is not in service. If you feel you have reached this recording in "
                "error, please check the number and try your call again.",
                "We're sorry, you have reached a number that has been disconnected or is no longer in service."],
        "babble": ["The meeting moved to Thursday afternoon.", "I think it's going to rain later.",
                   "Where did you park the car?", "They're out of the blue ones, I checked."],
        "name": ["Jordan Lee", "Priya Patel", "the Miller residence", "Sam", "Coach Rivera"],
        "company": ["Bright Solar", "Lakeview Clinic", "Harbor Insurance"],
    },
}

# scenario → (truth class, share of the split's clips)
SCENARIOS = {
    "human_short": ("human", 0.15), "human_repeat": ("human", 0.10), "human_business": ("human", 0.09),
    "human_second": ("human", 0.07),
    "machine_greeting": ("machine", 0.17), "machine_pause_beep": ("machine", 0.07),
    "machine_hi_pause": ("machine", 0.06), "machine_music_intro": ("machine", 0.06),
    "machine_female_high": ("machine", 0.06),
    "sit": ("sit", 0.06), "fax_cng": ("fax", 0.05), "fax_ced": ("fax", 0.02), "silence": ("silence", 0.04),
}
CLIPS = {"dev": 560, "test": 560}
BEEP_HZ = [425, 440, 500, 600, 700, 850, 1000, 1200, 1400, 1600, 1800, 2000]


# ---- TTS ----------------------------------------------------------------------------------------------------------
def utt_key(engine: str, voice: str, rate: float, pitch: int, text: str) -> str:
    return hashlib.sha1(f"{engine}|{voice}|{rate}|{pitch}|{text}".encode()).hexdigest()[:16]


def _to_raw16k(wav_bytes: bytes) -> bytes:
    return subprocess.run(["sox", "-R", "-t", "wav", "-", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16", "-c",
                           "1", "-"], input=wav_bytes, capture_output=True, check=True, timeout=60).stdout


def synth_one(engine: str, voice: str, rate: float, pitch: int, text: str) -> bytes:
    if engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice, "-s", str(int(165 * rate)), "-p", str(50 + 12 * pitch), "--stdout", text]
        return _to_raw16k(subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout)
    if engine == "flite":
        f0 = {"slt": 180, "kal16": 105, "awb": 110, "rms": 100}.get(voice, 110) * (1 + 0.1 * pitch)
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={1 / rate:.3f}", "--setf",
                            f"int_f0_target_mean={f0:.0f}", "-t", text, "-o", f.name], check=True, timeout=60,
                           capture_output=True)
            return _to_raw16k(Path(f.name).read_bytes())
    raise ValueError(engine)


def synth_festival(voice: str, items: list[tuple[float, str, Path]]) -> None:
    """One festival process per voice for all its utterances (its start-up costs seconds)."""
    with tempfile.TemporaryDirectory() as d:
        lines = [f"(voice_{voice})"]
        wavs = []
        for i, (rate, text, _) in enumerate(items):
            w = Path(d) / f"{i}.wav"
            wavs.append(w)
            esc = text.replace("\\", "").replace('"', "")
            lines.append(f"(Parameter.set 'Duration_Stretch {1 / rate:.3f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{esc}")) "{w}" \'riff)')
        scm = Path(d) / "batch.scm"
        scm.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))     # festival reads ISO-8859-1 (Italian)
        subprocess.run(["festival", "-b", str(scm)], check=True, timeout=900, capture_output=True)
        for w, (_, _, out) in zip(wavs, items, strict=True):
            out.write_bytes(_to_raw16k(w.read_bytes()))


def _synth_job(job: tuple) -> None:
    engine, voice, rate, pitch, text, out = job
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(synth_one(engine, voice, rate, pitch, text))
    tmp.replace(out)


def synthesize_all(needed: set[tuple], cache: Path, jobs: int) -> None:
    todo = [(e, v, r, p, t, cache / f"{utt_key(e, v, r, p, t)}.raw") for e, v, r, p, t in sorted(needed)]
    todo = [j for j in todo if not j[5].exists()]
    fest: dict[str, list] = defaultdict(list)
    other = []
    for j in todo:
        (fest[j[1]].append((j[2], j[4], j[5])) if j[0] == "festival" else other.append(j))
    with ProcessPoolExecutor(jobs) as pool:
        futs = [pool.submit(synth_festival, v, items) for v, items in fest.items()]
        list(pool.map(_synth_job, other, chunksize=16))
        for f in futs:
            f.result()


def load_utt(cache: Path, engine: str, voice: str, rate: float, pitch: int, text: str) -> np.ndarray:
    x = np.frombuffer((cache / f"{utt_key(engine, voice, rate, pitch, text)}.raw").read_bytes(), "<i2")
    x = x.astype(np.float64)
    idx = np.flatnonzero(np.abs(x) > 0.02 * (np.abs(x).max() or 1))     # cut the engine's own silences
    x = x[idx[0]:idx[-1] + 1] if len(idx) else x
    return x / (np.sqrt(np.mean(x * x)) or 1.0)                          # unit RMS; the clip sets the level


def inner_pauses(x: np.ndarray, min_ms: int = 150) -> list[tuple[int, int]]:
    """Pauses inside one clean utterance (10 ms frames 35 dB under its loudest), for the timeline."""
    hop = SR // 100
    e = np.array([np.mean(x[i:i + hop] ** 2) for i in range(0, len(x) - hop + 1, hop)])
    quiet = e < (e.max() if len(e) else 0) * 10 ** -3.5
    out, start = [], None
    for i, q in enumerate(list(quiet) + [False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * 10 >= min_ms:
                out.append((start * 10, i * 10))
            start = None
    return out


# ---- signals ------------------------------------------------------------------------------------------------------
def zeros(ms: int) -> np.ndarray:
    return np.zeros(SR * ms // 1000)


def sine(freq: float, ms: int, ramp_ms: float = 5.0) -> np.ndarray:
    t = np.arange(SR * ms // 1000) / SR
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / (ramp_ms / 1000))
    return np.sin(2 * np.pi * freq * t) * ramp * np.sqrt(2)              # unit RMS


def music(ms: int, rng: np.random.Generator, pure_share: float = 0.3) -> np.ndarray:
    """Synthetic intro/hold music: notes of 120–450 ms on a pentatonic scale, some with harmonics (piano-ish
    decay), some nearly pure (flute-ish: the false-beep risk), sometimes two-note chords, short or no gaps."""
    out = []
    total = SR * ms // 1000
    n = 0
    scale = [0, 2, 4, 7, 9]
    while n < total:
        dur = int(rng.integers(120, 450)) * SR // 1000
        t = np.arange(dur) / SR
        note = np.zeros(dur)
        for _ in range(1 if rng.random() < 0.7 else 2):
            midi = 60 + 12 * int(rng.integers(0, 3)) + scale[int(rng.integers(0, 5))]
            f = 440.0 * 2 ** ((midi - 69) / 12)
            pure = rng.random() < pure_share
            partials = [1.0] if pure else [1.0, 0.5, 0.3, 0.2]
            for k, a in enumerate(partials, 1):
                if f * k < SR / 2:
                    note += a * np.sin(2 * np.pi * f * k * t)
            note *= np.exp(-t * (1.0 if pure else rng.uniform(3, 8)))
        note *= np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
        out.append(note)
        n += dur
        if rng.random() < 0.3:
            gap = int(rng.integers(20, 120)) * SR // 1000
            out.append(np.zeros(gap))
            n += gap
    x = np.concatenate(out)[:total]
    return x / (np.sqrt(np.mean(x * x)) or 1.0)


def colored(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=float)
    f[0] = 1.0
    spec /= f ** (exponent / 2)
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() or 1.0)


def car(n: int, rng: np.random.Generator) -> np.ndarray:
    """Road/engine rumble: brown noise (energy mostly below ~500 Hz) plus an engine hum with harmonics."""
    t = np.arange(n) / SR
    f0 = rng.uniform(30, 90)
    hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 12))
    x = colored(n, rng, 2.0) + 0.5 * hum / np.sqrt(np.mean(hum * hum))
    return x / (x.std() or 1.0)


def babble(n: int, rng: np.random.Generator, pool: list[np.ndarray]) -> np.ndarray:
    """Four to six other voices talking at once, each looped at random offsets."""
    x = np.zeros(n)
    for _ in range(int(rng.integers(4, 7))):
        src = pool[int(rng.integers(len(pool)))]
        rep = np.tile(np.concatenate([src, zeros(int(rng.integers(100, 600)))]), n // len(src) + 2)
        off = int(rng.integers(0, len(src)))
        x += rep[off:off + n] * rng.uniform(0.5, 1.0)
    return x / (x.std() or 1.0)


def babble_few(n: int, rng: np.random.Generator, pool: list[np.ndarray], talkers: int) -> np.ndarray:
    """A few talkers with pauses between their sentences (each one can be heard, unlike a crowd's babble)."""
    x = np.zeros(n)
    for _ in range(talkers):
        pos = int(rng.integers(0, SR))
        gain = rng.uniform(0.5, 1.0)
        while pos < n:
            src = pool[int(rng.integers(len(pool)))]
            m = min(len(src), n - pos)
            x[pos:pos + m] += src[:m] * gain
            pos += m + int(rng.integers(300, 1500)) * SR // 1000
    return x / (x.std() or 1.0)


def office(n: int, rng: np.random.Generator, pool: list[np.ndarray]) -> np.ndarray:
    """An open office: two or three nearby talkers, keyboard clicks, ventilation hiss."""
    x = babble_few(n, rng, pool, int(rng.integers(2, 4)))
    clicks = np.zeros(n)
    for at in np.cumsum(rng.integers(SR // 20, SR // 3, size=n // (SR // 20) + 1)):
        if at >= n:
            break
        m = min(SR // 100, n - at)
        clicks[at:at + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / (SR / 2000)) * rng.uniform(1, 3)
    x = x + clicks + 0.3 * colored(n, rng, 1.0)
    return x / (x.std() or 1.0)


def street(n: int, rng: np.random.Generator) -> np.ndarray:
    """Traffic: rumble, vehicles passing (band noise swelling and fading over 2–5 s) and now and then a car horn
    (two harmonic-rich tones near 400–500 Hz: a false-beep risk)."""
    x = colored(n, rng, 2.0)
    t = np.arange(n) / SR
    for _ in range(max(1, n // (SR * 3))):
        c, w = rng.uniform(0, n / SR), rng.uniform(1.0, 2.5)
        x += 2 * colored(n, rng, 0.5) * np.exp(-((t - c) / w) ** 2)
    if rng.random() < 0.6:
        at, m = int(rng.integers(0, max(1, n - SR // 2))), int(rng.uniform(0.25, 0.6) * SR)
        m = min(m, n - at)
        tt = np.arange(m) / SR
        f1 = rng.uniform(380, 440)
        horn = sum(np.sin(2 * np.pi * f * k * tt) / k for f in (f1, f1 * 1.26) for k in range(1, 6))
        x[at:at + m] += 3 * horn / np.sqrt(np.mean(horn * horn))
    return x / (x.std() or 1.0)


def sit_tones(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Special information tones: three rising segments (ANSI/Bellcore codes: 913.8/985.2, 1370.6/1428.5,
    1776.7 Hz; 274 or 380 ms; ITU-T E.180 allows 950/1400/1800 ± 50 Hz, 330 ± 70 ms, gaps ≤ 30 ms)."""
    f1 = [913.8, 985.2][int(rng.integers(2))]
    f2 = [1370.6, 1428.5][int(rng.integers(2))]
    parts, segs, t = [], [], 0
    for f, d in ((f1, [274, 380][int(rng.integers(2))]), (f2, [274, 380][int(rng.integers(2))]), (1776.7, 380)):
        parts.append(sine(f, d, 3))
        segs.append({"type": "sit_tone", "hz": f, "start_ms": t, "end_ms": t + d})
        gap = int(rng.integers(0, 31))
        parts.append(zeros(gap))
        t += d + gap
    return np.concatenate(parts), segs


# ---- plan ---------------------------------------------------------------------------------------------------------
def person_texts(scen: str, pool: dict, rng: random.Random) -> list[str] | None:
    """A person's lines for the human scenarios every round has, from the split's `pool` (None: not one of them)."""
    if scen in ("human_short", "human_second"):
        texts = [rng.choice(pool["short"])]
        if scen == "human_second":
            texts.append(rng.choice(pool["second"]))
        return texts
    if scen == "human_repeat":
        return list(rng.choice(pool["repeat"]))
    if scen == "human_business":
        return [rng.choice(pool["business"])]
    return None


def plan(scale: float, seed: int = 15) -> list[dict]:
    rng = random.Random(seed)
    specs = []
    for split, total in CLIPS.items():
        s_text = T[split]
        engines = list(ENGINE_SHARE[split])
        weights = [ENGINE_SHARE[split][e] for e in engines]
        for scen, (truth, share) in SCENARIOS.items():
            for i in range(max(2, round(total * share * scale))):
                eng = rng.choices(engines, weights)[0]
                voices = VOICES[split][eng]
                if scen == "machine_female_high":
                    voices = [v for v in voices if any(m in v for m in FEMALE[eng])] or voices
                s = {"id": f"{split}-{scen}-{i:03d}", "split": split, "scenario": scen, "kind": truth,
                     "seed": rng.randrange(1 << 30), "engine": eng, "voice": rng.choice(voices),
                     "rate": rng.choice(RATES), "pitch": 0 if eng == "festival" else rng.choice(PITCHES),
                     "noise": rng.choice(NOISES), "snr_db": round(rng.uniform(10, 40), 1)}
                if scen == "machine_female_high":
                    s["pitch"] = 0 if eng == "festival" else 2
                if scen == "fax_cng" and rng.random() < 0.6:
                    s["noise"], s["snr_db"] = rng.choice(["white", "pink", "babble"]), round(rng.uniform(10, 15), 1)
                fmt = rng.choice(FORMATS)
                s["codec"], s["rate_hz"] = fmt
                name, company = rng.choice(s_text["name"]), rng.choice(s_text["company"])
                fill = lambda x: x.format(name=name, company=company)  # noqa: E731, B023 (used within this iteration)
                person = person_texts(scen, s_text, rng)
                if person is not None:
                    s["texts"] = person
                elif scen in ("machine_greeting", "machine_music_intro", "machine_female_high"):
                    s["texts"] = [fill(rng.choice(s_text["greeting"]))]
                elif scen == "machine_pause_beep":
                    s["texts"] = [fill(rng.choice(s_text["greeting"]))]
                    if rng.random() < 0.5:
                        s["texts"].append(fill(rng.choice(s_text["pause_tail"])))
                elif scen == "machine_hi_pause":
                    s["texts"] = [rng.choice(s_text["hi"]), fill(rng.choice(s_text["hi_tail"]))]
                elif scen == "sit":
                    s["texts"] = [rng.choice(s_text["sit"])]
                else:
                    s["texts"] = []
                if truth == "machine":
                    if scen == "machine_pause_beep":
                        s["beep_hz"], s["beep_ms"] = rng.choice(BEEP_HZ), rng.choice([100, 120, 150, 200])
                    elif rng.random() < 0.75:
                        s["beep_hz"], s["beep_ms"] = rng.choice(BEEP_HZ), rng.choice([100, 150, 250, 400, 600, 900])
                if s["noise"] == "babble":
                    bv = [v for v in VOICES[split]["espeak-ng"]][:4]
                    s["babble"] = [(rng.choice(bv), t) for t in s_text["babble"]]
                specs.append(s)
    return specs


# ---- second round: more languages, phrasings and noises (planned apart, so the clips above stay byte-identical) ----
#: espeak-ng's voices for other languages, split by LANGUAGE (dev never hears French, Italian or Portuguese)
LANG_VOICES = {"dev": {"de": ["de+m3", "de+f2"], "es": ["es+f4", "es+m1"], "nl": ["nl+m5"]},
               "test": {"fr": ["fr-fr+f3", "fr-fr+m2"], "it": ["it+m7", "it+f5"], "pt": ["pt-br+f1"]}}
LANG_T = {
    "de": {"short": ["Hallo?", "Ja, bitte?", "Müller.", "Hallo, wer ist da?"],
           "business": ["Guten Tag, Firma Becker, Sie sprechen mit Frau Schulz, was kann ich für Sie tun?",
                        "Praxis Doktor Weber, guten Morgen, wie kann ich helfen?"],
           "greeting": ["Hallo, hier ist der Anschluss von Familie Schneider. Wir sind leider nicht erreichbar. "
                        "Bitte hinterlassen Sie eine Nachricht nach dem Signalton.",
                        "Sie sind verbunden mit der Mailbox von Thomas. Bitte sprechen Sie nach dem Ton."]},
    "es": {"short": ["¿Diga?", "¿Sí?", "Hola, ¿quién es?", "¿Bueno?"],
           "business": ["Buenos días, Talleres García, le atiende Carmen, ¿en qué puedo ayudarle?",
                        "Clínica Dental Sol, buenas tardes, ¿dígame?"],
           "greeting": ["Hola, has llamado a Lucía. Ahora no puedo contestar. Deja tu mensaje después de la señal "
                        "y te llamaré.",
                        "El número al que llama no está disponible en este momento. Por favor, deje su mensaje "
                        "después del tono."]},
    "nl": {"short": ["Hallo?", "Met Jan.", "Ja, hallo?"],
           "business": ["Goedemorgen, garage De Vries, u spreekt met Pieter, waarmee kan ik u helpen?"],
           "greeting": ["Hallo, dit is het antwoordapparaat van Anna. Ik ben er even niet. Spreek een bericht in "
                        "na de piep."]},
    "fr": {"short": ["Allô?", "Oui, allô?", "Allô, c'est qui?", "Oui?"],
           "business": ["Bonjour, cabinet Martin, Sophie à l'appareil, que puis-je faire pour vous?",
                        "Garage Dupont, bonjour, je vous écoute."],
           "greeting": ["Bonjour, vous êtes bien sur la messagerie de Julien. Je ne suis pas disponible pour le "
                        "moment. Laissez-moi un message après le bip.",
                        "Votre correspondant n'est pas joignable. Veuillez laisser un message après le signal "
                        "sonore."]},
    "it": {"short": ["Pronto?", "Sì, pronto?", "Pronto, chi parla?"],
           "business": ["Buongiorno, studio Rossi, sono Giulia, come posso aiutarla?",
                        "Ferramenta Bianchi, buonasera, mi dica."],
           "greeting": ["Ciao, sono Marco. In questo momento non posso rispondere. Lasciate un messaggio dopo il "
                        "segnale acustico.",
                        "Il cliente da lei chiamato non è al momento raggiungibile. Lasci un messaggio dopo il "
                        "segnale."]},
    "pt": {"short": ["Alô?", "Sim, alô?", "Alô, quem fala?"],
           "business": ["Bom dia, clínica Santos, aqui é a Beatriz, em que posso ajudar?"],
           "greeting": ["Olá, você ligou para o Pedro. No momento não posso atender. Deixe seu recado após o sinal."]},
}
#: English business answers in more phrasings, then the person's "Hello?" when nobody replies (per split)
BUSINESS_MORE = {
    "dev": ["Hi, you've got Dave at Summit Roofing, what can I do for you?", "Main office, this is Beth.",
            "Thank you for calling Greenway Pharmacy, my name is Omar, how may I direct your call?"],
    "test": ["Evening, Pine Street Bakery, Rosa speaking.", "IT help desk, this is Kim, what's the problem?",
             "Good afternoon and thank you for calling Westfield Bank, this is Grace, how can I help you today?"],
}
EXTRA_NOISES = ["office", "street", "music_vocals"]
EXTRA = {"human_short_lang": ("human", 20), "human_business_lang": ("human", 16),
         "machine_greeting_lang": ("machine", 24), "human_business_hello": ("human", 24)}


def plan_extra(scale: float, seed: int = 1015) -> list[dict]:
    """The second round's clips, from their own random stream: other languages (split by language), business
    answers in more phrasings followed by a "Hello?", and noises the first round lacked (an office, a street, music
    with a voice over it)."""
    rng = random.Random(seed)
    specs = []
    for split in CLIPS:
        for scen, (truth, count) in EXTRA.items():
            for i in range(max(2, round(count * scale))):
                if scen.endswith("_lang"):
                    lang = rng.choice(sorted(LANG_VOICES[split]))
                    eng, voice = "espeak-ng", rng.choice(LANG_VOICES[split][lang])
                else:
                    lang = "en"
                    engines = list(ENGINE_SHARE[split])
                    eng = rng.choices(engines, [ENGINE_SHARE[split][e] for e in engines])[0]
                    voice = rng.choice(VOICES[split][eng])
                s = {"id": f"{split}-{scen}-{i:03d}", "split": split, "scenario": scen, "kind": truth,
                     "seed": rng.randrange(1 << 30), "engine": eng, "voice": voice, "lang": lang,
                     "rate": rng.choice(RATES), "pitch": 0 if eng == "festival" else rng.choice(PITCHES),
                     "noise": rng.choice(NOISES + EXTRA_NOISES), "snr_db": round(rng.uniform(10, 40), 1)}
                s["codec"], s["rate_hz"] = rng.choice(FORMATS)
                if scen == "human_short_lang":
                    s["texts"] = [rng.choice(LANG_T[lang]["short"])]
                elif scen == "human_business_lang":
                    s["texts"] = [rng.choice(LANG_T[lang]["business"])]
                elif scen == "machine_greeting_lang":
                    s["texts"] = [rng.choice(LANG_T[lang]["greeting"])]
                    if rng.random() < 0.75:
                        s["beep_hz"], s["beep_ms"] = rng.choice(BEEP_HZ), rng.choice([100, 150, 250, 400, 600])
                else:
                    s["texts"] = [rng.choice(BUSINESS_MORE[split] + T[split]["business"]),
                                  rng.choice(T[split]["second"])]
                if s["noise"] in ("babble", "office", "music_vocals"):
                    bv = VOICES[split]["espeak-ng"][:4]
                    s["babble"] = [(rng.choice(bv), t) for t in T[split]["babble"]]
                specs.append(s)
    return specs


# ---- third round: what a phone line adds, more voices, ≥ 30 clips per group (planned apart again) ---------------
def _r3_voice(split: str, eng: str, rng: random.Random, female: bool | None = None) -> str:
    """A round-3 voice of `eng` for `split` (female True/False/None: female, male, any)."""
    if eng == "espeak-ng":
        e = R3.ESPEAK[split]
        pool = e["female"] if female else e["male"] if female is False else e["male"] + e["female"]
        return f"{rng.choice(e['accents'])}+{rng.choice(pool)}"
    v = (R3.FLITE if eng == "flite" else R3.FESTIVAL)[split]
    pool = (v["female"] or v["male"]) if female else v["male"] if female is False else v["male"] + v["female"]
    return rng.choice(pool)


def _r3_greeting(t3: dict, rng: random.Random, name: str, company: str, long: bool) -> str:
    """A greeting composed from the split's fragments: opener + unavailable (+ one or two instructions + a
    closing when `long`: 8–15 s of speech, the name + "is not available" + instructions kind)."""
    parts = [rng.choice(t3["opener"]), rng.choice(t3["unavailable"])]
    if long:
        parts += rng.sample(t3["instructions"], rng.choice([1, 2]))
        if rng.random() < 0.5:
            parts.append(rng.choice(t3["closing"]))
    return " ".join(parts).format(name=name, company=company)


def _r3_beep(rng: random.Random, patterns: dict[str, float]) -> dict:
    """Beep fields of a spec: the tones (Hz, ms, gap after), their pattern, span and level against the speech."""
    pattern = rng.choices(list(patterns), list(patterns.values()))[0]
    planned = channel.beep_tones(pattern, np.random.default_rng(rng.randrange(1 << 30)))
    tones = [[hz, ms, gap] for hz, ms, gap in planned]
    span = sum(ms + gap for _, ms, gap in tones)
    return {"beep_hz": tones[0][0], "beep_ms": span, "beep_tones": tones, "beep_pattern": pattern,
            "beep_gain_db": round(rng.uniform(-6.0, 8.0), 1)}


BEEPS_ANY = {"single": 0.6, "double": 0.15, "two_tone": 0.15, "three_tone": 0.1}
BEEPS_MULTI = {"double": 0.35, "two_tone": 0.35, "three_tone": 0.3}


def _r3_channel(rng: random.Random) -> dict:
    """The line between the callee and the gateway: answer delay, ring-back tail, level, a G.711 middle leg, loss."""
    ring = rng.random() < 0.25
    return {"lead_ms": rng.randrange(100, 1501, 10),
            "ringback": rng.choice(sorted(channel.RINGBACK)) if ring else None,
            "ringback_ms": rng.randrange(300, 1201, 10) if ring else 0,
            "level_dbfs": round(rng.uniform(-30.0, -10.0), 1),
            "tandem": rng.choice(["ulaw", "alaw", "ulaw>alaw", "alaw>ulaw"]) if rng.random() < 0.4 else None,
            "loss_pct": round(rng.uniform(0.5, 3.0), 2) if rng.random() < 0.5 else 0.0,
            "loss_burst": round(rng.uniform(1.0, 2.5), 2), "plc": rng.random() < 0.7}


def plan_round3(scale: float, seed: int = 2015) -> list[dict]:
    """The third round's clips, from their own random stream (the clips of `plan` and `plan_extra` keep their plan
    and seeds): voices of more espeak-ng variants and accents, flite's kal voices and festival's Italian voices in
    test; long greetings, carrier voicemail with the person's own recorded name in another voice, multi-tone beeps;
    every clip through a phone line (`_r3_channel`); office, street and music-with-voice noise on ≥ 30 person/machine
    clips each per split."""
    rng = random.Random(seed)
    specs = []
    for split in CLIPS:
        t3, t = R3.T3[split], T[split]
        engines = list(ENGINE_SHARE[split])
        weights = [ENGINE_SHARE[split][e] for e in engines]
        babble_pool = t["babble"] + t3["babble"]
        babble_voices = [_r3_voice(split, "espeak-ng", rng) for _ in range(6)]   # few voices: the TTS cache hits
        split_specs = []
        for scen, count in R3.COUNTS.items():
            truth = "human" if scen.startswith("human") else "machine" if scen.startswith("machine") else \
                "fax" if scen.startswith("fax") else "sit"
            for i in range(max(2, round(count * scale))):
                female = True if scen == "machine_female_high" else None
                lang = "en"
                if scen.endswith("_lang"):
                    langs = sorted(LANG_VOICES[split]) + sorted(R3.FESTIVAL_LANG.get(split, {}))
                    lang = rng.choice(langs)
                    if lang in R3.FESTIVAL_LANG.get(split, {}):
                        eng, voice = "festival", rng.choice(R3.FESTIVAL_LANG[split][lang])
                    else:
                        base = rng.choice(LANG_VOICES[split][lang]).split("+")[0]
                        e = R3.ESPEAK[split]
                        eng, voice = "espeak-ng", f"{base}+{rng.choice(e['male'] + e['female'])}"
                else:
                    eng = rng.choices(engines, weights)[0]
                    voice = _r3_voice(split, eng, rng, female)
                s: dict = {"id": f"{split}-r3-{scen}-{i:03d}", "split": split, "scenario": scen, "kind": truth,
                           "round": 3, "seed": rng.randrange(1 << 30), "engine": eng, "voice": voice, "lang": lang,
                           "rate": rng.choice(RATES), "pitch": 0 if eng == "festival" else rng.choice(PITCHES),
                           "noise": "none", "snr_db": round(rng.uniform(10, 40), 1), "channel": _r3_channel(rng)}
                if scen == "machine_female_high" and eng != "festival":
                    s["pitch"] = 2
                s["codec"], s["rate_hz"] = rng.choice(FORMATS)
                name, company = rng.choice(t3["name"]), rng.choice(t3["company"])
                person = person_texts(scen, t3, rng)
                if person is not None:
                    s["texts"] = person
                elif scen.endswith("_lang"):
                    key = {"human_short_lang": "short", "human_business_lang": "business"}.get(scen, "greeting")
                    s["texts"] = [rng.choice(LANG_T[lang][key])]
                elif scen == "machine_carrier_vm":
                    if rng.random() < 0.5:         # "<intro> [Name, in the person's own voice] <rest>"
                        s["texts"] = [rng.choice(t3["carrier_intro"]), rng.choice(t3["carrier_rest"])]
                        e2 = rng.choices(engines, weights)[0]
                        s["voice2"] = {"engine": e2, "voice": _r3_voice(split, e2, rng), "rate": rng.choice(RATES),
                                       "pitch": 0 if e2 == "festival" else rng.choice(PITCHES),
                                       "gain_db": round(rng.uniform(-8.0, 4.0), 1)}
                        s["name_text"] = name.replace("the ", "")
                    else:
                        s["texts"] = [rng.choice(t3["carrier_plain"])]
                elif scen == "machine_pause_beep":
                    s["texts"] = [_r3_greeting(t3, rng, name, company, long=rng.random() < 0.5)]
                    if rng.random() < 0.5:
                        s["texts"].append(rng.choice(t["pause_tail"]).format(name=name))
                elif scen == "machine_hi_pause":
                    s["texts"] = [rng.choice(t["hi"]), rng.choice(t["hi_tail"]).format(name=name)]
                elif scen == "sit":
                    s["texts"] = [rng.choice(t["sit"])]
                elif truth == "machine":
                    s["texts"] = [_r3_greeting(t3, rng, name, company, long=scen == "machine_long_greeting"
                                               or rng.random() < 0.3)]
                else:
                    s["texts"] = []
                if scen == "machine_pause_beep":
                    s.update(_r3_beep(rng, {"single": 0.7, "double": 0.3}))
                    short = rng.choice([80, 100, 120, 150, 200])      # a short beep after the pause
                    s["beep_tones"] = [[hz, min(ms, short), gap] for hz, ms, gap in s["beep_tones"]]
                    s["beep_ms"] = sum(ms + gap for _, ms, gap in s["beep_tones"])
                elif scen == "machine_multi_beep":
                    s.update(_r3_beep(rng, BEEPS_MULTI))
                elif scen == "machine_carrier_vm" or (truth == "machine" and rng.random() < 0.8):
                    s.update(_r3_beep(rng, BEEPS_ANY))
                if scen == "fax_cng":
                    s["noise"] = rng.choice(NOISES + EXTRA_NOISES)
                    if rng.random() < 0.6:
                        s["snr_db"] = round(rng.uniform(10, 15), 1)
                split_specs.append(s)
        # noise: a fixed quota of each new kind on person/machine clips, the rest drawn from every kind
        hm = [s for s in split_specs if s["kind"] in ("human", "machine")]
        rng.shuffle(hm)
        kinds = [k for k, n in R3.NOISE_QUOTA.items() for _ in range(max(1, round(n * scale)))]
        for k, s in enumerate(hm):
            s["noise"] = kinds[k] if k < len(kinds) else rng.choice(NOISES + EXTRA_NOISES)
        for s in split_specs:
            if s["noise"] in ("babble", "office", "music_vocals"):
                s["babble"] = [(rng.choice(babble_voices), txt) for txt in babble_pool]
        specs += split_specs
    return specs


def needed_utterances(specs: list[dict]) -> set[tuple]:
    need = set()
    for s in specs:
        for t in s["texts"]:
            need.add((s["engine"], s["voice"], s["rate"], s["pitch"], t))
        for v, t in s.get("babble", []):
            need.add(("espeak-ng", v, 1.0, 0, t))
        if "voice2" in s:
            v2 = s["voice2"]
            need.add((v2["engine"], v2["voice"], v2["rate"], v2["pitch"], s["name_text"]))
    return need


# ---- build one clip -------------------------------------------------------------------------------------------------
def build(spec: dict, cache: Path) -> tuple[np.ndarray, dict]:
    """The clean signal (active parts at unit-ish RMS), the noise added at the clip's SNR, and the timeline."""
    rng = np.random.default_rng(spec["seed"])
    scen = spec["scenario"]
    say = [load_utt(cache, spec["engine"], spec["voice"], spec["rate"], spec["pitch"], t) for t in spec["texts"]]
    parts: list[np.ndarray] = []
    segs: list[dict] = []

    def now() -> int:
        return sum(len(p) for p in parts) * 1000 // SR

    def add(kind: str, x: np.ndarray, **extra) -> None:
        start = now()
        parts.append(x)
        if kind == "speech":
            extra["pauses"] = [[start + a, start + b] for a, b in inner_pauses(x)]
        if kind != "pause":
            segs.append({"type": kind, "start_ms": start, "end_ms": now(), **extra})

    def pause(lo: int, hi: int) -> None:
        add("pause", zeros(int(rng.integers(lo, hi + 1))))

    ch = spec.get("channel")

    def lead(lo: int, hi: int) -> None:
        """Audio before the callee's first sound: a pause, or (round 3) a ring-back tail and the planned delay."""
        if ch is None:
            pause(lo, hi)
            return
        if ch["ringback"]:
            add("ringback", channel.ringback(ch["ringback"], ch["ringback_ms"], SR, rng) * rng.uniform(0.3, 1.0),
                tone=ch["ringback"])
        add("pause", zeros(ch["lead_ms"]))

    if scen.startswith("human"):
        lead(200, 900)
        if scen == "human_business_hello":
            add("speech", say[0] * rng.uniform(0.7, 1.0))
            pause(1500, 3000)                          # nobody replies: the person asks again, then waits
            add("speech", say[1] * rng.uniform(0.7, 1.0))
            pause(3000, 3000)
        elif scen == "human_repeat":
            for k, x in enumerate(say):
                add("speech", x * rng.uniform(0.7, 1.0))
                if k < len(say) - 1:
                    pause(300, 750)                    # "Hello? … Hello?": gaps shorter than a wait
            pause(4000, 4000)
        elif scen == "human_second":
            add("speech", say[0] * rng.uniform(0.7, 1.0))
            pause(1300, 2500)
            add("speech", say[1] * rng.uniform(0.7, 1.0))
            pause(2500, 2500)
        else:
            add("speech", say[0] * rng.uniform(0.7, 1.0))
            pause(4500, 4500)
    elif spec["kind"] == "machine":
        if scen == "machine_music_intro":
            if ch is not None:
                lead(0, 0)
            add("music", music(int(rng.integers(1000, 3000)), rng) * rng.uniform(0.6, 1.2))
            pause(0, 300)
        else:
            lead(100, 700)
        if scen == "machine_pause_beep":
            add("speech", say[0])
            pause(1200, 2000)                          # a long pause late in the greeting, then maybe a last
            if len(say) > 1:                           # sentence, then a short beep
                add("speech", say[1])
        elif scen == "machine_hi_pause":
            add("speech", say[0])
            pause(800, 1200)                           # "Hi!" … (about a second) … then the rest
            add("speech", say[1])
        elif "voice2" in spec:                         # carrier voicemail: "<intro> [the person's name] <rest>"
            v2 = spec["voice2"]
            add("speech", say[0])
            pause(150, 500)
            name = load_utt(cache, v2["engine"], v2["voice"], v2["rate"], v2["pitch"], spec["name_text"])
            add("speech", name * 10 ** (v2["gain_db"] / 20), voice=v2["voice"])
            pause(100, 400)
            add("speech", say[1])
        else:
            add("speech", say[0])
        if spec.get("beep_tones"):
            pause(150, 900)
            gain = 10 ** (spec["beep_gain_db"] / 20)
            for hz, ms, gap in spec["beep_tones"]:
                add("beep", sine(hz, ms) * gain, hz=hz)
                if gap:
                    add("pause", zeros(gap))
            pause(3000, 3000)
        elif spec.get("beep_hz"):
            pause(150, 900)
            add("beep", sine(spec["beep_hz"], spec["beep_ms"]) * rng.uniform(0.7, 2.5), hz=spec["beep_hz"])
            pause(3000, 3000)
        else:
            pause(3500, 3500)
    elif scen == "sit":
        lead(100, 600)
        tones, tsegs = sit_tones(rng)
        off = now()
        parts.append(tones * rng.uniform(0.5, 1.2))
        segs += [{**s, "start_ms": s["start_ms"] + off, "end_ms": s["end_ms"] + off} for s in tsegs]
        pause(700, 1200)
        add("speech", say[0])
        pause(1500, 1500)
    elif scen == "fax_cng":
        lead(300, 1200)
        for _ in range(3):
            add("fax_cng", sine(1100, 500, 3), hz=1100)
            pause(3000, 3000)
    elif scen == "fax_ced":
        pause(300, 1200)
        add("fax_ced", sine(2100, int(rng.integers(2600, 4000)), 3), hz=2100)
        add("fax_v21", colored(SR * 3, rng, 0.0) * 0.5)
    else:
        pause(8000, 8000)
    x = np.concatenate(parts)
    if ch is not None:                                 # round 3: a length whose FFT is fast (noise is made by FFT;
        x = np.concatenate([x, np.zeros(smooth_len(len(x)) - len(x))])   # an awkward length costs ~1 s a clip)
    heard = [s for s in segs if s["type"] != "ringback"]   # the callee's audio sets the SNR and the level
    active = np.concatenate([x[s["start_ms"] * SR // 1000:s["end_ms"] * SR // 1000] for s in heard]) if heard else x
    ref = np.sqrt(np.mean(active * active)) if heard else 1.0
    noise = make_noise(spec, len(x), rng, cache)
    if noise is not None:
        x = x + noise * ref / 10 ** (spec["snr_db"] / 20)
    level = rng.uniform(700, 5000)                     # −33…−16 dBFS RMS for the active audio
    if ch is not None:                                 # round 3: −30…−10 dBFS as planned
        level = 32768 * 10 ** (ch["level_dbfs"] / 20)
    x = x * level / (ref or 1.0)
    peak = np.abs(x).max()
    if peak > 30000:                                   # no clipping: a loud line is turned down to fit
        x *= 30000 / peak
    extra: dict = {"timeline": segs}
    if ch is not None:
        extra["level_dbfs"] = round(20 * np.log10(level * min(1.0, 30000 / (peak or 30000)) / 32768), 1)
    return x, extra


def smooth_len(n: int) -> int:
    """The smallest length ≥ n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def make_noise(spec: dict, n: int, rng: np.random.Generator, cache: Path) -> np.ndarray | None:
    kind = spec["noise"]
    if kind == "none":
        return None
    if kind == "white":
        return colored(n, rng, 0.0)
    if kind == "pink":
        return colored(n, rng, 1.0)
    if kind == "car":
        return car(n, rng)
    if kind == "music":
        return music(n * 1000 // SR + 1, rng, pure_share=0.2)[:n]
    if kind == "street":
        return street(n, rng)
    pool = [load_utt(cache, "espeak-ng", v, 1.0, 0, t) for v, t in spec["babble"]]
    if kind == "office":
        return office(n, rng, pool)
    if kind == "music_vocals":
        x = music(n * 1000 // SR + 1, rng, pure_share=0.2)[:n] + 0.8 * babble_few(n, rng, pool, 1)
        return x / (x.std() or 1.0)
    return babble(n, rng, pool)


def truth_fields(spec: dict, timeline: list[dict]) -> dict:
    """Summary times the evaluator scores against."""
    speech = [s for s in timeline if s["type"] == "speech"]
    out: dict = {}
    if speech:
        out["speech_start_ms"] = speech[0]["start_ms"]
        out["speech_end_ms"] = speech[-1]["end_ms"] if spec["kind"] != "human" else speech[0]["end_ms"]
    if spec["kind"] == "machine":
        out["greeting_end_ms"] = speech[-1]["end_ms"]
        beeps = [s for s in timeline if s["type"] == "beep"]
        if beeps:
            out["beep_start_ms"], out["beep_end_ms"] = beeps[0]["start_ms"], beeps[-1]["end_ms"]  # multi-tone: all
    return out


def phone_line(pcm: np.ndarray, spec: dict) -> tuple[np.ndarray, list[list[int]]]:
    """Round 3: the middle leg's G.711 round trips, then the last leg's packet loss (concealed or not); returns
    the PCM and the lost stretches in ms (the timeline does not move: a lost frame keeps its place)."""
    ch = spec["channel"]
    for law in (ch["tandem"] or "").split(">"):
        if law:
            pcm = channel.g711_round_trip(pcm, law, SR)
    lost: list[list[int]] = []
    if ch["loss_pct"]:
        rng = np.random.default_rng(spec["seed"] + 1)
        frames = channel.lost_frames(len(pcm) // (SR // 50), ch["loss_pct"], ch["loss_burst"], rng)
        y = channel.conceal(pcm.astype(np.float64), frames, SR, ch["plc"])
        pcm = np.clip(np.round(y), -32768, 32767).astype("<i2")
        for f in frames:
            if lost and lost[-1][1] == f * 20:
                lost[-1][1] += 20
            else:
                lost.append([f * 20, f * 20 + 20])
    return pcm, lost


def render(spec: dict, out: Path, cache: Path) -> dict:
    x, extra = build(spec, cache)
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2")
    if "channel" in spec:
        pcm, extra["lost_ms"] = phone_line(pcm, spec)
    tmp = out / f"{spec['id']}.src.wav"
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    final = out / f"{spec['id']}.wav"
    if spec["rate_hz"] == 8000:
        enc = ["-e", "u-law"] if spec["codec"] == "ulaw" else ["-e", "a-law"]
        cmd = ["sox", "-R", str(tmp), "-r", "8000", "-c", "1", *enc, str(final), "sinc", "300-3400"]
    else:
        cmd = ["sox", "-R", str(tmp), "-r", "16000", "-c", "1", "-e", "signed", "-b", "16", str(final),
               "sinc", "100-7000"]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    tmp.unlink()
    clip = {k: v for k, v in spec.items() if k not in ("babble", "seed")}
    return {**clip, "seed": spec["seed"], **extra, **truth_fields(spec, extra["timeline"]), "file": final.name,
            "duration_ms": len(pcm) * 1000 // SR}


#: the Debian package of each festival voice the corpus uses (the Italian ones are needed by the benchmark only)
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "lp_diphone": "festvox-italp16k",
                     "pc_diphone": "festvox-itapc16k"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "corpus"))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default clip counts")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    for tool in ("espeak-ng", "flite", "festival", "sox"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install -y espeak-ng flite festival festvox-kdlpc16k "
                  "festvox-us-slt-hts sox)", file=sys.stderr)
            return 2
    specs = plan(args.scale) + plan_extra(args.scale) + plan_round3(args.scale)
    fest = {s["voice"] for s in specs if s["engine"] == "festival"}
    missing = sorted(v for v in fest if not list(Path("/usr/share/festival/voices").glob(f"*/{v}")))
    if missing:
        print(f"festival voices missing: {', '.join(missing)} (apt-get install -y "
              f"{' '.join(FESTIVAL_PACKAGES[v] for v in missing)})", file=sys.stderr)
        return 2
    out = Path(args.out)
    cache = out / "_tts"
    cache.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.wav"):
        old.unlink()
    t0 = time.monotonic()
    synthesize_all(needed_utterances(specs), cache, args.jobs)
    t_tts = time.monotonic() - t0
    with ProcessPoolExecutor(args.jobs) as pool:
        clips = list(pool.map(render, specs, [out] * len(specs), [cache] * len(specs), chunksize=8))
    (out / "manifest.json").write_text(json.dumps({"clips": clips}, indent=1))
    print(f"{len(clips)} clips in {time.monotonic() - t0:.1f} s (TTS {t_tts:.1f} s) → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
