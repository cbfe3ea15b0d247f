"""RTCP with an independent RTP stack: baresip (Debian package) calls the gateway with a tone, sends its own RTCP
reports about our stream (the gateway gets the round trip and the peer's view from them) and reads ours: its
call statistics at the end (`pkt.report`) come only from the reports we sent."""
from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket

import pytest

from sipp import call_rows, free_port, metric_value, metrics_text, sip_gateway, sip_number, wait_for

pytestmark = [pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip (Debian package) not installed"),
              pytest.mark.timeout(150)]

CONFIG = """poll_method epoll
net_interface 127.0.0.1
sip_listen 127.0.0.1:{sip_port}
audio_player aufile,{heard}
audio_source ausine,440
audio_alert aufile,/dev/null
ausrc_srate 48000
ausrc_channels 2
rtp_ports {rtp_min}-{rtp_max}
rtp_stats yes
module_path /usr/lib/baresip/modules
module g711.so
module ausine.so
module aufile.so
module_app account.so
module_app menu.so
"""


async def test_baresip_and_the_gateway_exchange_rtcp(make_gateway, tmp_path):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    rtp_min = free_port(socket.SOCK_DGRAM) & ~1
    (tmp_path / "config").write_text(CONFIG.format(sip_port=free_port(socket.SOCK_DGRAM),
                                                   heard=tmp_path / "heard.wav", rtp_min=rtp_min, rtp_max=rtp_min + 10))
    (tmp_path / "accounts").write_text("<sip:baresip@127.0.0.1>;regint=0;audio_codecs=PCMU\n")
    # the call lasts until both sides have what the test reads (RTCP reports come every 2.5-7.5 s at random, RFC
    # 3550 §6.2, later still on a busy box): then SIGTERM makes baresip hang up, print its summary and quit, as its
    # own `-t` (here only a backstop) would
    proc = await asyncio.create_subprocess_exec(
        "baresip", "-n", "127.0.0.1", "-f", str(tmp_path), "-t", "100",
        "-e", f"/dial sip:15550001111@127.0.0.1:{sip.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
    try:
        call = await wait_for(lambda: next((c for c in gw.calls.active.values() if c.leg is not None
                                            and getattr(c.leg, "rtp", None) is not None), None), timeout=30)
        session = call.leg.rtp
        # baresip's first report, then one answering one of our SRs (the round trip: baresip has read ours too)
        await wait_for(lambda: session.rtcp.received["sr"] + session.rtcp.received["rr"] >= 1, timeout=30)
        await wait_for(lambda: session.rtcp.peer is not None and session.rtcp.peer.rtt is not None, timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace").replace("\r", "\n")
    # baresip's summary: "pkt.report" is what our RTCP told it (our RR about its stream, our SR's packet count)
    reported = re.search(r"^pkt\.report:\s+(\d+)\s+(\d+)", text, re.M)
    sent = re.search(r"^packets:\s+(\d+)\s+(\d+)", text, re.M)
    assert reported and sent, text[-2000:]
    assert 0 < int(reported.group(1)) <= int(sent.group(1)) and 0 < int(reported.group(2)) <= int(sent.group(2))
    rows = await wait_for(lambda: _ended(gw), timeout=10)
    q = rows[0]["extra"]["rtp"]["quality"]
    assert q["remote"] is not None and q["rtt_ms"] is not None and q["rtt_ms"] < 1000
    assert q["expected"] > 100 and q["loss_ratio"] < 0.05 and q["mos"] > 4.0
    assert metric_value(await metrics_text(gw), "gateway_rtcp_reports_received_total") >= 1


async def _ended(gw):
    rows = await call_rows(gw)
    return rows if rows and rows[0]["ended_at"] and "rtp" in (rows[0].get("extra") or {}) else None
