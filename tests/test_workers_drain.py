"""Graceful drain of a real `gateway serve` process (docs/deploy.md): SIGTERM or `gateway drain` → new INVITE 503,
OPTIONS 503, /healthz 503 `draining`, the live call goes on until it ends (or the drain timeout hangs it up with
reason `shutdown`), then the process exits 0. One process on SQLite, SIPp as the trunk, all on 127.0.0.1."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from procs import API_KEY, NODE, GatewayProc, fresh_postgres, until
from sipp import needs_sipp, sipp_uac

pytestmark = needs_sipp
NUMBER = "15550001111"


async def _gateway(tmp_path, *extra: str, procs: set[str] | None = None) -> GatewayProc:
    """A started gateway (every one of `procs` healthy) with an echo agent on NUMBER; stopped again when this set-up
    fails half-way."""
    gw = await GatewayProc.start(tmp_path, *extra)
    try:
        await gw.wait_procs(procs or {NODE}, timeout=240)
        num = (await gw.api("POST", "/phone_number/import/sip", {
            "phone_number": "+" + NUMBER, "sip_host": "127.0.0.1", "sip_trunk_name": "trunk", "auth_type": "ip",
            "allowed_ips": ["127.0.0.1"]}, expect=201))["phone_number"]
        agent = (await gw.api("POST", "/agents", {"name": "echo", "engine": "echo"}, expect=201))["agent"]
        await gw.api("POST", "/phone_number/attach", {"phone_number_id": num["id"], "agent_id": agent["id"]},
                     expect=200)
    except BaseException:
        await gw.close()
        raise
    return gw


async def _live_call(gw: GatewayProc) -> None:
    async def one():
        h = await gw.health()
        return h and h[1].get("active_calls") == 1
    await until(one, 20, "the live call")


async def test_sigterm_refuses_new_calls_and_lets_the_live_call_finish(tmp_path):
    gw = await _gateway(tmp_path, "--drain-timeout", "60")
    try:
        live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", gw.sip_port, service=NUMBER, duration_ms=5000,
                                            timeout_s=30))
        await _live_call(gw)
        gw.signal(signal.SIGTERM)
        status, body = await until(gw.health, 10, "/healthz while draining")
        assert status == 503 and body["status"] == "draining" and body["active_calls"] == 1
        (await sipp_uac("uac_capacity.xml", gw.sip_port, service=NUMBER, timeout_s=10)).assert_calls(successful=1)
        (await sipp_uac("uac_options_draining.xml", gw.sip_port, service="ping", timeout_s=10)).assert_calls(
            successful=1)
        assert gw.proc.poll() is None and not live.done()
        (await live).assert_calls(successful=1)      # SIPp's own BYE after 5 s, answered
        assert await gw.wait_exit(30) == 0, gw.output()
    finally:
        await gw.close()


async def test_gateway_drain_command_hangs_up_at_the_timeout_with_reason_shutdown(tmp_path):
    gw = await _gateway(tmp_path)
    try:
        live = asyncio.create_task(sipp_uac("uac_gateway_hangs_up.xml", gw.sip_port, service=NUMBER, timeout_s=40))
        await _live_call(gw)
        cmd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "drain", "--timeout", "1", "--url", gw.url(), "--api-key", API_KEY,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cmd.communicate(), 30)
        assert cmd.returncode == 0, err.decode()
        assert '"draining"' in out.decode()
        (await live).assert_calls(successful=1)      # the gateway's BYE after the 1 s drain timeout
        assert await gw.wait_exit(30) == 0, gw.output()
    finally:
        await gw.close()
    from gateway.store import Store
    store = Store(str(gw.data_dir / "gateway.db"))
    await store.open()
    try:
        rows, _ = await store.list_calls(1, 10)
    finally:
        await store.close()
    assert [(r["call_status"], r["hangup_source"], r["hangup_reason"]) for r in rows] == [
        ("completed", "system", "shutdown")]


def test_workers_need_postgresql():
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--workers", "2", "--db", "/tmp/x.db"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gateway: --workers 2 needs PostgreSQL: the workers share the call log, so pass --db "
        "postgresql://user:pass@host/db (SQLite serves one process only)"]


async def test_one_worker_drained_alone_finishes_its_call_then_a_fresh_one_serves_its_port(tmp_path):
    """Rolling restart of one worker (docs/deploy.md): SIGTERM to worker 1 alone drains it (OPTIONS 503 on its SIP
    port, its live call goes on); the supervisor starts no second process on that port while the old one lives,
    and once it has exited a fresh worker 1 (same SIP port, RTP range, process id) takes calls again."""
    pg = await fresh_postgres()
    gw = await _gateway(tmp_path, "--workers", "2", "--db", pg, "--drain-timeout", "60", procs={"t.1", "t.2"})
    try:
        port = gw.sip_port + 1
        old = gw.worker_pids()[1]
        live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", port, service=NUMBER, duration_ms=5000,
                                            timeout_s=30))

        async def on_worker_1():
            calls = (await gw.api("GET", "/calls/live"))["calls"]
            return [c for c in calls if c["owner"] == "t.1"]
        await until(on_worker_1, 20, "the live call on worker 1")
        os.kill(old, signal.SIGTERM)
        (await sipp_uac("uac_options_draining.xml", port, service="ping", timeout_s=10)).assert_calls(successful=1)
        assert gw.worker_pids().get(1) == old and not live.done()    # still draining: no second worker 1
        (await live).assert_calls(successful=1)      # SIPp's own BYE after 5 s, answered by the old worker
        fresh = await until(lambda: (p := gw.worker_pids().get(1)) not in (None, old) and p, 60,
                            f"a fresh worker 1\n{gw.output()}")
        # the old one answered 503 while draining: this is the new one (start-up takes minutes at load 30+)
        await gw.wait_procs({"t.1"}, timeout=240)
        (await sipp_uac("uac_pcma_echo.xml", port, service=NUMBER, duration_ms=300, timeout_s=15)).assert_calls(
            successful=1)
        assert gw.worker_pids() == {1: fresh, 2: gw.worker_pids()[2]} and gw.proc.poll() is None
        out = gw.output()
        assert "worker 1 drained and exited; starting a fresh one" in out and "died" not in out, out

        async def both_completed():
            rows = (await gw.api("GET", "/calls/logs?pagesize=10"))["call_log_data"]
            return sorted(r["call_status"] for r in rows) == ["completed", "completed"]
        await until(both_completed, 20, "both calls completed in the call log")
        gw.signal(signal.SIGTERM)
        assert await gw.wait_exit(60) == 0, gw.output()
    finally:
        await gw.close()
