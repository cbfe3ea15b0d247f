"""Cost of the per-turn timing (gateway/turns.py) on the media path, as a share of one core at N calls.

What the timing adds per call and 20 ms, measured on the exact code paths:
* outbound: `Call._played()` for each frame handed to the carrier (type check, loop clock, RMS, playout clock,
  agent-utterance bookkeeping) — measured on loud frames, the dearer case;
* inbound on RTP: each packet's arrival time kept beside it in the jitter buffer and handed to the call before
  `feed_audio()` (a tuple, two stores) — measured with the buffer's dict store and pop it rides on (which were
  there before: an upper bound);
* inbound speech: nothing per frame beyond the VAD that already ran (one int store per voiced frame); a timeline
  update per speech start/end only (a few per utterance) — measured per transition and counted at 1 per second.
Share of a core at N calls = N × 50 frames/s × (outbound + RTP lag) + N × 1 transition/s × transition cost.

    python bench/turn_timing.py                  # writes the turn_timing section of BENCHMARKS.md
    python bench/turn_timing.py --calls 200 --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import table, write_section  # noqa: E402
from gateway.call import Call  # noqa: E402
from gateway.frames import AudioFrame  # noqa: E402
from gateway.turns import Timeline  # noqa: E402

N = 200_000


def per_call_us(stmt, number: int = N, repeat: int = 5) -> float:
    """Best of `repeat` runs, µs per call (the minimum is the cost; the rest is other load on the box)."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


async def measure() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    loud = AudioFrame((np.sin(np.arange(160) / 3) * 6000).astype("<i2").tobytes(), 8000)
    call = Call.__new__(Call)                  # only what _played() touches: its timeline and clock
    call.timeline = Timeline(loop.time())
    call._clock = loop.time
    played = per_call_us(lambda: call._played(loud))
    call.timeline = Timeline(loop.time())      # and the same without agent audio (silent frames)
    quiet = AudioFrame(bytes(320), 8000)
    played_quiet = per_call_us(lambda: call._played(quiet))

    class Holder:
        inbound_arrived: float | None = None
        arrived = 0.0

    h, payload, now, packets = Holder(), bytes(160), loop.time(), {}

    def with_arrival() -> None:      # the jitter buffer's dict with each packet's arrival time, and its hand-over
        packets[1] = (payload, now)
        got = packets.pop(1)
        h.arrived = got[1]
        h.inbound_arrived = h.arrived
        got[0]
    lag = per_call_us(with_arrival)
    tl = Timeline(loop.time())
    now = loop.time()

    def transition() -> None:
        tl.caller_started(now - 0.1)
        tl.caller_ended(now)
    trans = per_call_us(transition, number=N // 4) / 2
    return {"played_loud_us": played, "played_quiet_us": played_quiet, "rtp_lag_us": lag, "transition_us": trans}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from gateway.cli import run_async
    m: dict[str, float] = {}

    async def go() -> int:
        m.update(await measure())
        return 0
    run_async(go())
    n = args.calls
    per_s = n * 50 * (m["played_loud_us"] + m["rtp_lag_us"]) + n * 1 * m["transition_us"]
    share = per_s / 1e6 * 100
    rows = [["outbound frame, agent audio (`Call._played`)", f"{m['played_loud_us']:.3f}"],
            ["outbound frame, silence", f"{m['played_quiet_us']:.3f}"],
            ["RTP packet arrival time kept through the jitter buffer, per tick", f"{m['rtp_lag_us']:.3f}"],
            ["caller speech start or end (per transition)", f"{m['transition_us']:.3f}"]]
    text = (table(["per-call work", "µs"], rows) + "\n\n"
            f"At {n} calls (every call playing agent audio all the time, RTP, one speech transition per second): "
            f"{per_s / 1e3:.1f} ms of CPU per second = **{share:.2f} % of one core** (target: under 2 %). "
            "Analysis (`turns.analyze`) runs once per call at its end and when the live page or API asks.")
    print(text)
    if not args.no_write:
        write_section("turn_timing", "Per-turn timing: cost on the media path", text,
                      command="python bench/turn_timing.py")


if __name__ == "__main__":
    main()
