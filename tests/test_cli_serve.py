"""`gateway serve` as a real subprocess: what it says at start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

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


def _gateway(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_busy_port_is_one_line_not_a_traceback(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _gateway("serve", "--host", "127.0.0.1", "--http-port", str(port), "--sip-port", "0",
                     "--data-dir", str(tmp_path), "--engine", "echo")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    line, = [x for x in r.stderr.splitlines() if x.startswith("gateway:")]
    assert "cannot start" in line and str(port) in line and "in use" in line, r.stderr


def test_unloadable_tls_certificate_is_one_line(tmp_path):
    bad = tmp_path / "sip.crt"
    bad.write_text("not a certificate")
    r = _gateway("serve", "--host", "127.0.0.1", "--http-port", "0", "--sip-port", "0", "--tls-port", "0",
                 "--tls-cert", str(bad), "--tls-key", str(bad), "--data-dir", str(tmp_path), "--engine", "echo")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line, = [x for x in r.stderr.splitlines() if x.startswith("gateway:")]
    assert "cannot start" in line and "tls_cert/tls_key" in line and str(bad) in line, line


def test_version():
    from gateway import __version__
    r = _gateway("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gateway {__version__}"


def test_refused_loadtest_target_is_one_line():
    r = _gateway("loadtest", "sip", "--target", "192.0.2.1:5060", "--calls", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "gateway: loadtest: --target: refusing to load-test 192.0.2.1: SIPp runs here only against 127.0.0.0/8"]


def test_broken_pipe_is_quiet(tmp_path):
    """`gateway … | head -1`: the reader closes early; we stop without a BrokenPipeError traceback."""
    proc = _serve(tmp_path, "--public-url", "https://gw.example.com")
    try:
        out = _until(proc, "HTTP on")
        port = out.split("HTTP on 127.0.0.1:")[1].split(",")[0]
        key = (tmp_path / "api_key").read_text().strip()
        for _ in range(30):                       # 120 KB of JSON: more than the pipe's 64 KB buffer
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/agents", method="POST", data=json.dumps(
                {"name": "x", "settings": {"notes": {"text": "x" * 4000}}}).encode(),
                headers={"Authorization": f"Bearer {key}"})
            urllib.request.urlopen(req, timeout=30).close()
        r = subprocess.run(f"{sys.executable} -m gateway agents list --json --pagesize 150 "
                           f"--url http://127.0.0.1:{port} --data-dir {tmp_path} | head -c 10",
                           shell=True, capture_output=True, text=True, timeout=60)
    finally:
        _stop(proc)
    assert len(r.stdout) == 10 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
