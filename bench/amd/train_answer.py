"""Could a small learned decision beat the talk-length rule? Measured on the dev split by cross-validation.

    python bench/amd/train_answer.py --cap 6000

The moment timing rules judge worst: a provisional machine verdict (less talk than a person's answer can hold), then
`answer_wait_ms` of silence with no beep. A person who asked and waits ("Good morning, Acme support, Tom speaking, how
can I help?") or a greeting that ended without a beep? The gateway's rule looks at one number, the talk length
(≥ `answer_max_ms` → machine). This script fits a logistic regression over the shape of the talk instead (talk and
voiced time, utterance count, first / last / longest utterance, longest pause, onset, speech density) and checks it by
cross-validation inside dev: one engine, one noise type, one language family (English vs the others) held out at a
time, against the rules on the same held-out samples: "the wait → person" and "talk ≥ 4.5 s → machine".

Samples: every dev person/machine clip whose provisional verdict reached the wait with talk under `--cap` (the
answer_max_ms the model would run with). The test split is never read. Result (docs/amd.md, BENCHMARKS.md): the model
did not beat the talk rule on held-out groups, so the gateway has no learned stage.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate import load  # noqa: E402

from gateway.amd.detector import FRAME_MS, AmdDecision, AmdDetector  # noqa: E402
from gateway.amd.params import AmdParams  # noqa: E402

FEATURES = ("talk_s", "voiced_s", "utterances", "longest_s", "first_s", "last_s", "max_gap_s", "onset_s",
            "density")


class _Recorder(AmdDetector):
    """The detector, logging the callee's utterances and noting the features when the wait rule fires."""

    def __init__(self, params: AmdParams, rate: int) -> None:
        super().__init__(params, rate, detect_message_end=True)
        self.utts: list[list[int]] = []      # [start_ms, end_ms, voiced_ms], split at pauses ≥ utterance_gap
        self.seen: list[float] | None = None

    def _log(self, now: int, voice: bool) -> None:
        if not voice:
            return
        u = self.utts
        if u and now - u[-1][1] < self.params.utterance_gap + FRAME_MS:
            u[-1][1], u[-1][2] = now, u[-1][2] + FRAME_MS
        else:
            u.append([now - FRAME_MS, now, FRAME_MS])

    def _greeting(self, now: int, voice: bool) -> AmdDecision | None:
        self._log(now, voice)
        return super()._greeting(now, voice)

    def _message_end(self, now: int, voice: bool) -> AmdDecision | None:
        self._log(now, voice)
        wait = self.provisional and not voice and self.silence_ms + FRAME_MS >= self.params.answer_wait_ms
        d = super()._message_end(now, voice)
        if wait and d is not None and self.seen is None:
            self.seen = self.features()
        return d

    def features(self) -> list[float]:
        u = self.utts
        lengths = [(a[1] - a[0]) / 1000 for a in u]
        gaps = [(b[0] - a[1]) / 1000 for a, b in zip(u, u[1:], strict=False)]
        span = (u[-1][1] - u[0][0]) / 1000
        return [self.talk_ms / 1000, self.heard_ms / 1000, float(len(u)), max(lengths), lengths[0], lengths[-1],
                max(gaps, default=0.0), u[0][0] / 1000, sum(a[2] for a in u) / 1000 / span]


def samples(params: AmdParams, clips: list[dict]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    xs, ys, meta = [], [], []
    for c in clips:
        if c["kind"] not in ("human", "machine"):
            continue
        det = _Recorder(params, c["rate_hz"])
        pcm, chunk = c["pcm"], c["rate_hz"] // 50 * 2
        for i in range(0, len(pcm), chunk):
            det.feed(pcm[i:i + chunk])
            if det.done:
                break
        if not det.done:
            det.feed_silence(30000)
        if det.seen is not None:
            xs.append(det.seen)
            ys.append(1.0 if c["kind"] == "machine" else 0.0)
            meta.append(c)
    return np.array(xs, dtype=float).reshape(-1, len(FEATURES)), np.array(ys), meta


def fit(x: np.ndarray, y: np.ndarray, l2: float = 0.05, steps: int = 3000) -> dict[str, list[float]]:
    """Logistic regression on standardised features, L2-penalised, plain gradient descent (no dependency)."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = p - y
        w -= 0.5 * (z.T @ g / len(y) + l2 * w)
        b -= 0.5 * g.mean()
    return {"mean": [round(float(v), 6) for v in mean], "scale": [round(float(v), 6) for v in scale],
            "weights": [round(float(v), 6) for v in w], "bias": [round(float(b), 6)]}


def predict(m: dict[str, list[float]], x: np.ndarray) -> np.ndarray:
    z = (x - np.array(m["mean"])) / np.array(m["scale"]) @ np.array(m["weights"]) + m["bias"][0]
    return (z > 0).astype(float)


def talk_threshold(x: np.ndarray, y: np.ndarray) -> float:
    """The talk length that best splits the training samples (the rule's one number, fitted like the model)."""
    cands = np.unique(x[:, 0])
    return float(max(cands, key=lambda t: ((x[:, 0] >= t).astype(float) == y).sum()))


def cross_validate(x: np.ndarray, y: np.ndarray, meta: list[dict], key: str,
                   l2: float) -> tuple[int, int, int, int, int]:
    """Held-out correct counts: (model, 'wait → person', 'talk ≥ 4.5 s', talk threshold fitted per fold, samples)."""
    groups = sorted({_group(c, key) for c in meta})
    model = wait = talk = fitted = 0
    for g in groups:
        test = np.array([_group(c, key) == g for c in meta])
        if test.all() or len(set(y[~test])) < 2:
            continue
        m = fit(x[~test], y[~test], l2)
        model += int((predict(m, x[test]) == y[test]).sum())
        wait += int((y[test] == 0).sum())
        talk += int(((x[test, 0] >= 4.5).astype(float) == y[test]).sum())
        t = talk_threshold(x[~test], y[~test])
        fitted += int(((x[test, 0] >= t).astype(float) == y[test]).sum())
    return model, wait, talk, fitted, len(y)


def _group(c: dict, key: str) -> str:
    if key == "language":
        return "en" if c.get("lang", "en") == "en" else "other"
    return str(c[key])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=int, default=6000, help="answer_max_ms while the model would run")
    ap.add_argument("--l2", type=float, default=0.05)
    args = ap.parse_args()
    params = replace(AmdParams(), answer_max_ms=args.cap)
    x, y, meta = samples(params, load("dev"))
    print(f"{len(y)} dev samples reached the wait under a {args.cap} ms cap: {int(y.sum())} machines, "
          f"{int(len(y) - y.sum())} people")
    for key in ("engine", "noise", "language"):
        model, wait, talk, fitted, n = cross_validate(x, y, meta, key, args.l2)
        print(f"  leave one {key:8} out: model {model}/{n} = {model / n * 100:.1f} %, 'wait → person' "
              f"{wait / n * 100:.1f} %, 'talk ≥ 4.5 s → machine' {talk / n * 100:.1f} %, talk threshold "
              f"fitted per fold {fitted / n * 100:.1f} %")
    m = fit(x, y, args.l2)
    print("  weights on all dev samples:", dict(zip(FEATURES, m["weights"], strict=True)), "bias", m["bias"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
