"""A/B of the Twilio load generator's own cost: bench/twilio_callers.py of this working tree against a git ref's,
against one gateway, rounds alternated.

bench/scale.py's ratio of 2 workers to 1 is bounded by what everything beside the workers costs (BENCHMARKS.md,
"Where the two cores go"), the callers included, so the callers' CPU per frame is a figure of its own. On a
shared 2-core box one run of each version says nothing about a few µs: this starts one node as bench/scale.py
does (`gateway serve` on PostgreSQL, `--workers` 1 by default, nothing pinned) and runs the same step with the
ref's callers (A) and the working tree's (B) in turn, A B then B A, …, so both versions see the same minutes and
the same gateway. Per run: the callers' CPU per frame sent (user + system, `os.times` of each caller process from
the first frame to the last close) and the turnaround each version measured (p50, p99), so a cheaper generator
that measures differently shows up as a different p50/p99 in the same rounds.

    python bench/ab_callers.py --base main --db postgresql://… --calls 200 --seconds 6 --rounds 4

Figures are printed, not written to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import twilio_callers  # noqa: E402
from bench.media_ws import ACCOUNT, NUMBER, RECORDING, TOKEN  # noqa: E402
from bench.scale import renice_group, start_node  # noqa: E402
from gateway.cli import run_async  # noqa: E402


def load_callers(ref: str, into: str) -> ModuleType:
    """bench/ of `ref` exported into `into` (`git archive`), and its twilio_callers loaded under another name: its
    caller processes then run that tree's code (they are started from the module's own file)."""
    archive = subprocess.run(["git", "archive", ref, "bench"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    spec = importlib.util.spec_from_file_location("ab_base_callers", Path(into) / "bench" / "twilio_callers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def rounds(args: argparse.Namespace, versions: dict[str, ModuleType]) -> dict[str, list[dict]]:
    ulaw = RECORDING.read_bytes()
    payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw) - 159, 160)]
    node = await start_node(args.workers, args.db, kamailio=False, carriers="twilio")
    got: dict[str, list[dict]] = {name: [] for name in versions}
    try:
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                res = await versions[name].run_step(node.http_port, args.calls, args.seconds, payloads,
                                                    procs=args.procs, account=ACCOUNT, token=TOKEN, number=NUMBER)
                per = 1e6 / max(1, res["frames"])
                res["us"] = per * res["generator_cpu"]
                got[name].append(res)
                print(f"round {r + 1} {name}: {res['us']:5.1f} µs per frame (user {per * res['generator_user']:.1f}"
                      f" sys {per * res['generator_sys']:.1f}), p50 {res['p50']:.2f} ms, "
                      f"p99 {res['p99']:.2f} ms, late p99 {res['gen_late_p99']:.1f} ms, {res['frames']} frames, "
                      f"{res['dropped']} lost, {res['errors']} errors, load {os.getloadavg()[0]:.1f}", flush=True)
                await asyncio.sleep(2.0)        # the gateway closes the calls (call log) before the next run
    finally:
        node.stop()
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="main", help="git ref whose callers are A (B: this working tree's)")
    p.add_argument("--db", default=os.environ.get("GATEWAY_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL for the node (its gateway tables are dropped)")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=4, help="each runs A and B once, the order alternating")
    p.add_argument("--procs", type=int, default=2, help="caller processes")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--nice", type=int, default=0,
                   help="this session's scheduler autogroup nice (gateway and callers ahead of other work on a shared "
                        "box, as bench/scale.py --nice; < 0 needs root): a starved gateway's turnaround compares "
                        "nothing")
    args = p.parse_args()
    if not args.db:
        p.error("--db (or GATEWAY_TEST_POSTGRES_URL) is needed")
    if args.nice:
        renice_group(os.getpid(), args.nice)        # the node and the caller processes are in this session
    with tempfile.TemporaryDirectory(prefix="bench-ab-callers-") as tmp:
        got = run_async(rounds(args, {"A": load_callers(args.base, tmp), "B": twilio_callers}))
    print(f"A = {args.base}, B = working tree; {args.calls} streams × {args.seconds:g} s, {args.workers} worker(s), "
          f"--procs {args.procs}, {args.rounds} rounds, autogroup nice {args.nice}")
    for name in ("A", "B"):
        us = [r["us"] for r in got[name]]
        p50 = ", ".join(f"{r['p50']:.2f}" for r in got[name])
        p99 = ", ".join(f"{r['p99']:.2f}" for r in got[name])
        print(f"{name}: µs per frame median {statistics.median(us):.1f} ({min(us):.1f}–{max(us):.1f}); "
              f"p50 ms {p50}; p99 ms {p99}; "
              f"lost {sum(r['dropped'] for r in got[name])}")
    pairs = [b["us"] / a["us"] for a, b in zip(got["A"], got["B"], strict=True)]
    print(f"B / A per round: {', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
