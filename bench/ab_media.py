"""A/B of the media path's CPU per 20 ms frame: this working tree against a git ref, rounds alternated.

On a machine shared with other work, one benchmark run says little about a change worth a few µs per frame: the
load moves between runs by more than that. This runs one bench/media_ws.py step (a real `gateway serve` pinned to
one core, N Twilio streams from another process, echo engine at 16 kHz) for each source tree in turn — A, B, then
B, A, … — and compares the gateway's CPU time per echoed frame (from /proc), so both trees see the same minutes.
The ref is exported with `git archive` into a temporary directory (nothing in the repository changes); each
tree's gateway runs from its own source (`PYTHONPATH`), with this virtualenv's packages.

    python bench/ab_media.py --base main                  # working tree vs main, 60 streams, 6 rounds
    python bench/ab_media.py --base HEAD~3 --calls 100 --rounds 8 --nice -10
    python bench/ab_media.py --harness scale --db postgresql://… --calls 300   # bench/scale.py's callers

`--harness scale` runs one worker of bench/scale.py (`gateway serve` on PostgreSQL, not pinned) with its Twilio
callers spread over two processes instead: media_ws.py's single caller process falls behind above ≈ 100 streams,
and a late caller sends bursts that make frames cheaper (several per wake-up) than steady traffic does.

Figures are printed, not written to BENCHMARKS.md: a change's commit message or BENCHMARKS text carries them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: one media_ws step in a tree, its result dict printed as JSON on the last line
STEP = """
import argparse, json, sys
sys.path.insert(0, '.')
from bench import media_ws
from gateway.cli import run_async
ns = argparse.Namespace(steps=[{calls}], seconds={seconds}, repeat=1, budget=600.0, no_write=True, nice={nice},
                        no_pin=False)
print(json.dumps(run_async(media_ws.main_async(ns))[0]))
"""

#: the same with bench/scale.py's harness (one worker, the callers in two processes)
STEP_SCALE = """
import base64, json, sys
sys.path.insert(0, '.')
from bench import scale
from gateway.cli import run_async
ulaw = scale.RECORDING.read_bytes()
payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw) - 159, 160)]
r = run_async(scale.twilio_run(1, {db!r}, {calls}, {seconds}, payloads, 2))
print(json.dumps({{"cpu_s": r["used"]["workers"], "echoed": r["frames"], "dropped": r["dropped"], "p99": r["p99"],
                  "gen_late_p99": r["gen_late_p99"], "cpu": r["cpu"], "load": r["load"]}}))
"""


def export(ref: str, into: str) -> None:
    """The tree of `ref` (a commit, branch or tag of this repository) as plain files in `into`."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)


def step(tree: Path, args: argparse.Namespace) -> dict:
    if args.harness == "scale":
        code = STEP_SCALE.format(db=args.db, calls=args.calls, seconds=args.seconds)
    else:
        code = STEP.format(calls=args.calls, seconds=args.seconds, nice=args.nice)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                         timeout=args.seconds + 120)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        raise RuntimeError(f"the step in {tree} failed: {out.stderr.strip()[-400:]}")
    return json.loads(lines[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="main", help="git ref to compare the working tree with (A)")
    p.add_argument("--calls", type=int, default=60, help="concurrent streams per step")
    p.add_argument("--seconds", type=float, default=4.0, help="media seconds per step")
    p.add_argument("--rounds", type=int, default=6, help="rounds; each runs A and B once, the order alternating")
    p.add_argument("--nice", type=int, default=0, help="scheduling priority of gateway and callers (root: < 0)")
    p.add_argument("--harness", choices=("media_ws", "scale"), default="media_ws",
                   help="bench/media_ws.py (pinned, one caller process) or bench/scale.py's one worker")
    p.add_argument("--db", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL for --harness scale (its gateway tables are dropped)")
    args = p.parse_args()
    if args.harness == "scale" and not args.db:
        p.error("--harness scale needs --db (or GATEWAY_TEST_POSTGRES_URL)")
    per_frame: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        export(args.base, tmp)
        trees = {"A": Path(tmp), "B": ROOT}
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                res = step(trees[name], args)
                us = res["cpu_s"] / max(1, res["echoed"]) * 1e6
                per_frame[name].append(us)
                print(f"round {r + 1} {name}: {us:6.1f} µs per frame  (CPU {res['cpu']:.0f} % of a core, "
                      f"{res['echoed']} echoed, {res['dropped']} lost, p99 {res['p99']:.1f} ms, callers late p99 "
                      f"{res['gen_late_p99']:.0f} ms, load {res['load']:.1f})", flush=True)
    a, b = per_frame["A"], per_frame["B"]
    pairs = [y - x for x, y in zip(a, b, strict=True)]
    print(f"A = {args.base}, B = working tree; {args.calls} streams, {args.rounds} rounds, load now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"µs per frame  A: median {statistics.median(a):.1f} (min {min(a):.1f})   "
          f"B: median {statistics.median(b):.1f} (min {min(b):.1f})   "
          f"B − A per round: median {statistics.median(pairs):+.1f}, "
          f"{sum(d < 0 for d in pairs)} of {len(pairs)} rounds lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
