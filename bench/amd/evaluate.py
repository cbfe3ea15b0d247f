"""Run the AMD detector over the generated corpus and report accuracy, confusion, decision times and cost.

    python bench/amd/corpus.py                       # generate (≈1 min)
    python bench/amd/evaluate.py --tune              # grid on the dev split only: pick thresholds
    python bench/amd/evaluate.py --write             # frozen defaults vs the app_amd anchor, dev + test,
                                                     # written to BENCHMARKS.md (section bench:amd)

Each clip is the μ-law WAV a carrier would deliver, decoded to PCM16 and fed in 20 ms chunks, with
detect_message_end on (voicemail drop enabled), so both the first verdict (human / machine_start / fax / unknown)
and the end of the greeting (machine_end_*) are scored against the timeline the generator recorded.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.amd.detector import AmdDetector  # noqa: E402
from gateway.amd.params import AmdParams  # noqa: E402
from gateway.amd.wav import load_message  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
TRUTH = ["human", "machine", "fax", "silence"]
PRED = ["human", "machine", "fax", "unknown"]
EXPECT = {"human": "human", "machine": "machine", "fax": "fax", "silence": "unknown"}
CHUNK = 320   # 20 ms at 8 kHz, as carriers deliver it


def load(split: str | None) -> list[dict]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    clips = [c for c in manifest["clips"] if split in (None, "all", c["split"])]
    for c in clips:
        c["pcm"] = load_message(str(CORPUS / c["file"]), 8000)
    return clips


def klass(answered_by: str) -> str:
    return "machine" if answered_by.startswith("machine") else answered_by


def run_clip(params: AmdParams, pcm: bytes) -> dict:
    det = AmdDetector(params, 8000, detect_message_end=True)
    t0 = time.perf_counter()
    for i in range(0, len(pcm), CHUNK):
        det.feed(pcm[i:i + CHUNK])
        if det.done:
            break
    cost = time.perf_counter() - t0
    first, final = det.first, det.final
    return {"first": first.answered_by.value if first else "unknown", "first_ms": first.at_ms if first else None,
            "cause": first.cause if first else "", "final": final.answered_by.value if final else None,
            "final_ms": final.at_ms if final else None, "frames": det.frames, "cost_s": cost}


def evaluate(params: AmdParams, clips: list[dict]) -> dict:
    results = [{**run_clip(params, c["pcm"]), "clip": c} for c in clips]
    return score(results)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def score(results: list[dict]) -> dict:
    conf = {t: {p: 0 for p in PRED} for t in TRUTH}
    hm_ok = hm_n = ok = 0
    t_machine, t_human, t_human_after_speech = [], [], []
    beep_ok = beep_n = early_msg = machine_n = 0
    frames = cost = 0.0
    errors = []
    for r in results:
        c = r["clip"]
        pred = klass(r["first"])
        conf[c["kind"]][pred] += 1
        good = pred == EXPECT[c["kind"]]
        ok += good
        if c["kind"] in ("human", "machine"):
            hm_n += 1
            hm_ok += good
        if not good:
            errors.append(f"{c['id']} {c['voice']} s{c['speed']} {c['noise']}: {r['first']} ({r['cause']}) "
                          f"'{c.get('text', '')[:40]}'")
        if c["kind"] == "machine" and good:
            t_machine.append(r["first_ms"])
        if c["kind"] == "human" and good:
            t_human.append(r["first_ms"])
            t_human_after_speech.append(r["first_ms"] - c["speech_end_ms"])
        if c["kind"] == "machine" and good:
            machine_n += 1
            end = r["final_ms"]
            # the message must not start while the greeting is still playing (or before the beep has ended)
            must_wait = c.get("beep_end_ms", c["greeting_end_ms"])
            if end is None or end < must_wait:
                early_msg += 1
            if c.get("beep_hz"):
                beep_n += 1
                beep_ok += r["final"] == "machine_end_beep" and end is not None and \
                    c["beep_end_ms"] <= end <= c["beep_end_ms"] + 300
        frames += r["frames"]
        cost += r["cost_s"]
    return {
        "n": len(results), "accuracy": ok / len(results), "hm_accuracy": hm_ok / hm_n if hm_n else 0.0,
        "hm_n": hm_n, "confusion": conf,
        "machine_ms": {q: pct(t_machine, q) for q in (50, 90, 95)},
        "human_ms": {q: pct(t_human, q) for q in (50, 90, 95)},
        "human_after_speech_ms": {q: pct(t_human_after_speech, q) for q in (50, 90)},
        "beep_detected": beep_ok / beep_n if beep_n else None, "beep_n": beep_n,
        "message_too_early": early_msg / machine_n if machine_n else None,
        "us_per_frame": cost / frames * 1e6 if frames else 0.0, "errors": errors,
    }


def _grid_point(args):
    params, clips = args
    s = evaluate(params, clips)
    return params, s


def tune(clips: list[dict], jobs: int, stage: str) -> list[tuple[AmdParams, dict]]:
    """Stage "greeting": VAD × greeting × after-greeting silence. Stage "beep": confirmation × tone purity."""
    base = AmdParams()
    points = []
    if stage == "greeting":
        for vad, mode in (("webrtc", 3), ("webrtc", 2), ("energy", 3)):
            for greeting, after in itertools.product((1100, 1300, 1500, 1700, 1900), (700, 800, 1000)):
                points.append(replace(base, vad=vad, vad_mode=mode, greeting=greeting,
                                      after_greeting_silence=after))
    else:
        for confirm, purity in itertools.product((0, 60, 100, 160), (0.72, 0.8, 0.85)):
            points.append(replace(base, beep_confirm_ms=confirm, tone_purity=purity))
    with ProcessPoolExecutor(jobs) as pool:
        out = list(pool.map(_grid_point, [(p, clips) for p in points]))
    return out


def rank(ps: tuple[AmdParams, dict]):
    """Selection rule (dev only): best human/machine accuracy with median machine decision ≤ 2.5 s, then fewest
    messages started before the greeting/beep ended, then most beeps found, then the faster machine verdict."""
    s = ps[1]
    fast = (s["machine_ms"][50] or 1e9) <= 2500
    return (not fast, -s["hm_accuracy"], s["message_too_early"] or 0, -(s["beep_detected"] or 0),
            s["machine_ms"][50] or 1e9)


def fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v / 1000:.2f} s"


def summary_rows(name: str, split: str, s: dict) -> list:
    return [name, split, s["n"], f"{s['hm_accuracy'] * 100:.1f} %", f"{s['accuracy'] * 100:.1f} %",
            fmt_ms(s["machine_ms"][50]), fmt_ms(s["machine_ms"][90]), fmt_ms(s["human_ms"][50]),
            fmt_ms(s["human_ms"][90]),
            "–" if s["beep_detected"] is None else f"{s['beep_detected'] * 100:.0f} % of {s['beep_n']}",
            "–" if s["message_too_early"] is None else f"{s['message_too_early'] * 100:.1f} %",
            f"{s['us_per_frame']:.1f}"]


def confusion_table(s: dict) -> str:
    from bench._report import table
    return table(["truth \\ verdict"] + PRED, [[t] + [s["confusion"][t][p] for p in PRED] for t in TRUTH])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tune", action="store_true", help="grid search on the dev split (never the test split)")
    ap.add_argument("--write", action="store_true", help="write the bench:amd section of BENCHMARKS.md")
    ap.add_argument("--split", default=None, help="dev | test (default: both, dev first)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if not (CORPUS / "manifest.json").exists():
        print("no corpus: run python bench/amd/corpus.py first", file=sys.stderr)
        return 2
    if args.tune:
        dev = load("dev")
        for stage in ("greeting", "beep"):
            res = sorted(tune(dev, args.jobs, stage), key=rank)
            print(f"-- stage {stage} (best first)")
            for p, s in res[:10]:
                print(f"{p.vad}{p.vad_mode} greeting={p.greeting} after={p.after_greeting_silence} "
                      f"confirm={p.beep_confirm_ms} purity={p.tone_purity}: "
                      f"hm={s['hm_accuracy'] * 100:.1f}% all={s['accuracy'] * 100:.1f}% "
                      f"machine p50={s['machine_ms'][50]} human p50={s['human_ms'][50]} "
                      f"beep={s['beep_detected']} early={s['message_too_early']}")
        return 0
    configs = {
        "gateway (webrtcvad, tones)": AmdParams(),
        "gateway with energy VAD": replace(AmdParams(), vad="energy"),
        "app_amd anchor": AmdParams.app_amd(),
    }
    splits = [args.split] if args.split else ["dev", "test"]
    results = {}
    for split in splits:
        clips = load(split)
        for name, params in configs.items():
            s = evaluate(params, clips)
            results[(name, split)] = s
            print(f"{split:4} {name:28} hm={s['hm_accuracy'] * 100:5.1f}% all={s['accuracy'] * 100:5.1f}% "
                  f"machine p50={fmt_ms(s['machine_ms'][50])} p90={fmt_ms(s['machine_ms'][90])} "
                  f"human p50={fmt_ms(s['human_ms'][50])} beep={s['beep_detected']} "
                  f"early={s['message_too_early']} {s['us_per_frame']:.1f} µs/frame")
            for e in s["errors"][:12]:
                print("   ", e)
    if args.write:
        write(results, splits)
    return 0


def write(results: dict, splits: list[str]) -> None:
    from bench._report import table, write_section
    from bench.amd.cost import cost_rows
    heads = ["config", "split", "clips", "human/machine acc.", "all-class acc.", "machine p50", "machine p90",
             "human p50", "human p90", "beep found (end-of-msg)", "msg before greeting end", "µs/frame"]
    rows = [summary_rows(name, split, s) for (name, split), s in results.items()]
    gw_test = results.get(("gateway (webrtcvad, tones)", "test"))
    anchor_test = results.get(("app_amd anchor", "test"))
    body = [
        "TTS audio is not real calls: the corpus is espeak-ng speech (bench/amd/corpus.py), band-limited, mixed "
        "with pink noise, encoded to 8 kHz μ-law and decoded as a carrier path would. Real greetings (music, "
        "background talk, recorded-in-a-car voices, carrier announcements) and real people (long hellos, "
        "\"hello… hello?\" with short gaps) are harder; treat these figures as a regression signal, not a field "
        "accuracy. Dev split: 6 voices and 10+3 human / 5 machine templates; test split: 3 other voices and "
        "other templates, never seen while tuning. Thresholds were frozen on dev (`--tune`) before the test run.",
        "",
        table(heads, rows),
        "",
        "*human/machine acc.*: first verdict on human and machine clips (unknown counts as wrong). *machine p50/p90*: "
        "time from answer to the machine_start verdict on correctly classified machines; *human*: to the human "
        "verdict. *beep found*: machine clips with a beep where machine_end_beep came within 300 ms after the beep "
        "ended. *msg before greeting end*: machines whose end-of-message verdict (when the voicemail message "
        "starts) came before the greeting or beep had finished. *µs/frame*: wall time per 20 ms frame during this "
        "run (includes a busy machine's scheduling; CPU cost below).",
        "",
        "Test-split history, for honesty: the first frozen defaults (beep decided as the tone stops, tone purity "
        "0.85) scored 98.3 % human/machine, machine p50 2.34 s, beeps found 99 %, 1.7 % messages early on test. "
        "A dev-only change followed (a beep must be followed by 60 ms without loud speech; purity 0.80; on dev it "
        "removed every early message); the table shows its test run. 120 + 120 test clips: one or two clips move "
        "these percentages by about 1 %.",
    ]
    if gw_test:
        body += ["", "Confusion, gateway defaults, test split:", "", confusion_table(gw_test)]
    if anchor_test:
        body += ["", "Confusion, app_amd anchor, test split:", "", confusion_table(anchor_test)]
    body += ["", "Per-frame cost (one 20 ms frame, 8 kHz, this machine):", "",
             table(["step", "µs / frame"], cost_rows())]
    write_section("amd", "Answering-machine detection (AMD)", "\n".join(body),
                  command="python bench/amd/corpus.py && python bench/amd/evaluate.py --write")


if __name__ == "__main__":
    sys.exit(main())
