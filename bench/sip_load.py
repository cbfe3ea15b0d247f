"""SIP benchmarks with SIPp against a gateway started for the run (own process, uvloop, echo engine).

* `cps`: sustained calls per second with 0 failed calls — sweeps the offered rate until failures appear,
  signalling only (SIPp's built-in uac, no media) and with short G.711 RTP calls (uac_pcma_echo.xml).
* `rtp`: the largest number of simultaneous G.711 echo calls (default 60 s each) with < 0.1 % lost/late RTP at the
  gateway, sweeping the call count.

Each step is bounded in calls and time and aimed at 127.0.0.1 only. Figures go to BENCHMARKS.md.

    python bench/sip_load.py cps [--rates 50,100,200,300,400] [--seconds 10]
    python bench/sip_load.py rtp [--counts 100,250,500,750,1000] [--hold 60]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import table, write_section  # noqa: E402
from gateway.cli import run_async  # noqa: E402
from gateway.loadtest.command import SCENARIO_DIR, free_port, read_metrics, start_gateway  # noqa: E402
from gateway.loadtest.sipp import run_sipp  # noqa: E402
from gateway.procstat import ProcessSampler  # noqa: E402

NUMBER = "+15550100000"


def long_media_scenario(seconds: float) -> Path:
    """uac_pcma_echo.xml playing `seconds` of G.711 instead of its 7 s pcap: SIPp plays a pcap once, so the
    pcap is looped (RTP sequence numbers, timestamps and capture times continued) into a temporary file."""
    src = (SCENARIO_DIR / "pcap" / "g711a.pcap").read_bytes()
    recs, off = [], 24
    while off < len(src):
        sec, usec, incl, _ = struct.unpack_from("<IIII", src, off)
        recs.append((sec + usec / 1e6, src[off + 16: off + 16 + incl]))
        off += 16 + incl
    rtp_at = 14 + 20 + 8                               # Ethernet + IPv4 + UDP headers in this capture
    samples = len(recs[0][1]) - rtp_at - 12            # G.711: one byte per sample (240 = 30 ms packets)
    span = recs[-1][0] - recs[0][0] + samples / 8000
    out = [src[:24]]
    for k in range(math.ceil(seconds / span)):
        for t, data in recs:
            pkt = bytearray(data)
            seq, ts = struct.unpack_from("!HI", pkt, rtp_at + 2)
            struct.pack_into("!HI", pkt, rtp_at + 2, (seq + k * len(recs)) & 0xFFFF,
                             (ts + k * len(recs) * samples) & 0xFFFFFFFF)
            if k:
                pkt[rtp_at + 1] &= 0x7F               # the marker bit only on the very first packet
            t += k * span
            out.append(struct.pack("<IIII", int(t), int(round((t - int(t)) * 1e6)) % 1_000_000, len(pkt),
                                   len(pkt)) + bytes(pkt))
    d = Path(tempfile.mkdtemp(prefix="sip-load-"))
    (d / "long.pcap").write_bytes(b"".join(out))
    xml = (SCENARIO_DIR / "uac_pcma_echo.xml").read_text().replace("pcap/g711a.pcap", str(d / "long.pcap"))
    (d / "uac_pcma_echo_long.xml").write_text(xml)
    return d / "uac_pcma_echo_long.xml"


def media_port() -> int:
    return free_port(socket.SOCK_DGRAM) & ~1


async def step(rate: float, calls: int, hold_ms: int, rtp: bool, concurrent: int,
               scenario_file: Path | None = None) -> dict:
    gw = await start_gateway(NUMBER)
    try:
        sampler = ProcessSampler(gw.proc.pid)
        sampler.start()
        before = await read_metrics(gw.http_url)
        scenario = (["-sf", str(scenario_file or SCENARIO_DIR / "uac_pcma_echo.xml")] if rtp
                    else ["-sn", "uac"])
        args = [*scenario, "-s", NUMBER[1:], "-r", str(rate), "-m", str(calls), "-l", str(concurrent),
                "-d", str(hold_ms), "-p", str(free_port(socket.SOCK_DGRAM)), "-mp", str(media_port()),
                "-timeout", f"{int(calls / rate + hold_ms / 1000 + 60)}s", "-timeout_error", "-aa"]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await run_sipp(gw.sip_target, args, deadline_s=calls / rate + hold_ms / 1000 + 90,
                                on_progress=lambda _s: sampler.sample())
        wall = loop.time() - t0
        sampler.sample()
        after = await read_metrics(gw.http_url)
    finally:
        gw.proc.terminate()
        await gw.proc.wait()
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    s = result.stats
    return {"rate": rate, "calls": calls, "ok": s.successful,
            "failed": s.failed + max(0, calls - s.successful - s.failed),
            "cps": s.call_rate, "p50": result.percentile(50), "p99": result.percentile(99),
            "cpu_pct": 100 * sampler.cpu_used / max(wall, 1e-6), "rss_mib": sampler.rss_peak / 2**20,
            "rtp_in": d.get("gateway_rtp_packets_received_total", 0),
            "rtp_out": d.get("gateway_rtp_packets_sent_total", 0),
            "rtp_lost": d.get("gateway_rtp_packets_lost_total", 0) + d.get("gateway_rtp_packets_late_total", 0),
            "late_ticks": d.get("gateway_rtp_clock_late_ticks_total", 0), "killed": result.killed}


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


async def cps(args: argparse.Namespace) -> None:
    sections = []
    for rtp, label in ((False, "signalling only (SIPp uac, 0 ms hold)"), (True, "with 1 s G.711 RTP calls")):
        rows, best = [], 0.0
        for rate in (float(r) for r in args.rates.split(",")):
            calls = int(rate * args.seconds)
            r = await step(rate, calls, 1000 if rtp else 0, rtp, concurrent=max(100, int(rate * 3)))
            rows.append([f"{rate:.0f}", calls, r["ok"], r["failed"], fmt(r["cps"]), fmt(r["p50"], ".0f"),
                         fmt(r["p99"], ".0f"), fmt(r["cpu_pct"], ".0f"), fmt(r["rss_mib"], ".0f")])
            print(label, rows[-1], flush=True)
            if r["failed"]:
                break
            best = max(best, r["cps"])
        sections.append(f"**{label}**: sustained {best:.0f} CPS with 0 failed calls.\n\n" + table(
            ["offered CPS", "calls", "ok", "failed", "achieved CPS", "INVITE→200 p50 (ms)", "p99 (ms)",
             "gateway CPU %", "peak RSS MiB"], rows))
    write_section("sip_cps", "SIP signalling: sustained calls per second", "\n\n".join(sections),
                  command="python bench/sip_load.py cps --rates " + args.rates)


async def rtp(args: argparse.Namespace) -> None:
    rows, best = [], 0
    scenario = long_media_scenario(args.hold + 2)
    for n in (int(c) for c in args.counts.split(",")):
        rate = max(10.0, n / 20)  # ramp up within ~20 s
        load = os.getloadavg()[0]   # how busy the (shared) machine was as the step started
        r = await step(rate, n, int(args.hold * 1000), True, concurrent=n, scenario_file=scenario)
        # inbound: packets the jitter buffers counted lost or late; outbound: packets the gateway should have
        # sent (one per 20 ms tick per answered call) but did not because its clock had to skip ticks
        expected_out = r["ok"] * args.hold * 50
        short_out = max(0.0, expected_out - r["rtp_out"])
        bad = 100 * (r["rtp_lost"] + short_out) / max(r["rtp_in"] + expected_out, 1)
        rows.append([n, r["ok"], r["failed"], int(r["rtp_in"]), int(r["rtp_out"]), int(expected_out),
                     f"{bad:.3f}", int(r["late_ticks"]), fmt(r["cpu_pct"], ".0f"), fmt(r["rss_mib"], ".0f"),
                     f"{load:.1f}"])
        print(rows[-1], flush=True)
        if r["failed"] or bad >= 0.1:
            break
        best = n
    write_section("sip_rtp", "SIP + RTP concurrency", (
        f"Largest number of simultaneous {args.hold:.0f}-second G.711 echo calls with < 0.1 % RTP lost or late "
        f"(inbound, counted by the gateway's jitter buffers) or left unsent (outbound: due = 50 packets/s per call, "
        f"short when the shared clock had to skip ticks) and 0 failed calls: **{best}**. Counters from `/metrics`; "
        "SIPp plays G.711 A-law for the whole call into every call (g711a.pcap looped, 30 ms "
        "packets) and runs on the other core.\n\n" + table(
            ["calls", "ok", "failed", "RTP in", "RTP out", "RTP out due", "lost/late/unsent %",
             "clock late ticks", "gateway CPU %", "peak RSS MiB", "load avg"], rows)
        + "\n\nThe load average (1 minute, at the start of each step) shows how busy this shared machine was: other "
          "processes take cores from the gateway, SIPp and the clock."),
        command=f"python bench/sip_load.py rtp --counts {args.counts} --hold {args.hold}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("cps")
    c.add_argument("--rates", default="50,100,200,300,400,500")
    c.add_argument("--seconds", type=float, default=10)
    r = sub.add_parser("rtp")
    r.add_argument("--counts", default="100,250,500,750,1000")
    r.add_argument("--hold", type=float, default=60)
    args = ap.parse_args()
    run_async(cps(args) if args.kind == "cps" else rtp(args))  # uvloop when installed, as `gateway serve`


if __name__ == "__main__":
    main()
