"""`gateway serve` as a real subprocess: what it says at start."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Served:
    """`gateway serve` running: its stdout lines as they come (read by a thread, so a wait has a deadline even
    when the process says nothing) and its stderr in a file (a pipe nobody reads while it runs fills up and blocks
    the process)."""
    proc: subprocess.Popen
    lines: queue.Queue
    err: Path

    def stderr(self) -> str:
        return self.err.read_text()


def _serve(tmp_path, *args: str) -> Served:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_PUBLIC_URL", None)
    err = tmp_path / "serve.err"
    with open(err, "w") as out:      # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", "0",
                                 "--sip-port", "0", "--data-dir", str(tmp_path), "--engine", "echo", *args],
                                stdout=subprocess.PIPE, stderr=out, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    return Served(proc, lines, err)


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def _until(served: Served, needle: str, timeout: float = 90) -> str:
    """stdout lines up to and including the first holding `needle` (the process is stopped on timeout). Start-up
    takes about a second on an idle machine and tens of seconds on a starved one: the bound is generous."""
    seen = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = served.lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    served.proc.kill()
    served.proc.wait()
    pytest.fail(f"no {needle!r} from gateway serve within {timeout} s (exit {served.proc.returncode}); "
                f"got: {''.join(seen)} stderr: {served.stderr()}")


def _stop(served: Served) -> str:
    """SIGTERM (a drain without calls: it exits at once), SIGKILL after 30 s; what it wrote on stderr."""
    served.proc.send_signal(signal.SIGTERM)
    try:
        served.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait()
    return served.stderr()


@pytest.mark.parametrize("public, warned", [(None, True), ("https://gw.example.com", False)])
def test_serve_prints_its_public_url_and_warns_when_carriers_cannot_reach_it(tmp_path, public, warned):
    served = _serve(tmp_path, *(["--public-url", public] if public else []))
    out = _until(served, "public URL")
    err = _stop(served)
    line = [x for x in out.splitlines() if "public URL" in x][0]
    assert (public or "http://127.0.0.1:") in line
    assert ("cannot reach" in err and "loopback" in err) is warned, err


def _gateway(*args: str, timeout: float = 90, **kw) -> subprocess.CompletedProcess:
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
    served = _serve(tmp_path, "--public-url", "https://gw.example.com")
    try:
        out = _until(served, "HTTP on")
        port = out.split("HTTP on 127.0.0.1:")[1].split(",")[0]
        key = (tmp_path / "api_key").read_text().strip()
        for _ in range(30):                       # 120 KB of JSON: more than the pipe's 64 KB buffer
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/agents", method="POST", data=json.dumps(
                {"name": "x", "settings": {"notes": {"text": "x" * 4000}}}).encode(),
                headers={"Authorization": f"Bearer {key}"})
            urllib.request.urlopen(req, timeout=30).close()
        with open(tmp_path / "cli.err", "w") as err:
            cli = subprocess.Popen([sys.executable, "-m", "gateway", "agents", "list", "--json", "--pagesize", "150",
                                    "--url", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path)],
                                   stdout=subprocess.PIPE, stderr=err)
        try:
            first = cli.stdout.read(10)
            cli.stdout.close()                    # the reader goes away early, as `| head -c 10` does
            code = cli.wait(timeout=90)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    finally:
        _stop(served)
    err = (tmp_path / "cli.err").read_text()
    assert len(first) == 10 and "Traceback" not in err and "BrokenPipe" not in err, (code, err)


@pytest.mark.parametrize("value", ["-1", "11", "nan"])
def test_media_coalesce_ms_out_of_range_is_one_line(tmp_path, value):
    r = _gateway("serve", "--host", "127.0.0.1", "--http-port", "0", "--sip-port", "0", "--data-dir", str(tmp_path),
                 "--engine", "echo", "--media-coalesce-ms", value)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "gateway: --media-coalesce-ms: must be between 0 and 10 (ms added to a frame's turnaround at most)"]
