"""`gateway serve` as a real subprocess: what it says at start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


def _serve(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_PUBLIC_URL", None)
    return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", "0",
                             "--sip-port", "0", "--data-dir", str(tmp_path), "--engine", "echo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _until(proc: subprocess.Popen, needle: str, timeout: float = 60) -> str:
    """stdout lines up to and including the first holding `needle` (the process is stopped on timeout)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    proc.kill()
    pytest.fail(f"no {needle!r} from gateway serve; got: {''.join(seen)} {proc.stderr.read()}")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.parametrize("public, warned", [(None, True), ("https://gw.example.com", False)])
def test_serve_prints_its_public_url_and_warns_when_carriers_cannot_reach_it(tmp_path, public, warned):
    proc = _serve(tmp_path, *(["--public-url", public] if public else []))
    out = _until(proc, "public URL")
    err = _stop(proc)
    line = [x for x in out.splitlines() if "public URL" in x][0]
    assert (public or "http://127.0.0.1:") in line
    assert ("cannot reach" in err and "loopback" in err) is warned, err
