"""Stateful streaming resampling between 8, 16, 24 and 48 kHz PCM16 mono.

Why not audioop.ratecv: it interpolates linearly with no anti-alias filter (a 5 kHz tone taken from 16 kHz to
8 kHz lands at 3 kHz at full level). Why not soxr: its low-delay settings drop the anti-alias filter and its good
settings add 26–66 ms, which a live call cannot afford. So: a short linear-phase polyphase FIR.

Design (once per rate pair, cached): a Kaiser-windowed sinc at the common rate L·in_rate (= M·out_rate), stop band
starting at the Nyquist frequency of the lower of the two rates (so nothing aliases or images into the band at
less than the design rejection), pass band up to `PASSBAND` of that Nyquist frequency. Each polyphase branch is
normalised to unity DC gain so a constant input gives a constant output (no DC "images" at multiples of in_rate).

Execution: instead of one dot product per output sample, the input is cut into blocks of B samples (B a multiple
of M, at least one filter span long). The outputs of block b depend only on blocks b-1 and b, so a whole chunk is
one small matrix product `[x_{b-1} x_b] @ H` with a precomputed (2B × B·L/M) block-Toeplitz matrix H: no per-sample
Python, no im2col copy. A partial last block is zero-padded; the FIR is causal, so the outputs due so far never
see the padding, and the real last B inputs are kept as state for the next chunk.

Bookkeeping is exact: after N input samples in total, ceil(N·L/M) output samples have come out, whatever the
chunking. The price is the filter's group delay, `delay_ms` (≈ 1–2.3 ms for these rates).
"""
from __future__ import annotations

import itertools
from functools import cache
from math import ceil, gcd

import numpy as np

from ._audioop import audioop

SUPPORTED_RATES = (8000, 16000, 24000, 48000)

#: Design stop-band attenuation in dB (Kaiser's formula); measured rejection is reported in BENCHMARKS.md.
STOPBAND_DB = 60.0
#: Pass-band edge as a fraction of the lower rate's Nyquist frequency (3.2 kHz for 8 kHz audio).
PASSBAND = 0.8



class _Design:
    """Everything that depends only on the rate pair: shared by every call's resampler."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = gcd(in_rate, out_rate)
        self.up = up = out_rate // g
        self.down = down = in_rate // g
        self.taps = taps = prototype(in_rate, out_rate)
        fs = in_rate * up
        self.delay_ms = (len(taps) - 1) / 2 / fs * 1000.0
        need = ceil((len(taps) - 1) / up)          # input samples one output can reach back
        frame = in_rate // 50                      # 20 ms: make typical frames whole blocks (no padding work)
        cands = [b for b in range(down, frame + 1, down) if frame % b == 0 and b >= need]
        self.block = cands[0] if cands else ceil(need / down) * down
        self.out_per_block = self.block * up // down
        self._matrices: dict[int, np.ndarray] = {}
        self._rails: tuple[np.ndarray, np.ndarray] = (np.empty((0, self.out_per_block), np.float32),) * 2
        # The largest input magnitude that cannot drive any output past the int16 rails: an output is a weighted
        # sum of inputs, so |y| <= max|x| * (the largest sum of |weights| of one output). Chunks whose inputs stay
        # below it skip the saturation step (two array operations); the margin covers float32 rounding.
        l1 = max(float(np.abs(self.matrix(p).astype(np.float64)).sum(axis=0).max()) for p in range(down))
        self.safe_peak = int(32766 / (l1 * 1.0001))

    def rails(self, blocks: int) -> tuple[np.ndarray, np.ndarray]:
        """int16 limits shaped like a `blocks`-block output (views of one pair of arrays, grown when needed):
        full-shape operands make the clipping ufuncs markedly cheaper than scalars or `np.clip` (no per-call scalar
        conversion or broadcasting; a batch of 200 blocks: 3.1 µs against 4.4 for `np.clip`, 15 with scalars)."""
        lo, hi = self._rails
        if len(lo) < blocks:
            shape = (max(blocks, 2 * len(lo)), self.out_per_block)
            lo, hi = self._rails = (np.full(shape, -32768.0, np.float32), np.full(shape, 32767.0, np.float32))
        return lo[:blocks], hi[:blocks]

    def matrix(self, phase: int) -> np.ndarray:
        """The (2B × B·L/M) block matrix for blocks whose first global input index ≡ `phase` (mod M)."""
        h = self._matrices.get(phase)
        if h is None:
            h = self._matrices[phase] = self._build(phase)
        return h

    def _build(self, g0: int) -> np.ndarray:
        up, down, b, taps = self.up, self.down, self.block, self.taps
        n0 = -(-g0 * up // down)                                  # first output whose input index ≥ g0
        m = (n0 + np.arange(self.out_per_block)) * down           # output times on the common-rate grid
        u = g0 - b + np.arange(2 * b)                             # input indices covered by [x_{b-1} x_b]
        k = m[None, :] - u[:, None] * up                          # prototype tap linking input u to output m
        inside = (k >= 0) & (k < len(taps))
        h = np.where(inside, taps[np.clip(k, 0, len(taps) - 1)], 0.0)
        # Every output must see its whole polyphase branch, or the block is too short for the filter.
        assert np.allclose(h.sum(axis=0), 1.0, atol=1e-6), "block shorter than the filter span"
        return np.ascontiguousarray(h, dtype=np.float32)


@cache
def prototype(in_rate: int, out_rate: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass at the common rate, polyphase branches normalised to unity DC gain."""
    g = gcd(in_rate, out_rate)
    up = out_rate // g
    fs = in_rate * up
    nyq = min(in_rate, out_rate) / 2
    f_stop, f_pass = nyq, PASSBAND * nyq
    dw = 2 * np.pi * (f_stop - f_pass) / fs
    n = int(ceil((STOPBAND_DB - 7.95) / (2.285 * dw))) + 1
    n += 1 - n % 2                                                 # odd length: integer group delay
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    fc = (f_pass + f_stop) / 2 / fs
    t = np.arange(n) - (n - 1) / 2
    h: np.ndarray = 2 * fc * np.sinc(2 * fc * t) * np.kaiser(n, beta)
    for p in range(up):
        h[p::up] /= h[p::up].sum()
    return h


