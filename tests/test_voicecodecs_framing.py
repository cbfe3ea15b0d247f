"""Reframer: arbitrary carrier chunk sizes in, exact 20 ms frames out, nothing lost or reordered."""
from __future__ import annotations

import random

import pytest

from voicecodecs import FRAME_MS, Reframer, frame_bytes


def test_frame_bytes():
    assert FRAME_MS == 20
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640
    assert frame_bytes(48000) == 1920
    assert frame_bytes(8000, sample_width=1) == 160      # μ-law


@pytest.mark.parametrize("seed", range(5))
def test_odd_chunks_become_exact_frames_in_order(seed):
    rng = random.Random(seed)
    stream = bytes(rng.randrange(256) for _ in range(320 * 37 + 123))
    r = Reframer(320)
    frames: list[bytes] = []
    pos = 0
    while pos < len(stream):
        n = rng.choice([1, 3, 159, 160, 161, 319, 320, 321, 999, 4000])
        frames += r.push(stream[pos : pos + n])
        pos += n
        assert r.pending == min(pos, len(stream)) % 320
    assert all(len(f) == 320 for f in frames)
    assert len(frames) == 37
    assert b"".join(frames) == stream[: 37 * 320]
    assert r.pending == 123
    tail = r.flush()
    assert tail == stream[37 * 320 :] + b"\x00" * (320 - 123)      # padded with silence to a whole frame
    assert r.pending == 0 and r.flush() is None


def test_exact_frame_passes_through_and_big_chunk_splits():
    r = Reframer(4)
    assert r.push(b"abcd") == [b"abcd"]
    assert r.push(b"abcdefghij") == [b"abcd", b"efgh"]
    assert r.pending == 2
    assert r.push(b"kl") == [b"ijkl"]


def test_flush_without_padding_and_reset():
    r = Reframer(320)
    r.push(b"\x01" * 100)
    assert r.flush(pad=False) == b"\x01" * 100
    r.push(b"\x01" * 100)
    r.reset()
    assert r.pending == 0 and r.flush() is None


def test_rejects_nonpositive_size():
    with pytest.raises(ValueError):
        Reframer(0)
