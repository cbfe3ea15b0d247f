"""The AMD benchmark corpus generator (bench/amd/corpus.py): plans, splits, group sizes, the phone-line effects and
the true timeline of a built clip. No TTS engine needed: clips are built from a cache of synthetic utterances."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "amd"))
import channel  # noqa: E402
import corpus  # noqa: E402

SR = corpus.SR


@pytest.fixture(scope="module")
def specs() -> list[dict]:
    return corpus.plan(1.0) + corpus.plan_extra(1.0) + corpus.plan_round3(1.0)


def test_earlier_rounds_keep_their_plan() -> None:
    """Rounds 1 and 2 are planned from their own random streams: adding a round must not move their clips (the
    test split's history in BENCHMARKS.md is about these clips)."""
    for fn, digest, n in ((corpus.plan, "4c9dbf373e6ce8535ac0d2934181e20dd96fb9541f7c8f9519a46945fe5a5f18", 1120),
                          (corpus.plan_extra, "939d0c2c46f4f1a918d5cf65a6126520e4944de707f52679598632ae8d81bd13", 168)):
        plan = fn(1.0)
        assert len(plan) == n
        assert hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest() == digest


def test_round3_is_deterministic(specs: list[dict]) -> None:
    assert corpus.plan_round3(1.0) == [s for s in specs if s.get("round") == 3]
    assert len({s["id"] for s in specs}) == len(specs)


def _voices(s: dict) -> set[tuple[str, str]]:
    out = {(s["engine"], s["voice"])} | {("espeak-ng", v) for v, _ in s.get("babble", [])}
    if "voice2" in s:
        out.add((s["voice2"]["engine"], s["voice2"]["voice"]))
    return out


def _texts(s: dict) -> set[str]:
    return set(s["texts"]) | {t for _, t in s.get("babble", [])} | ({s["name_text"]} if "name_text" in s else set())


def test_splits_differ_by_engine_voice_and_script(specs: list[dict]) -> None:
    by = {sp: [s for s in specs if s["split"] == sp] for sp in ("dev", "test")}
    voices = {sp: set().union(*map(_voices, v)) for sp, v in by.items()}
    assert not voices["dev"] & voices["test"]
    assert not any(e == "festival" for e, _ in voices["dev"])              # an engine dev never hears
    assert {"en"} == {s.get("lang", "en") for s in by["dev"]} & {s.get("lang", "en") for s in by["test"]}
    texts = {sp: set().union(*map(_texts, v)) for sp, v in by.items()}
    shared = {t for t in texts["dev"] & texts["test"] if len(t.split()) > 1}
    assert not shared, shared                                               # only one-word calls ("Hello?")


def test_every_noise_engine_and_hard_class_has_30_clips_per_split(specs: list[dict]) -> None:
    for split in ("dev", "test"):
        hm = [s for s in specs if s["split"] == split and s["kind"] in ("human", "machine")]
        noise, engine = Counter(s["noise"] for s in hm), Counter(s["engine"] for s in hm)
        assert set(noise) == set(corpus.NOISES + corpus.EXTRA_NOISES)
        assert min(noise.values()) >= 30, noise
        assert min(engine.values()) >= 30, engine
        scen = Counter(s["scenario"] for s in hm)
        for hard in ("human_business", "human_repeat", "machine_music_intro", "machine_carrier_vm",
                     "machine_long_greeting", "machine_multi_beep"):
            assert scen[hard] >= 30 or (hard == "machine_multi_beep" and scen[hard] >= 24), (split, hard, scen)
    r3 = [s for s in specs if s.get("round") == 3]
    levels = [s["channel"]["level_dbfs"] for s in r3]
    assert -30 <= min(levels) < -27 and -13 < max(levels) <= -10
    assert {s["channel"]["tandem"] for s in r3} == {None, "ulaw", "alaw", "ulaw>alaw", "alaw>ulaw"}
    assert {s.get("beep_pattern") for s in r3} >= {"single", "double", "two_tone", "three_tone"}


def test_multi_tone_beeps_are_short_and_unlike_special_information_tones() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        tones = channel.beep_tones("three_tone", rng)
        assert len(tones) == 3 and all(ms < 180 for _, ms, _ in tones)        # SIT segments are 180–480 ms
        assert tones[0][0] < tones[1][0] < tones[2][0] <= 1500
        lo, hi = channel.beep_tones("two_tone", rng)
        assert 500 <= lo[0] < hi[0] <= 2000
        assert not (channel.sit_like(lo[0]) and channel.sit_like(hi[0]))        # 960 → 1450 Hz would be SIT
        a, b = channel.beep_tones("double", rng)
        assert a[:2] == b[:2] and 60 <= a[2] <= 150


def test_packet_loss_rate_bursts_and_concealment() -> None:
    rng = np.random.default_rng(7)
    lost = channel.lost_frames(50_000, 2.0, 2.0, rng)
    assert 0.015 < len(lost) / 50_000 < 0.025
    runs = np.diff(np.flatnonzero(np.diff([-2, *lost]) != 1))            # lengths of consecutive-loss bursts
    assert 1.5 < np.mean(runs) < 2.6
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 250 * t)
    frame = SR // 50
    plc = channel.conceal(x, [10, 11, 12, 13], SR, plc=True)
    first_10ms = slice(10 * frame, 10 * frame + SR // 100)
    assert np.max(np.abs(plc[first_10ms] - x[first_10ms])) < 0.05               # the pitch period goes on
    assert np.max(np.abs(plc[13 * frame:14 * frame])) == 0.0                    # silent after 60 ms
    assert np.array_equal(plc[:10 * frame], x[:10 * frame])
    gaps = channel.conceal(x, [10], SR, plc=False)
    assert not gaps[10 * frame:11 * frame].any() and np.array_equal(gaps[11 * frame:], x[11 * frame:])


def test_ringback_cadence() -> None:
    rng = np.random.default_rng(1)
    x = channel.ringback("uk", 6000, SR, rng)                        # 400+450 Hz, 0.4 on 0.2 off 0.4 on 2.0 off
    on = np.abs(x) > 1e-6
    assert 0.25 < on.mean() < 0.4
    spec = np.abs(np.fft.rfft(x))
    peaks = sorted(np.argsort(spec)[-2:] * SR / len(x))
    assert abs(peaks[0] - 400) < 2 and abs(peaks[1] - 450) < 2


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is needed for the G.711 round trip")
def test_g711_round_trip_keeps_the_phone_band_only() -> None:
    t = np.arange(SR) / SR
    for hz, kept in ((1000, True), (3900, False)):
        pcm = (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2")
        y = channel.g711_round_trip(pcm, "alaw", SR).astype(np.float64)
        assert len(y) == len(pcm)
        ratio = np.sqrt(np.mean(y[2000:-2000] ** 2)) / np.sqrt(np.mean(pcm[2000:-2000].astype(float) ** 2))
        assert (ratio > 0.9) if kept else (ratio < 0.1), (hz, ratio)


def _fake_cache(spec: dict, tmp: Path) -> Path:
    """Speech-like utterances (voiced bursts with short gaps) under the keys the spec will ask the cache for."""
    rng = np.random.default_rng(0)
    for eng, voice, rate, pitch, text in corpus.needed_utterances([spec]):
        n_words = len(text.split())
        parts = []
        for _ in range(n_words):
            n = int(rng.integers(SR // 6, SR // 3))
            tt = np.arange(n) / SR
            gap = np.zeros(int(rng.integers(SR // 50, SR // 10)))
            parts += [np.sin(2 * np.pi * 130 * tt) * np.hanning(n) * 8000, gap]
        pcm = np.concatenate(parts).astype("<i2")
        (tmp / f"{corpus.utt_key(eng, voice, rate, pitch, text)}.raw").write_bytes(pcm.tobytes())
    return tmp


def test_round3_clip_timeline_is_true(specs: list[dict], tmp_path: Path) -> None:
    """A carrier voicemail with the person's own name in another voice, a ring-back tail, a multi-tone beep: the
    manifest's timeline puts every tone where it is in the audio, and the message may start only after the last."""
    spec = next(s for s in specs if s["scenario"] == "machine_carrier_vm" and "voice2" in s
                and len(s.get("beep_tones", [])) > 1)
    spec = {**spec, "noise": "none", "channel": {**spec["channel"], "ringback": "eu", "ringback_ms": 800,
                                                  "loss_pct": 0.0, "tandem": None}}
    x, extra = corpus.build(spec, _fake_cache(spec, tmp_path))
    tl = extra["timeline"]
    assert [s["type"] for s in tl][:1] == ["ringback"] and tl[0]["end_ms"] == 800
    assert [s["type"] for s in tl if s["type"] != "ringback"][:3] == ["speech", "speech", "speech"]
    beeps = [s for s in tl if s["type"] == "beep"]
    assert [[b["hz"], b["end_ms"] - b["start_ms"]] for b in beeps] == [[hz, ms] for hz, ms, _ in spec["beep_tones"]]
    for b in beeps:                                           # the tone really is there, at its frequency
        seg = x[b["start_ms"] * SR // 1000 + 80:b["end_ms"] * SR // 1000 - 80]
        f = np.argmax(np.abs(np.fft.rfft(seg))) * SR / len(seg)
        assert abs(f - b["hz"]) < 1000 / (b["end_ms"] - b["start_ms"]) + 5
    truth = corpus.truth_fields(spec, tl)
    assert truth["beep_end_ms"] == beeps[-1]["end_ms"] and truth["beep_start_ms"] == beeps[0]["start_ms"]
    assert truth["greeting_end_ms"] == [s for s in tl if s["type"] == "speech"][-1]["end_ms"] < truth["beep_start_ms"]
    assert -31 < extra["level_dbfs"] <= spec["channel"]["level_dbfs"] + 0.05
    assert np.abs(x).max() <= 30000.5
    assert corpus.smooth_len(len(x)) == len(x)                # a length whose FFT (the noise) is fast


def test_phone_line_loss_is_recorded_in_ms(specs: list[dict]) -> None:
    spec = next(s for s in specs if s.get("round") == 3 and s["channel"]["loss_pct"] >= 2)
    spec = {**spec, "channel": {**spec["channel"], "tandem": None}}
    pcm = (np.sin(np.arange(SR * 20) / SR * 2 * np.pi * 300) * 5000).astype("<i2")
    y, lost = corpus.phone_line(pcm, spec)
    assert lost and all(b > a and a % 20 == 0 and (b - a) % 20 == 0 for a, b in lost)
    assert all(lost[k][1] < lost[k + 1][0] for k in range(len(lost) - 1))      # bursts merged, in order
    changed = np.flatnonzero(y != pcm)
    in_lost = np.zeros(len(pcm), bool)
    for a, b in lost:
        in_lost[a * SR // 1000:b * SR // 1000] = True
    assert in_lost[changed].all()                              # only lost frames differ
