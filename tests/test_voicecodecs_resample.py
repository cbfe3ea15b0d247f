"""Streaming resampler: continuity across frames, anti-aliasing/anti-imaging, delay, exact sample bookkeeping."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from voicecodecs import SUPPORTED_RATES, StreamResampler

PAIRS = [(a, b) for a, b in itertools.permutations(SUPPORTED_RATES, 2)]


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 12000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float64)


def in_frames(r: StreamResampler, pcm: bytes, ms: int = 20) -> bytes:
    step = r.in_rate * ms // 1000 * 2
    return b"".join(r.process(pcm[i : i + step]) for i in range(0, len(pcm), step))


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return 10 * np.log10(np.mean(ref**2) / max(np.mean((got - ref) ** 2), 1e-12))


def tone_level_db(x: np.ndarray, rate: int, freq: float) -> float:
    """Level of one tone in dB re a full-scale-normalised amplitude, Hann-windowed over whole seconds."""
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) / (w.sum() / 2)
    k = int(round(freq * len(x) / rate))
    return 20 * np.log10(max(spec[k - 2 : k + 3].max(), 1e-9))


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_sine_in_20ms_frames_matches_one_piece_and_ideal(in_rate, out_rate):
    pcm = tone(1000, in_rate)
    whole = StreamResampler(in_rate, out_rate).process(pcm)
    framed = in_frames(StreamResampler(in_rate, out_rate), pcm)
    a, b = samples(whole), samples(framed)
    assert len(a) == len(b) == out_rate
    # Frame edges leave no trace: at most float-rounding (1 LSB) differences anywhere, edges included.
    assert np.max(np.abs(a - b)) <= 1
    # And the result is the ideal sine, shifted by the advertised delay (after the start-up transient).
    r = StreamResampler(in_rate, out_rate)
    t = np.arange(len(b)) / out_rate - r.delay_ms / 1000
    ideal = 12000 * np.sin(2 * np.pi * 1000 * t)
    skip = out_rate // 100
    assert snr_db(ideal[skip:], b[skip:]) > 60
    # No click: the largest sample-to-sample step equals the sine's own maximum slope (plus rounding).
    assert np.max(np.abs(np.diff(b[skip:]))) <= 12000 * 2 * np.pi * 1000 / out_rate + 2


@pytest.mark.parametrize("freq", [4500, 5000, 7000])
def test_downsampling_16k_to_8k_rejects_aliases(freq):
    out = samples(in_frames(StreamResampler(16000, 8000), tone(freq, 16000, amp=16000)))[80:]
    # Whatever lands in 0–4 kHz is an alias; measure all of it, not just the alias bin.
    attenuation = 20 * np.log10(np.sqrt(np.mean(out**2)) / (16000 / np.sqrt(2)))
    assert attenuation <= -50, attenuation


def test_audioop_placeholder_would_have_failed_the_alias_test():
    """Guards the test itself: linear interpolation without a filter lets the 5 kHz tone through."""
    from voicecodecs._audioop import audioop

    out, _ = audioop.ratecv(tone(5000, 16000, amp=16000), 2, 1, 16000, 8000, None)
    attenuation = 20 * np.log10(np.sqrt(np.mean(samples(out) ** 2)) / (16000 / np.sqrt(2)))
    assert attenuation > -50


@pytest.mark.parametrize("in_rate,out_rate,freq", [(8000, 16000, 3000), (8000, 16000, 3800), (8000, 48000, 2500),
                                                   (16000, 48000, 7000), (24000, 48000, 11000),
                                                   (16000, 24000, 7500)])
def test_upsampling_suppresses_images(in_rate, out_rate, freq):
    out = samples(in_frames(StreamResampler(in_rate, out_rate), tone(freq, in_rate, seconds=1.0)))
    images = [k * in_rate + s * freq for k in range(1, out_rate // in_rate + 1) for s in (-1, 1)]
    checked = 0
    for img in images:
        if 0 < img < out_rate / 2:
            # Relative to the input tone: a tone in the transition band is itself attenuated, its image is not
            # allowed to come back above the stop-band floor.
            assert tone_level_db(out, out_rate, img) - 20 * np.log10(12000) <= -50, img
            checked += 1
    assert checked


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_passband_gain_is_flat(in_rate, out_rate):
    for freq in (300, 1000, 0.75 * min(in_rate, out_rate) / 2):
        out = samples(in_frames(StreamResampler(in_rate, out_rate), tone(freq, in_rate)))
        gain = tone_level_db(out, out_rate, freq) - 20 * np.log10(12000)
        assert abs(gain) < 0.1, (freq, gain)


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_measured_delay_matches_delay_ms_and_is_small(in_rate, out_rate):
    r = StreamResampler(in_rate, out_rate)
    assert 0 < r.delay_ms <= 3.0
    # Fit the output 500 Hz sine's phase: y = A·sin(ωt) + B·cos(ωt) = sin(ω(t − d)) ⇒ d = −atan2(B, A)/ω.
    f = 100.0   # period 10 ms ≫ delay: the phase cannot wrap
    y = samples(in_frames(r, tone(f, in_rate)))[out_rate // 10 :]
    t = (np.arange(len(y)) + out_rate // 10) / out_rate
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
    measured_ms = -np.arctan2(b, a) / (2 * np.pi * f) * 1000
    assert abs(measured_ms - r.delay_ms) < 0.01, (measured_ms, r.delay_ms)


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_output_length_is_exact_for_any_chunking(in_rate, out_rate):
    rng = random.Random(in_rate * 7 + out_rate)
    r = StreamResampler(in_rate, out_rate)
    pcm = tone(440, in_rate, seconds=0.5)
    reference = samples(StreamResampler(in_rate, out_rate).process(pcm))
    got: list[bytes] = []
    n_in = pos = 0
    while pos < len(pcm):
        n = rng.choice([0, 1, 2, 3, 5, 7, 39, 41, 79, 160, 161, 479, 1001, 2500])
        chunk = pcm[pos : pos + 2 * n]
        pos += len(chunk)
        n_in += len(chunk) // 2
        got.append(r.process(chunk))
        n_out = sum(len(g) for g in got) // 2
        # Whatever the chunking, every output the input determines so far is out, and no more.
        assert n_out == -(-n_in * out_rate // in_rate)
        assert abs(n_out - n_in * out_rate / in_rate) < 1
    assert np.max(np.abs(samples(b"".join(got)) - reference)) <= 1


def test_reset_restarts_from_silence():
    r = StreamResampler(8000, 16000)
    pcm = tone(1000, 8000, seconds=0.1)
    first = r.process(pcm)
    r.process(tone(300, 8000, seconds=0.05))
    r.reset()
    assert np.max(np.abs(samples(r.process(pcm)) - samples(first))) <= 1


def test_full_scale_input_saturates_instead_of_wrapping():
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)], 40).astype("<i2").tobytes()
    r = StreamResampler(8000, 16000)
    out = samples(r.process(square))
    # The Gibbs overshoot of a full-scale square must clip at the rails, never wrap around to the other sign.
    assert out.max() == 32767 and out.min() == -32768
    start = 80 + round(r.delay_ms * 16)          # second period's high half, output samples at 16 kHz
    assert (out[start + 5 : start + 35] > 28000).all()
    assert (out[start + 45 : start + 75] < -28000).all()


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_saturation_is_the_same_whatever_the_chunking(in_rate, out_rate):
    """Quiet chunks skip the saturation step (their inputs cannot reach the rails); a quiet chunk right after a
    full-scale one still has loud history in its product and must saturate like the stream processed whole."""
    rng = np.random.default_rng(7)
    n = in_rate // 50
    loud = np.tile(np.r_[np.full(n // 8, 32767), np.full(n // 8, -32768)], 4)[:n]
    quiet = rng.integers(-300, 300, n)
    pcm = np.concatenate([loud, quiet, quiet, loud, loud, quiet] * 3).astype("<i2").tobytes()
    whole = samples(StreamResampler(in_rate, out_rate).process(pcm))
    framed = samples(in_frames(StreamResampler(in_rate, out_rate), pcm))
    assert len(whole) == len(framed) and np.max(np.abs(whole - framed)) <= 1
    assert whole.max() == 32767 and whole.min() == -32768   # it did overshoot, and clipped instead of wrapping


def test_same_rate_is_passthrough_and_bad_input_is_rejected():
    r = StreamResampler(16000, 16000)
    assert r.process(b"\x01\x02") == b"\x01\x02" and r.delay_ms == 0
    with pytest.raises(ValueError):
        StreamResampler(8000, 11025)
    with pytest.raises(ValueError):
        StreamResampler(8000, 16000).process(b"\x00\x00\x00")
    assert StreamResampler(8000, 16000).process(b"") == b""


@pytest.mark.parametrize("loud", [True, False])
@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_batched_results_are_exactly_what_process_computes(in_rate: int, out_rate: int, loud: bool) -> None:
    """resample_many computes the next process() of many streams ahead: the output, chunk by chunk, is bit for bit
    the output of the same streams resampled one by one, loud (saturating) streams and odd chunk sizes included;
    and batches with no input loud enough to reach the rails (their saturation step is skipped)."""
    from voicecodecs.resample import BATCH_MIN, resample_many
    rng = random.Random(in_rate * 7 + out_rate)
    n = BATCH_MIN + 20
    # loud: every third stream drives the output past the rails
    gains = [0.5 + 3.5 * (loud and i % 3 == 0) for i in range(n)]
    sources = [np.clip(samples(tone(300 + 97 * i, in_rate, 0.5, 9000.0)) * g, -32768, 32767).astype("<i2").tobytes()
               for i, g in enumerate(gains)]
    alone = [StreamResampler(in_rate, out_rate) for _ in range(n)]
    batched = [StreamResampler(in_rate, out_rate) for _ in range(n)]
    frame = in_rate // 50 * 2
    pos = [0] * n
    out_alone: list[list[bytes]] = [[] for _ in range(n)]
    out_batched: list[list[bytes]] = [[] for _ in range(n)]
    for _ in range(20):
        sizes = [frame if rng.random() < 0.8 else 2 * rng.randrange(1, frame) for _ in range(n)]
        chunks = [sources[i][pos[i] : pos[i] + sizes[i]] for i in range(n)]
        pos = [p + s for p, s in zip(pos, sizes, strict=True)]
        resample_many(list(zip(batched, chunks, strict=True)))
        for i in range(n):
            out_alone[i].append(alone[i].process(chunks[i]))
            out_batched[i].append(batched[i].process(chunks[i]))
    assert out_batched == out_alone


def test_a_result_computed_ahead_is_dropped_when_the_stream_gets_another_chunk_or_resets() -> None:
    from voicecodecs.resample import BATCH_MIN, resample_many
    pcm = tone(440, 8000, 0.2)
    frame = 320
    rs = [StreamResampler(8000, 16000) for _ in range(BATCH_MIN)]
    ref = StreamResampler(8000, 16000)
    resample_many([(r, pcm[:frame]) for r in rs])
    other = pcm[frame : 2 * frame]
    assert rs[0].process(other) == ref.process(other)          # not the chunk computed ahead: computed as usual
    assert rs[0].process(pcm[2 * frame : 3 * frame]) == ref.process(pcm[2 * frame : 3 * frame])
    rs[1].reset()
    assert rs[1].process(other) == StreamResampler(8000, 16000).process(other)
    assert rs[2].process(pcm[:frame]) == StreamResampler(8000, 16000).process(pcm[:frame])


def test_two_chunks_of_one_stream_in_a_batch_still_give_exactly_the_stream_alone() -> None:
    """A stream whose reader got two frames in one loop iteration has two jobs in one batch: only one result can be
    kept, and a result that does not fit the state when its chunk comes is dropped, so the output stays exact."""
    from voicecodecs.resample import BATCH_MIN, resample_many
    frames = [tone(300 + 50 * i, 8000, 0.02, 9000.0) for i in range(3)] + [bytes(320)] * 3
    alone = StreamResampler(8000, 16000)
    want = [alone.process(f) for f in frames]
    rs = [StreamResampler(8000, 16000) for _ in range(BATCH_MIN)]
    got = []
    for i in range(0, len(frames), 2):         # two frames per stream per batch: equal ones (silence) too
        resample_many([(r, frames[j]) for r in rs for j in (i, i + 1)])
        got.append([(r.process(frames[i]), r.process(frames[i + 1])) for r in rs])
    assert all(pair == (want[i], want[i + 1]) for i, batch in zip(range(0, len(frames), 2), got, strict=True)
               for pair in batch)


def test_a_stream_listed_twice_in_a_batch_has_its_first_chunk_computed_ahead() -> None:
    """Its next process() gets the first chunk: that is the result kept (a later job's replaced it before, and
    then every chunk of the stream was computed alone on top of the batch); the second chunk is left to
    process()."""
    from voicecodecs.resample import BATCH_MIN, resample_many
    first, second = tone(300, 8000, 0.02, 9000.0), tone(700, 8000, 0.02, 9000.0)
    rs = [StreamResampler(8000, 16000) for _ in range(BATCH_MIN)]
    resample_many([(r, c) for r in rs for c in (first, second)])
    assert all(r._ready is not None and r._ready[0] is first for r in rs)
    ref = StreamResampler(8000, 16000)
    want = [ref.process(first), ref.process(second)]
    for r in rs:
        assert [r.process(first), r.process(second)] == want
        assert r._ready is None
