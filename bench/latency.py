"""Added latency of the gateway's media path: a carrier frame in → echo engine → the carrier frame out.

Measures the core path every carrier shares (frame bus, 8 kHz ⇄ 16 kHz resampling, engine task hand-off,
re-framing) with N simultaneous calls paced in real time (20 ms), on uvloop when installed. Carrier wire costs
(websocket JSON/base64, RTP) are measured by bench/media_ws.py and bench/sip_load.py.

    python bench/latency.py [--calls 1,100,500] [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import write_section  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.frames import AudioFrame  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402


class Leg:
    async def hangup(self, call, reason):
        pass

    async def transfer(self, call, request):
        pass


def tone(frames: int) -> list[bytes]:
    """Computed once per run: generating it per call would stall the loop and show up as latency."""
    pcm = b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(160 * frames))
    return [pcm[i * 320:(i + 1) * 320] for i in range(frames)]


async def one_call(gw: Gateway, frames: list[bytes], out: list[float], offset: float) -> None:
    await asyncio.sleep(offset)  # calls start spread over one frame period, as real traffic does
    call = await gw.calls.create(carrier="bench", direction="inbound", from_number="+15550000001",
                                 to_number="+15550000002", agent={"id": 0, "engine": "echo", "settings": {}})
    await call.attach(Leg(), 8000)
    sent: list[float] = []

    async def reader() -> None:
        got = 0
        while got < len(frames):
            item = await call.next_outbound()
            if isinstance(item, AudioFrame):
                if got < len(sent):
                    out.append((time.perf_counter() - sent[got]) * 1000)
                got += 1

    r = asyncio.create_task(reader())
    loop = asyncio.get_running_loop()
    t = loop.time()
    for f in frames:
        sent.append(time.perf_counter())
        call.feed_audio(f)
        t += 0.02
        await asyncio.sleep(max(0.0, t - loop.time()))
    try:
        await asyncio.wait_for(r, 2.0)
    except TimeoutError:
        pass
    await call.end("user", "bench")


async def measure(n: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(Settings(host="127.0.0.1", http_port=0, data_dir=d, api_key="k", engine="echo"), carriers={})
        await gw.start()
        lat: list[float] = []
        frames = tone(int(seconds * 50))
        try:
            await asyncio.gather(*(one_call(gw, frames, lat, random.random() * 0.02) for _ in range(n)))
        finally:
            await gw.stop()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else math.nan  # noqa: E731
    return {"calls": n, "frames": len(lat), "p50": q(50), "p99": q(99), "max": lat[-1] if lat else math.nan,
            "mean": statistics.fmean(lat) if lat else math.nan}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", default="1,100,500")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    loop_name = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    rows = [run_async(measure(int(n), args.seconds)) for n in args.calls.split(",")]
    lines = [f"Event loop: {loop_name}; echo engine at 16 kHz, carrier leg 8 kHz; {args.seconds:.0f} s per call, "
             "real-time 20 ms pacing; latency = frame fed by the carrier → echoed frame ready for the carrier.", "",
             "| simultaneous calls | frames | p50 (ms) | p99 (ms) | max (ms) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['calls']} | {r['frames']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
    text = "\n".join(lines)
    print(text)
    write_section("latency", "Added latency (core media path)", text, command="python bench/latency.py")


if __name__ == "__main__":
    main()
