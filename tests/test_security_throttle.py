"""Password guessing is throttled per source IP: SIP digest failures (real SIPp over UDP) and wrong API keys (real
HTTP), with the ban visible in /metrics and in a log line that names the source address."""
from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from gateway.throttle import FailureThrottle
from sipp import needs_sipp, sip_gateway, sip_number, sipp_uac


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def scrape(gw) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.url("/metrics")) as r:
        return await r.text()


def test_window_ban_and_expiry():
    now = [0.0]
    t = FailureThrottle("X", logging.getLogger("t"), max_failures=3, window=10, ban_seconds=30,
                        clock=lambda: now[0])
    assert not t.failure("192.0.2.1") and not t.failure("192.0.2.1")
    now[0] = 11.0                                  # the first two fell out of the window
    assert not t.failure("192.0.2.1") and not t.failure("192.0.2.1")
    assert t.banned("192.0.2.1") == 0.0
    assert t.failure("192.0.2.1")                  # third within 10 s: banned
    assert t.banned("192.0.2.1") == pytest.approx(30.0)
    assert t.banned("192.0.2.2") == 0.0            # per source
    now[0] = 41.5
    assert t.banned("192.0.2.1") == 0.0            # ban over
    assert (t.failures_total, t.bans_total, t.refused_total) == (5, 1, 1)
    off = FailureThrottle("X", logging.getLogger("t"), max_failures=0)
    assert not any(off.failure("192.0.2.9") for _ in range(50)) and off.banned("192.0.2.9") == 0.0


@needs_sipp
@pytest.mark.timeout(120)
@pytest.mark.parametrize("response", ["403", "silent"])
async def test_sip_digest_guessing_is_banned(make_gateway, caplog, response):
    gw = await sip_gateway(make_gateway, auth_max_failures=3, auth_ban_seconds=120, sip_ban_response=response)
    await sip_number(gw, auth_type="basic", allowed_ips=[], sip_username="carrier", sip_password="4711")
    port = gw.carriers["sip"].port
    caplog.set_level(logging.WARNING, logger="carriers.sip")
    for guess in ("1111", "2222", "3333"):          # three wrong guesses: each answered 403 after the challenge
        bad = await sipp_uac("uac_digest.xml", port, service="15550001111", duration_ms=200, timeout_s=10,
                             extra=["-au", "carrier", "-ap", guess])
        bad.assert_calls(successful=0, failed=1)
    # now even the right password is refused from this address: no challenge, no call
    good = await sipp_uac("uac_digest.xml", port, service="15550001111", duration_ms=200, timeout_s=4,
                          extra=["-au", "carrier", "-ap", "4711"])
    assert good.successful == 0 and not good.result.killed, good.explain()
    if response == "403":
        assert "403 Forbidden" in good.result.errors and "401 Unauthorized" not in good.result.errors
    assert (await gw.store.list_calls())[1] == 0
    text = await scrape(gw)
    assert metric(text, "gateway_sip_auth_failures_total") == 3
    assert metric(text, "gateway_sip_auth_bans_total") == 1
    assert metric(text, "gateway_sip_banned_requests_total") >= 1
    assert metric(text, "gateway_sip_banned_sources") == 1
    banned = [r for r in caplog.records if "banned" in r.getMessage()]
    assert banned and banned[0].source_ip == "127.0.0.1"
    failed = [r for r in caplog.records if r.getMessage() == "SIP authentication failed"]
    assert len(failed) == 3 and {r.source_ip for r in failed} == {"127.0.0.1"}


@needs_sipp
@pytest.mark.timeout(60)
async def test_sip_right_password_is_never_counted(make_gateway):
    gw = await sip_gateway(make_gateway, auth_max_failures=1, auth_ban_seconds=120)
    await sip_number(gw, auth_type="basic", allowed_ips=[], sip_username="carrier", sip_password="4711")
    res = await sipp_uac("uac_digest.xml", gw.carriers["sip"].port, service="15550001111", duration_ms=200,
                         calls=2, extra=["-au", "carrier", "-ap", "4711"])
    res.assert_calls(successful=2)
    assert gw.carriers["sip"].auth_throttle.failures_total == 0


async def test_api_key_guessing_gets_429_then_recovers(make_gateway, auth_headers, caplog):
    gw = await make_gateway(auth_max_failures=4, auth_failure_window=60, auth_ban_seconds=1.5)
    caplog.set_level(logging.INFO, logger="gateway.api")
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            async with s.get(gw.url("/api/v1/agents"), headers={"Authorization": f"Bearer guess-{i}"}) as r:
                assert r.status == 401
        async with s.get(gw.url("/api/v1/agents"), headers=auth_headers) as r:
            assert r.status == 429                  # banned: even the right key waits
            assert 1 <= int(r.headers["Retry-After"]) <= 2
            assert (await r.json())["field"] == "Authorization"
        async with s.get(gw.url("/engine/ws"), headers=auth_headers) as r:
            assert r.status == 429                  # the engine socket shares the ban
        async with s.get(gw.url("/healthz")) as r:
            assert r.status == 200                  # open endpoints are not affected
        text = await scrape(gw)
        assert metric(text, "gateway_api_auth_failures_total") == 4
        assert metric(text, "gateway_api_auth_bans_total") == 1
        assert metric(text, "gateway_api_banned_requests_total") == 2
        deadline = time.monotonic() + 10
        while True:                                 # the ban ends by itself
            async with s.get(gw.url("/api/v1/agents"), headers=auth_headers) as r:
                if r.status == 200:
                    break
                assert r.status == 429 and time.monotonic() < deadline
            await asyncio.sleep(0.1)
    refused = [r for r in caplog.records if r.getMessage() == "API authentication failed"]
    assert len(refused) == 4
    assert all(r.source_ip == "127.0.0.1" and r.path == "/api/v1/agents" for r in refused)
    assert not any("guess-" in str(r.__dict__) for r in caplog.records)   # the key presented is never logged
