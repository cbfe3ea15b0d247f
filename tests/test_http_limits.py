"""HTTP fd exhaustion and slowloris (issue 13 item 3), over real sockets: connections past the per-address and total
caps get 503 and are closed while a SIPp INVITE still gets its 200; a client sending its headers slowly and an
idle keep-alive connection are dropped after their (short, for the test) timeouts."""
from __future__ import annotations

import asyncio
import contextlib
import resource

import aiohttp
import pytest

from gateway.httpguard import fd_budget, raise_fd_limit
from sipp import metric_value, metrics_text, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = pytest.mark.timeout(90)


async def _idle(gw, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.http_port, local_addr=(source, 0))


async def _refused(gw, source: str = "127.0.0.1") -> bool:
    """True when a new connection is answered 503 and closed without a request being read."""
    reader, writer = await _idle(gw, source)
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return data.startswith(b"HTTP/1.1 503 ")


async def _healthz(gw) -> int:
    async with aiohttp.ClientSession() as s, s.get(gw.url("/healthz")) as r:
        return r.status


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


@needs_sipp
async def test_caps_refuse_idle_floods_while_sip_still_answers(make_gateway):
    gw = await sip_gateway(make_gateway, http_max_connections=12, http_max_connections_per_ip=8,
                           http_header_timeout=60)
    await sip_number(gw)
    held = []
    try:
        for _ in range(8):                          # one address up to its cap, sending nothing
            held.append(await _idle(gw))
        await wait_for(lambda: gw.http_guard.open == 8)
        assert await _refused(gw)                   # the 9th from 127.0.0.1: 503, closed
        for _ in range(4):                          # another address still gets in, up to the total cap
            held.append(await _idle(gw, "127.0.0.2"))
        await wait_for(lambda: gw.http_guard.open == 12)
        assert await _refused(gw, "127.0.0.3")      # total cap: nobody new gets in
        assert gw.http_guard.refused == 2
        # the HTTP side is saturated; SIP and RTP are not
        res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111",
                             duration_ms=500, timeout_s=20)
        res.assert_calls(successful=1)
    finally:
        for _, w in held:
            w.close()
    # every slot comes back: nothing is kept per address once its connections are gone
    await wait_for(lambda: gw.http_guard.open == 0 and not gw.http_guard.per_ip)
    assert await _healthz(gw) == 200
    assert metric_value(await metrics_text(gw), "gateway_http_connections_refused_total") == 2


async def test_slow_headers_and_idle_keepalive_are_dropped(make_gateway):
    gw = await make_gateway(http_header_timeout=0.5, http_idle_timeout=1.0)
    # slowloris: a request line, then one header byte at a time, never the blank line
    reader, writer = await _idle(gw)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    async def trickle():
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.1)   # the pace of the attack, not a wait for a condition

    sender = asyncio.create_task(trickle())
    closed = await _closed_by_server(reader, 10)
    sender.cancel()
    writer.close()
    assert closed and gw.http_guard.header_timeouts == 1

    # a connection that never sends anything goes the same way
    reader, writer = await _idle(gw)
    assert await _closed_by_server(reader, 10)
    writer.close()
    assert gw.http_guard.header_timeouts == 2

    # keep-alive: a full request is answered, then the idle connection is closed after http_idle_timeout
    reader, writer = await _idle(gw)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.read(), 15)   # the body, then the server closes the idle connection
    assert reader.at_eof()
    writer.close()
    await wait_for(lambda: gw.http_guard.open == 0)


def test_fd_limit_raised_to_hard_limit_and_reserved_for_calls():
    soft = raise_fd_limit()
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now and (hard == resource.RLIM_INFINITY or now == hard)
    # 1000 calls need ~2000 fds: with a 1024 limit HTTP keeps a quarter, the rest is for SIP/RTP and engines
    assert fd_budget(1024, 1000) == 256
    assert fd_budget(65536, 1000) == 65536 - 2000 - 256
