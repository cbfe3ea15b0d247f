"""A gateway process for websocket-carrier benchmarks: started with one carrier, pinned to a core, health-checked.

Shared by bench/media_ws.py, bench/exotel_ws.py and bench/vs_pipecat_media.py so they measure the same set-up.
"""
from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

from gateway.procstat import cpu_seconds  # noqa: F401  re-exported for the benchmarks

ROOT = Path(__file__).resolve().parent.parent


def speech_like(seconds: float, rate: int = 8000) -> bytes:
    """16-bit PCM: a 300 Hz + 1 kHz tone pair, loud enough to be unmistakable when echoed."""
    t = np.arange(int(seconds * rate)) / rate
    x = 6000 * np.sin(2 * math.pi * 300 * t) + 3000 * np.sin(2 * math.pi * 1000 * t)
    return x.astype("<i2").tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(tmp: str, port: int, core: int | None, carrier: str) -> subprocess.Popen:
    """`gateway serve` with only `carrier`, no SIP, the echo engine and the database prepared in `tmp`/gw.db."""
    env = dict(os.environ, GATEWAY_CARRIERS=carrier, GATEWAY_ENABLE_SIP="false", PYTHONPATH=str(ROOT))
    with open(os.path.join(tmp, "gateway.log"), "w") as log:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(port),
             "--db", os.path.join(tmp, "gw.db"), "--data-dir", tmp, "--engine", "echo", "--api-key", "bench",
             "--public-url", f"http://127.0.0.1:{port}", "--max-calls", "10000", "--log-level", "WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
    if core is not None:
        os.sched_setaffinity(proc.pid, {core})
    return proc


def stop_gateway(proc: subprocess.Popen) -> None:
    """SIGTERM (the gateway drains and exits), SIGKILL if it has not gone after 10 s: a benchmark never leaves it."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("gateway exited at start-up; see gateway.log")
            try:
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not become healthy")
