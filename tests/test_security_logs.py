"""Log lines carry their structured fields: `gateway serve` (a real subprocess) prints them as key=value in the
text format and as JSON objects with `--log-format json`; refused API requests name the source IP and path;
secrets never reach the log."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys

import aiohttp
import pytest

from gateway.logsetup import ContextLogger, configure_logging

pytestmark = pytest.mark.timeout(90)


async def _serve(tmp_path, *flags: str):
    env = {**os.environ, "GATEWAY_CONFIG": ""}
    env.pop("GATEWAY_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", "0", "--sip-port", "0",
        "--data-dir", str(tmp_path), "--api-key", "the-real-key-123", "--engine", "echo", *flags,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    port, head = None, ""
    while port is None:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "gateway serve exited before listening"
        head += line
        m = re.search(r"HTTP on 127\.0\.0\.1:(\d+)", line)
        port = int(m.group(1)) if m else None
    return proc, port, head


async def _refused_request_then_stop(proc, port: int, head: str) -> str:
    """A refused request, then SIGTERM; the process is killed whatever fails, so no test run leaves it behind."""
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/v1/agents",
                         headers={"Authorization": "Bearer guessed-key-s3cret"}) as r:
            assert r.status == 401
        proc.terminate()
        out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return head + out


async def test_text_format_prints_fields(tmp_path):
    out = await _refused_request_then_stop(*await _serve(tmp_path))
    line = next(ln for ln in out.splitlines() if "API authentication failed" in ln)
    assert " WARNING gateway.api API authentication failed " in line
    assert "source_ip=127.0.0.1" in line and "path=/api/v1/agents" in line and "method=GET" in line
    assert 'reason="invalid API key"' in line
    assert "guessed-key-s3cret" not in out and "the-real-key-123" not in out
    started = next(ln for ln in out.splitlines() if "gateway started" in ln)
    assert "http_port=" in started           # fields of other records too


async def test_json_format_one_object_per_line(tmp_path):
    out = await _refused_request_then_stop(*await _serve(tmp_path, "--log-format", "json"))
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert records, out
    refused = next(r for r in records if r["message"] == "API authentication failed")
    assert refused["level"] == "WARNING" and refused["logger"] == "gateway.api"
    assert refused["source_ip"] == "127.0.0.1" and refused["path"] == "/api/v1/agents"
    assert refused["time"].endswith("+00:00")
    # every line of the log stream is JSON except the `gateway…:` banner lines serve prints to stdout
    others = [ln for ln in out.splitlines() if ln and not ln.startswith("{")]
    assert all(ln.startswith("gateway") for ln in others), others
    assert "guessed-key-s3cret" not in out


def test_per_call_fields_and_masking():
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "text", stream=buf)
        call_log = ContextLogger(logging.getLogger("gateway.call"), {"call_id": "c-1", "carrier": "sip"})
        call_log.warning("call ended", extra={"reason": "caller hangup", "sip_password": "pw-123",
                                              "engine": "ws://bot:hunter2@engine.local/ws"})
        line = buf.getvalue().strip()
        assert line.endswith('call ended call_id=c-1 carrier=sip reason="caller hangup" sip_password=**** '
                             'engine=ws://bot:****@engine.local/ws')
        buf.seek(0), buf.truncate()
        configure_logging("INFO", "json", stream=buf)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            call_log.exception("engine failed", extra={"api_key": "k-999"})
        rec = json.loads(buf.getvalue())
        assert rec["call_id"] == "c-1" and rec["api_key"] == "****" and "RuntimeError: boom" in rec["exception"]
        with pytest.raises(ValueError):
            configure_logging("INFO", "xml")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
