"""Issue 7's in-suite load run: SIPp calls with G.711 RTP into a real gateway, every call reaching the engine and
ending in the call log; and `gateway loadtest sip` itself, its summary read from a real SIPp run."""
import asyncio
import re
import sys

import aiohttp

from gateway.engine.base import VoiceEngine
from gateway.frames import AudioFrame
from gateway.loadtest.sipp import run_sipp
from tests.sipp import free_port, needs_sipp, sip_gateway, sip_number, sipp_uac

pytestmark = needs_sipp


class CountingEcho(VoiceEngine):
    """Echo that remembers which calls sent it audio."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}

    async def handle_call(self, session) -> None:
        async for item in session:
            if isinstance(item, AudioFrame):
                self.frames[session.call_id] = self.frames.get(session.call_id, 0) + 1
                await session.play(item.pcm)


async def test_fifty_calls_at_ten_cps(make_gateway):
    gw = await sip_gateway(make_gateway, **{"rtp_port_min": 46000, "rtp_port_max": 46400})
    engine = CountingEcho()
    gw.engines.register("counting", engine)
    await sip_number(gw, phone="+15550100001", engine="counting")
    outcome = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, calls=50, rate=10,
                             service="15550100001", duration_ms=3000, timeout_s=90)
    outcome.assert_calls(successful=50, failed=0)
    assert len(engine.frames) == 50, "every call reached the engine"
    assert min(engine.frames.values()) > 100, "each call carried seconds of RTP audio to the engine"
    rows, total = await gw.store.list_calls(1, 100)
    assert total == 50
    assert all(r["channel_type"] == "sip" and r["call_direction"] == "inbound" for r in rows)
    assert all(r["call_status"] == "completed" and r["hangup_source"] == "user" and r["ended_at"] for r in rows)
    assert not gw.calls.active
    async with aiohttp.ClientSession() as http, http.get(gw.url("/metrics")) as r:
        metrics = await r.text()
    received = float(re.search(r"^gateway_rtp_packets_received_total (\S+)$", metrics, re.M).group(1))
    # SIPp's g711a.pcap carries 30 ms per packet: 3 s ≈ 100 packets per call, none lost on loopback
    assert received >= 50 * 95, "the RTP the engine heard was counted at the gateway"
    assert float(re.search(r"^gateway_rtp_packets_lost_total (\S+)$", metrics, re.M).group(1)) == 0


async def test_loadtest_command_summary_from_sipp(make_gateway):
    gw = await sip_gateway(make_gateway, **{"rtp_port_min": 46500, "rtp_port_max": 46700})
    await sip_number(gw, phone="+15550100002")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "loadtest", "sip", "--target", f"127.0.0.1:{gw.carriers['sip'].port}",
        "--http-url", gw.url(), "--number", "+15550100002", "--calls", "10", "--rate", "10", "--duration", "0.2",
        "--no-rtp", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, text
    row = lambda name: re.search(rf"{name}\s*│\s*(\S+)", text).group(1)  # noqa: E731
    assert row("calls attempted") == "10"
    assert row("calls successful") == "10"
    assert row("calls failed") == "0"
    assert float(row(r"CPS achieved")) > 0
    rows, total = await gw.store.list_calls(1, 100)
    assert total == 10 and all(r["call_status"] == "completed" for r in rows)


async def test_bye_right_behind_ack_leaks_nothing(make_gateway):
    """SIPp's built-in uac with 0 ms hold sends the BYE back to back with the ACK: no call or RTP session may
    outlive it (this once leaked a call that streamed RTP forever)."""
    from tests.sipp import wait_for

    gw = await sip_gateway(make_gateway, **{"rtp_port_min": 46800, "rtp_port_max": 47200})
    await sip_number(gw, phone="+15550100003")
    result = await run_sipp(f"127.0.0.1:{gw.carriers['sip'].port}",
                            ["-sn", "uac", "-s", "15550100003", "-m", "200", "-r", "100", "-l", "200", "-d", "0",
                             "-p", str(free_port()), "-timeout", "60s"], deadline_s=70)
    assert (result.stats.successful, result.stats.failed) == (200, 0), result.errors
    rtp = gw.carriers["sip"].rtp
    await wait_for(lambda: not gw.calls.active and not rtp.sessions, timeout=5)
    rows, total = await gw.store.list_calls(1, 100)
    assert total == 200 and all(r["ended_at"] for r in rows)
