"""Issue 7's in-suite load run: SIPp calls with G.711 RTP into a real gateway, every call reaching the engine and
ending in the call log; and `gateway loadtest sip` itself, its summary read from a real SIPp run."""
import asyncio
import os
import re
import sys

import aiohttp

from gateway.engine.base import VoiceEngine
from gateway.frames import AudioFrame
from gateway.loadtest.sipp import run_sipp
from tests.sipp import free_port, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = needs_sipp


class CountingEcho(VoiceEngine):
    """Echo that remembers which calls sent it audio, and the call's bus counters once the call is over."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.bus: dict[str, dict] = {}

    async def handle_call(self, session) -> None:
        try:
            async for item in session:
                if isinstance(item, AudioFrame):
                    self.frames[session.call_id] = self.frames.get(session.call_id, 0) + 1
                    await session.play(item.pcm)
        finally:
            self.bus[session.call_id] = {k: session.info[k] for k in ("frames_in", "dropped_in")}


async def test_fifty_calls_at_ten_cps(make_gateway):
    gw = await sip_gateway(make_gateway, **{"rtp_port_min": 46000, "rtp_port_max": 46400})
    engine = CountingEcho()
    gw.engines.register("counting", engine)
    await sip_number(gw, phone="+15550100001", engine="counting")
    outcome = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, calls=50, rate=10,
                             service="15550100001", duration_ms=3000, timeout_s=90)
    outcome.assert_calls(successful=50, failed=0)
    # the engines read what their calls queued before the hangup: on a busy box they may still be at it
    await wait_for(lambda: len(engine.bus) == 50, timeout=60, what="every call's engine to finish")
    rows, total = await gw.store.list_calls(1, 100)
    assert len(engine.frames) == 50, ("every call reached the engine", [
        (r["extra"]["rtp"], engine.bus[r["call_uuid"]]) for r in rows if r["call_uuid"] not in engine.frames])
    assert total == 50
    assert all(r["channel_type"] == "sip" and r["call_direction"] == "inbound" for r in rows)
    assert all(r["call_status"] == "completed" and r["hangup_source"] == "user" and r["ended_at"] for r in rows)
    clock = gw.carriers["sip"].rtp
    for row in rows:
        # each call carried seconds of RTP audio (SIPp's g711a.pcap: 30 ms a packet, so its 3 s hold ≈ 100 packets;
        # a starved SIPp sends fewer in time, or more before its late BYE: 70-117 seen at a load of 13) ...
        rtp, bus, heard = row["extra"]["rtp"], engine.bus[row["call_uuid"]], engine.frames[row["call_uuid"]]
        assert rtp["received"] >= 50, [r["extra"]["rtp"]["received"] for r in rows]
        # ... and all of it is accounted for, however the box scheduled us: what the jitter buffer played (the
        # packets received, plus concealment for losses, less those it dropped late, twice or on overflow — that
        # only when the 20 ms clock fell behind — and those it still held when the media closed: `unplayed`) went
        # to the call's bus, but for what came before the answer was done (`unheard`: SIPp's RTP can beat its ACK)
        # and what was played out after the call ended, before its media closed (`after_end`: a starved loop reads
        # the last second of RTP in one burst, BYE included — 15 packets seen at a load of 6); the engine read
        # every frame the bus did not drop
        played = (rtp["received"] - rtp["late"] - rtp["duplicate"] - rtp["overflow"] + rtp["lost"]
                  - rtp["unplayed"] - rtp["unheard"] - rtp["after_end"]) * 240
        assert 0 <= played - bus["frames_in"] * 160 <= 10 * 240 + 160, (rtp, bus)
        assert heard == bus["frames_in"] - bus["dropped_in"], (heard, bus)
        assert not rtp["overflow"] or clock.late_ticks + clock.skipped_ticks, (rtp, clock.late_ticks)
    assert not gw.calls.active
    async with aiohttp.ClientSession() as http, http.get(gw.url("/metrics")) as r:
        metrics = await r.text()
    received = float(re.search(r"^gateway_rtp_packets_received_total (\S+)$", metrics, re.M).group(1))
    assert received == sum(r["extra"]["rtp"]["received"] for r in rows), "the calls' RTP is counted in /metrics"
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


async def test_loadtest_command_says_why_its_own_gateway_did_not_start(tmp_path):
    """Without --target the command starts a gateway; one that cannot start is reported in one line (no
    traceback) and exit 1."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "loadtest", "sip", "--calls", "1", "--rate", "1",
        env={**os.environ, "GATEWAY_LOG_FORMAT": "nope"}, cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: loadtest: the gateway exited during start-up; see "), err
