"""`/metrics` of `gateway serve --workers 2` covers both workers, whichever one the kernel hands the scrape to
(gateway/metrics_workers.py): a real supervisor with two workers on a real PostgreSQL, one SIPp call to each
worker's SIP port, and scrapes on fresh connections."""
from __future__ import annotations

import aiohttp
import pytest

from procs import NODE, GatewayProc, fresh_postgres, until
from sipp import metric_value, needs_sipp, sipp_uac

pytestmark = [needs_sipp, pytest.mark.timeout(180)]
NUMBER = "15550001111"
WORKERS = {f"{NODE}.1", f"{NODE}.2"}


async def _scrape(gw: GatewayProc, **params: str) -> tuple[str, str]:
    """One GET /metrics on a new connection, so SO_REUSEPORT may pick either worker: (text, the answering proc)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(gw.url("/metrics"), params=params, timeout=aiohttp.ClientTimeout(total=10)) as r:
            assert r.status == 200
            return await r.text(), r.headers["X-Gateway-Proc"]


async def test_every_scrape_covers_every_worker(tmp_path):
    pg = await fresh_postgres()
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg)
    try:
        await gw.wait_procs(WORKERS)
        num = (await gw.api("POST", "/phone_number/import/sip", {
            "phone_number": "+" + NUMBER, "sip_host": "127.0.0.1", "sip_trunk_name": "direct", "auth_type": "ip",
            "allowed_ips": ["127.0.0.1"]}, expect=201))["phone_number"]
        agent = (await gw.api("POST", "/agents", {"name": "echo", "engine": "echo"}, expect=201))["agent"]
        await gw.api("POST", "/phone_number/attach", {"phone_number_id": num["id"], "agent_id": agent["id"]},
                     expect=200)
        # one call straight to each worker's own SIP port (sip_port + k), no Kamailio needed for that
        for k in (1, 2):
            (await sipp_uac("uac_pcma_echo.xml", gw.sip_port + k, service=NUMBER, duration_ms=500,
                            timeout_s=20)).assert_calls(successful=1)

        async def both_counted() -> bool:
            text, _ = await _scrape(gw)
            for proc in WORKERS:
                assert metric_value(text, "gateway_worker_up", proc=proc) == 1, text[-2000:]
            return all(metric_value(text, "gateway_calls_ended_total", carrier="sip", direction="inbound",
                                    status="completed", hangup_source="user", proc=p) == 1 for p in WORKERS)
        await until(both_counted, 30, "both workers' calls in one scrape")

        answered: set[str] = set()

        async def each_worker_answered() -> bool:     # whichever worker answers, the union is the same
            text, proc_answering = await _scrape(gw)
            answered.add(proc_answering)
            for proc in WORKERS:
                assert metric_value(text, "gateway_calls_total", carrier="sip", direction="inbound", proc=proc) == 1
                assert metric_value(text, "process_resident_memory_bytes", proc=proc) > 0
            assert text.count("# TYPE gateway_calls_total counter") == 1    # one family, two labelled series
            return answered == WORKERS
        await until(each_worker_answered, 30, "scrapes answered by each worker")

        # a worker alone (what siblings ask each other): its own series, unlabelled
        alone, _ = await _scrape(gw, scope="process")
        assert metric_value(alone, "gateway_calls_total", carrier="sip", direction="inbound") == 1
        assert "gateway_worker_up" not in alone
    finally:
        await gw.close()
