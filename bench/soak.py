"""Soak: memory per finished call (issue 13 item 1). A gateway process (`gateway serve`, uvloop, echo engine) takes
SIPp G.711 calls with RTP for the whole call, ~`--concurrent` at a time, for `--minutes` (default 10), with every
call's lifecycle webhooks delivered to a local receiver. Every few seconds the gateway's RSS and its finished-call
count (from /metrics) are sampled; after the warm-up (`--warmup`, the first half of the run by default) the
least-squares slope of RSS over finished calls is the memory each call leaves behind. Target: < 1 KB per call.

    python bench/soak.py                        # 10 minutes, ~100 concurrent 20 s calls (5 calls/s)
    python bench/soak.py --minutes 3            # shorter, for a quick figure

Aimed at 127.0.0.1 only, bounded in calls (-m) and time (SIPp's -timeout and our own deadline).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import table, write_section  # noqa: E402
from bench.sip_load import long_media_scenario, media_port  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.loadtest.command import free_port, read_metrics, start_gateway  # noqa: E402
from gateway.loadtest.sipp import run_sipp  # noqa: E402
from gateway.procstat import rss_bytes  # noqa: E402

NUMBER = "+15550100000"


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


async def webhook_receiver() -> tuple[web.AppRunner, str, list[int]]:
    """A local receiver answering 200 to every lifecycle webhook; counts them."""
    got = [0]

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        got[0] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", got


async def soak(args: argparse.Namespace) -> None:
    seconds = args.minutes * 60
    rate = args.concurrent / args.hold
    calls = int(rate * seconds)
    receiver, hook_url, hooks = await webhook_receiver()
    os.environ["GATEWAY_ALLOW_PRIVATE_WEBHOOKS"] = "true"   # the receiver is on loopback (SSRF guard opt-out)
    gw = await start_gateway(NUMBER)
    samples: list[tuple[float, int, int]] = []   # (t, finished calls, RSS bytes)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.api_key}"}) as http:
            async with http.patch(gw.http_url + "/api/v1/agents/1", json={"webhook_url": hook_url}) as r:
                if r.status >= 300:
                    raise RuntimeError(f"agent webhook: {r.status} {await r.text()}")
        scenario = long_media_scenario(args.hold + 2)
        sipp_args = ["-sf", str(scenario), "-s", NUMBER[1:], "-r", f"{rate:g}", "-m", str(calls),
                     "-l", str(int(args.concurrent * 1.5)), "-d", str(int(args.hold * 1000)),
                     "-p", str(free_port(socket.SOCK_DGRAM)), "-mp", str(media_port()),
                     "-timeout", f"{int(seconds + args.hold + 120)}s", "-timeout_error"]
        done = asyncio.Event()

        async def sample() -> None:
            t0 = time.monotonic()
            while not done.is_set():
                m = await read_metrics(gw.http_url)
                rss = rss_bytes(gw.proc.pid)
                if m and rss:
                    finished = int(m.get("gateway_calls_total", 0) - m.get("gateway_active_calls", 0))
                    samples.append((time.monotonic() - t0, finished, rss))
                    if len(samples) % 12 == 0:
                        print(f"{samples[-1][0]:6.0f} s  finished {finished:6d}  RSS {rss / 2**20:7.1f} MiB",
                              flush=True)
                try:
                    await asyncio.wait_for(done.wait(), args.interval)
                except TimeoutError:
                    pass

        sampler = asyncio.create_task(sample())
        result = await run_sipp(gw.sip_target, sipp_args, deadline_s=seconds + args.hold + 180)
        done.set()
        await sampler
    finally:
        gw.proc.terminate()
        await gw.proc.wait()
        await receiver.cleanup()
    s = result.stats
    warm = [p for p in samples if p[0] >= args.warmup * samples[-1][0]] if samples else []
    per_call = slope([(f, rss) for _, f, rss in warm]) if len(warm) > 2 else float("nan")
    early = [p for p in samples if p not in warm]
    early_slope = slope([(f, rss) for _, f, rss in early]) if len(early) > 2 else float("nan")
    rows = [[f"{t:.0f}", f, f"{rss / 2**20:.1f}"] for t, f, rss in samples[:: max(1, len(samples) // 12)]]
    verdict = "meets" if per_call < 1024 else "misses"
    body = (
        f"{args.minutes:g} minutes of SIPp G.711 calls with RTP for the whole call ({args.hold:g} s each, "
        f"~{args.concurrent} at a time, {rate:g} calls/s), echo engine, every lifecycle webhook delivered to a "
        f"local receiver ({hooks[0]} received). SIPp: {s.successful} successful, {s.failed} failed calls.\n\n"
        f"**RSS slope after warm-up (first {args.warmup:.0%} of the run left out): {per_call:.0f} bytes per "
        f"finished call** ({verdict} the < 1 KB target); RSS {warm[0][2] / 2**20:.1f} → {warm[-1][2] / 2**20:.1f} "
        f"MiB over {warm[-1][1] - warm[0][1]} calls after warm-up. During the warm-up RSS grew "
        f"{early_slope:.0f} bytes per call while SQLite's page caches and the allocator's arenas filled.\n\n"
        + table(["s", "finished calls", "RSS MiB"], rows))
    print(body)
    if not args.no_write:
        write_section("soak", "Soak: memory per finished call", body,
                      command=f"python bench/soak.py --minutes {args.minutes:g} --concurrent {args.concurrent} "
                              f"--hold {args.hold:g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--concurrent", type=int, default=100, help="calls up at a time (default 100)")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds each call lasts (default 20)")
    ap.add_argument("--warmup", type=float, default=0.5,
                    help="share of the run left out of the slope (0.5: SQLite page caches and the allocator's "
                         "arenas fill during the first minutes, then RSS is flat)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md")
    run_async(soak(ap.parse_args()))


if __name__ == "__main__":
    main()