@cache
def _design(in_rate: int, out_rate: int) -> _Design:
    return _Design(in_rate, out_rate)


class StreamResampler:
    """Resamples a continuous PCM16 stream chunk by chunk, carrying filter state across chunks (no edge clicks).

    One instance per direction per call. `process()` accepts any even number of bytes and returns every output
    sample that the input so far determines; `delay_ms` is the constant latency the filter adds.
    """

    __slots__ = ("in_rate", "out_rate", "delay_ms", "_d", "_mats", "_buf", "_mv", "_plans", "_in_count",
                 "_out_count", "_ready", "_batch")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate not in SUPPORTED_RATES or out_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported rate conversion {in_rate} -> {out_rate}; supported: {SUPPORTED_RATES}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._d = _design(in_rate, out_rate) if in_rate != out_rate else None
        self.delay_ms = self._d.delay_ms if self._d else 0.0
        self._mats = [self._d.matrix(p) for p in range(self._d.down)] if self._d else []
        #: the last `resample_many` call that listed this stream (its number): a stream's later jobs in the same
        #: call are skipped
        self._batch = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (start of a new utterance or call): state back to silence, counters to zero."""
        self._in_count = 0
        self._out_count = 0
        #: the next chunk's result computed ahead by `resample_many`: (chunk, output, history after it, input and
        #: output counts after it); dropped whenever the state moves otherwise, so it always matches the state
        self._ready: tuple[bytes, bytes, bytes, int, int] | None = None
        # [B samples of history | this chunk | zero padding to whole blocks], int16 so that chunks and history
        # move with plain memory copies; numpy converts the rows to float32 inside the product.
        self._buf = np.zeros(2 * self._d.block if self._d else 0, np.int16)
        self._mv = self._buf.data.cast("B")
        #: chunk size in bytes → what a chunk of that size needs (frames repeat sizes): see `_plan`
        self._plans: dict[int, tuple[np.ndarray, np.ndarray, int, int]] = {}

    def _plan(self, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """For a chunk of `size` bytes: the rows [x_{i-1} x_i] of its blocks (a strided view of the buffer, not a
        copy: they overlap by B samples), the product's float32 result (reused), the sample index where zero
        padding starts (= where it ends when the chunk is whole blocks) and the bytes of buffer the product read."""
        d = self._d
        assert d is not None
        b = d.block
        nb = -(-(size // 2) // b)
        if len(self._buf) < (nb + 1) * b:
            grown = np.zeros((nb + 1) * b, np.int16)
            grown[:b] = self._buf[:b]
            self._buf, self._mv, self._plans = grown, grown.data.cast("B"), {}
        rows = np.ndarray((nb, 2 * b), np.int16, self._buf, 0, (2 * b, 2))
        plan = self._plans[size] = (rows, np.empty((nb, d.out_per_block), np.float32), b + size // 2, 2 * (nb + 1) * b)
        return plan

    def process(self, pcm: bytes) -> bytes:
        d = self._d
        if d is None:
            return pcm
        ready = self._ready
        if ready is not None:
            self._ready = None
            if ready[0] is pcm or ready[0] == pcm:     # computed ahead from this very state: take it over
                self._mv[: 2 * d.block] = ready[2]
                self._in_count, self._out_count = ready[3], ready[4]
                return ready[1]
        size = len(pcm)
        plan = self._plans.get(size)
        if plan is None:
            if size % 2:
                raise ValueError("PCM16 chunk has an odd number of bytes")
            if not size:
                return b""
            plan = self._plan(size)
        rows, y, pad, span = plan
        b2 = 2 * d.block
        mv = self._mv
        mv[b2 : b2 + size] = pcm
        if 2 * pad < span:
            self._buf[pad : span // 2] = 0
        np.dot(rows, self._mats[self._in_count % d.down], out=y)
        self._in_count += size // 2
        total = -(-self._in_count * d.up // d.down)
        due = total - self._out_count
        self._out_count = total
        if audioop.max(mv[:span], 2) > d.safe_peak:    # every input of this product, history too
            lo, hi = d.rails(y.shape[0])
            np.maximum(y, lo, out=y)               # saturate (Gibbs overshoot near full scale), never wrap
            np.minimum(y, hi, out=y)
        mv[:b2] = mv[size : size + b2]                                  # keep the last B real inputs
        np.rint(y, out=y)
        out: bytes = y.astype("<i2").tobytes()
        return out if due == y.size else out[: 2 * due]


#: multiply-adds of one batched product at most. OpenBLAS computes products of up to 100³ (measured here: its
#: small-matrix kernel) with the kernel it uses for one stream's few rows, and a product holds whole streams, so
#: every output sample is summed in the same order as alone: bit for bit the same result (larger products took
#: another kernel and differed in the last bits of some sums). tests/test_voicecodecs_resample.py checks it.
_BATCH_MADDS = 64 ** 3


def resample_many(jobs: list[tuple[StreamResampler, bytes]]) -> None:
    """Compute the next `process()` of many streams in a few numpy calls instead of several per stream.

    Each job is a resampler and the chunk its next `process()` call will get (a resampler listed more than once:
    its first chunk; the later ones are left to `process()`). The results are kept in the resamplers (nothing is
    returned, no state moves): when `process()` then gets that chunk, it takes the result and the state after it
    instead of computing them; any other chunk (or a `reset()`) drops the result and computes as usual, so the
    output is always exactly what `process()` alone gives. Only chunks of whole blocks are batched, grouped by
    rate pair, size and phase, and only groups of at least `BATCH_MIN` (a batch has a fixed cost of its own); the
    rest are left to `process()`. Why: per 20 ms frame, `process()` is a few µs of numpy call overhead around a
    tiny product; the calls of one event-loop iteration share those calls here
    (gateway/mediabatch.py; BENCHMARKS.md, "What each step costs per 20 ms frame")."""
    groups: dict[tuple[_Design, int, int], list[tuple[StreamResampler, bytes]]] = {}
    batch = next(_batch_numbers)
    for job in jobs:
        r, pcm = job
        # a stream listed again (its reader got several frames in one loop iteration) is batched for its first
        # chunk only, the one its next process() gets: a later job's result replaced the first one's and was then
        # dropped, so each of that stream's chunks was computed alone as well as in the batch
        if r._batch == batch:
            continue
        r._batch = batch
        d, size = r._d, len(pcm)
        if d is not None and size and not size % (2 * d.block):
            key = (d, size, r._in_count % d.down)
            group = groups.get(key)
            if group is None:
                groups[key] = [job]
            else:
                group.append(job)
    for (d, size, phase), group in groups.items():
        if len(group) >= BATCH_MIN:
            _resample_group(d, group, size, phase)


#: numbers `resample_many` calls (`StreamResampler._batch`)
_batch_numbers = itertools.count(1)

#: fewer streams than this are left to `process()`: below it the batch's own fixed cost is not earned back
BATCH_MIN = 4


def _resample_group(d: _Design, group: list[tuple[StreamResampler, bytes]], size: int, phase: int) -> None:
    """`resample_many` for streams of one rate pair, chunk size and phase."""
    b, b2 = d.block, 2 * d.block
    k, nb, width = len(group), size // b2, b2 + size
    # per stream [B samples of history | the chunk], one row each; the product's rows [x_{i-1} x_i] are a strided
    # view of that (overlapping by B samples), converted to float32 in one copy
    z = b"".join([part for r, pcm in group for part in (r._mv[:b2], pcm)])
    x = np.ndarray((k, nb, 2 * b), np.int16, z, 0, (width, b2, 2)).astype(np.float32).reshape(k * nb, 2 * b)
    h = d.matrix(phase)
    opb = d.out_per_block
    step = max(1, _BATCH_MADDS // (2 * b * opb * nb)) * nb     # whole streams per product
    if k * nb <= step:
        y = np.dot(x, h)
    else:
        y = np.empty((k * nb, opb), np.float32)
        for j in range(0, k * nb, step):
            np.dot(x[j : j + step], h, out=y[j : j + step])
    lo, hi = d.rails(k * nb)             # saturate, never wrap (a no-op on rows that cannot reach the rails)
    np.maximum(y, lo, out=y)
    np.minimum(y, hi, out=y)
    np.rint(y, out=y)
    out = y.astype("<i2").tobytes()
    per = nb * opb * 2
    half, up, down = size // 2, d.up, d.down
    exact = not phase and not half * up % down      # every chunk gives exactly `per` bytes (the usual case)
    o = 0
    for r, pcm in group:
        n_in = r._in_count + half
        if exact:
            r._ready = (pcm, out[o : o + per], pcm[-b2:], n_in, r._out_count + per // 2)
        else:
            total = -(-n_in * up // down)
            due = 2 * (total - r._out_count)
            r._ready = (pcm, out[o : o + min(due, per)], pcm[-b2:], n_in, total)
        o += per
