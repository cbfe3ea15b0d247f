"""What Kamailio (deploy/kamailio/kamailio.cfg) costs per call, alone: SIPp uac → Kamailio → SIPp uas.

In the scale-out benchmarks (bench/scale.py) Kamailio shares the two cores with the gateway's workers, so its CPU
per call is part of "o" in BENCHMARKS.md's bound 2·w₁/(w₂ + o). There it is measured beside the gateway; here the
gateway is replaced by SIPp's built-in `uas` (C, answers at once; `-aa` answers the dispatcher's OPTIONS probes
200), so the figure is Kamailio's own, and variants of its command line can be compared in the same minutes.

A call is what bench/scale.py's CPS step sends: SIPp's built-in `uac` (INVITE, 100/180/200, ACK, BYE, 200; `-d 0`),
which ignores Record-Route, so its ACK and BYE reach Kamailio without a Route and are dispatched by the Call-ID
hash. Kamailio therefore reads 7 and sends 7 datagrams per call (its own 100 Trying to the caller, the uas's
180/200 relayed, ACK, BYE and its 200). CPU: every process of Kamailio's session, from /proc, over the run.

    python bench/kamailio_cost.py --rate 300 --seconds 5 --rounds 3            # deployed command line vs q_malloc
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._cpu import session_pids  # noqa: E402
from gateway.kamailio import MEMORY_MANAGERS  # noqa: E402
from gateway.loadtest.command import free_port  # noqa: E402
from gateway.loadtest.sipp import read_stat_file  # noqa: E402
from gateway.procstat import cpu_seconds  # noqa: E402

KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
#: command-line variants: the deployed one, and Kamailio's build default memory manager (q_malloc with debugging)
VARIANTS: dict[str, list[str]] = {"deployed (tlsf)": MEMORY_MANAGERS, "q_malloc (build default)": []}


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def one_run(rate: int, seconds: float, extra: list[str]) -> dict:
    """Kamailio with `extra` on its command line in front of a SIPp uas; SIPp uac at `rate` calls/s for `seconds`.
    Returns calls ok/failed and CPU ms per call of Kamailio and of the uas."""
    tmp = Path(tempfile.mkdtemp(prefix="kamailio-cost-"))
    uas_port, kam_port, workers_port = (free_port(socket.SOCK_DGRAM) for _ in range(3))
    (tmp / "dispatcher.list").write_text(f"1 sip:127.0.0.1:{uas_port} 0 0 duid=uas\n")
    (tmp / "run").mkdir()
    procs: list[subprocess.Popen] = []
    try:
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-aa", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp, start_new_session=True)
        procs.append(uas)
        with open(tmp / "kamailio.log", "w") as log:
            kam = subprocess.Popen(
                ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(tmp / "run"), *extra,
                 "-A", f"LISTEN=udp:127.0.0.1:{kam_port}", "-A", f'DS_LIST="{tmp / "dispatcher.list"}"',
                 "-A", "DS_PING_INTERVAL=2", "-A", f"WORKERS_LISTEN=udp:127.0.0.1:{workers_port}"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        procs.append(kam)
        end = time.monotonic() + 20
        while not (tmp / "run" / "kamailio_ctl").exists():
            if kam.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"kamailio did not start:\n{(tmp / 'kamailio.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(2.5)                          # the first probe answered: the uas is an active destination
        pids = session_pids(kam.pid)
        k0, u0 = _cpu(pids), _cpu([uas.pid])
        calls = int(rate * seconds)
        subprocess.run(["sipp", f"127.0.0.1:{kam_port}", "-sn", "uac", "-i", "127.0.0.1",
                        "-p", str(free_port(socket.SOCK_DGRAM)), "-r", str(rate), "-m", str(calls), "-d", "0",
                        "-nostdin", "-timeout", f"{int(seconds + 30)}s", "-timeout_error",
                        "-trace_stat", "-stf", str(tmp / "stat.csv")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp, timeout=seconds + 60)
        k1, u1 = _cpu(pids), _cpu([uas.pid])
        stats = read_stat_file(str(tmp / "stat.csv"))
        ok = stats.successful if stats else 0
        return {"calls": calls, "ok": ok, "failed": calls - ok, "kamailio_ms": 1000 * (k1 - k0) / max(ok, 1),
                "uas_ms": 1000 * (u1 - u0) / max(ok, 1), "load": os.getloadavg()[0]}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3, help="variants alternated, this many times each")
    args = p.parse_args()
    print("| variant | calls ok / failed | Kamailio CPU ms per call | SIPp uas CPU ms per call | load avg |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for name, extra in VARIANTS.items():
            r = one_run(args.rate, args.seconds, extra)
            print(f"| {name} | {r['ok']} / {r['failed']} | {r['kamailio_ms']:.3f} | {r['uas_ms']:.3f} | "
                  f"{r['load']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
