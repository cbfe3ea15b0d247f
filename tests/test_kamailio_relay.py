"""deploy/kamailio/kamailio.cfg relays the workers' answers in the order they were sent, with several Kamailio
processes, and has shared memory for a few hundred calls per second.

tm picks the reply to relay under the transaction's lock but sends it after releasing the lock, so when several
processes read the workers' answers a 180 read by one can leave after the 200 read by another 1 ms later (SIPp's
strict uac fails such a call; measured 6 of 600 calls at 100 CPS with 8 processes before the fix). The config
sends requests to the workers from WORKERS_LISTEN, read by one process: every answer comes back there. Here a
SIPp uas stands in for a worker (its built-in scenario sends 180 and 200 back to back) behind a real Kamailio
with 8 UDP processes, and a SIPp uac places the calls.
"""
from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

from procs import KamailioProc, needs_kamailio
from sipp import needs_sipp, sipp_uac, sipp_uas

pytestmark = [needs_sipp, needs_kamailio]
CALLS = 300


def builtin(name: str, tmp_path) -> str:
    """SIPp's built-in scenario `name` as a file (the helpers take scenario files). The uas ends a call as soon as
    it has answered the BYE: the uac sends ACK and BYE back to back and Kamailio's processes reading them may
    relay the BYE first (UDP never promised their order; the gateway copes), and a late ACK must then reach a
    finished call, which SIPp ignores, rather than the built-in 4 s time-wait, which SIPp fails."""
    path = tmp_path / f"{name}.xml"
    xml = subprocess.run(["sipp", "-sd", name], capture_output=True, text=True, timeout=10).stdout
    path.write_text(xml.replace('<timewait milliseconds="4000"/>', ""))
    return str(path)


async def test_worker_answers_come_back_to_one_socket_and_keep_their_order(tmp_path):
    uas_dir = tmp_path / "uas"
    uas_dir.mkdir()
    async with sipp_uas(builtin("uas", tmp_path), calls=CALLS, timeout_s=60, extra=["-trace_msg"],
                        workdir=str(uas_dir)) as uas:
        ds = tmp_path / "dispatcher.list"
        ds.write_text(f"1 sip:127.0.0.1:{uas.port} 0 0\n")
        # no OPTIONS probes while it runs: SIPp's uas would count each as one of its CALLS calls
        kam = await KamailioProc.start(tmp_path, dispatcher_list=ds, children=8, ping_interval=3600)
        try:
            await kam.wait_flags(lambda f: f and all(v.startswith("A") for v in f.values()),
                                 what="the uas active in Kamailio")
            uac = await sipp_uac(builtin("uac", tmp_path), kam.port, calls=CALLS, rate=150, service="15550001111",
                                 duration_ms=0, timeout_s=60)
            # tm holds each transaction ~5 s after its final answer, ~17 KB each, 2 per call: Kamailio's default
            # 64 MB ran out at 400 calls/s (every new call answered 500); the config asks for 256 MB
            shm = subprocess.run(["kamcmd", "-s", f"unix:{kam.run_dir}/kamailio_ctl", "core.shmmem"],
                                 capture_output=True, text=True, timeout=10).stdout
        finally:
            kam.close()
    uac.assert_calls(successful=CALLS)
    uas.result.assert_calls(successful=CALLS)
    # every INVITE reached the "worker" from WORKERS_LISTEN (its top Via), so its answers went back there
    trace = "".join(Path(p).read_text(errors="replace") for p in glob.glob(str(uas_dir / "*_messages.log")))
    invites = re.findall(r"^INVITE .*?\r?\n(?:.*?\r?\n)*?Via: SIP/2\.0/UDP ([^;\s]+)", trace, re.M)
    assert len(invites) == CALLS, trace[:2000]
    assert set(invites) == {f"127.0.0.1:{kam.workers_port}"}
    # the 256 MB pool less what the memory manager (TLSF, gateway.kamailio.MEMORY_MANAGERS) keeps for its header
    assert int(re.search(r"total: (\d+)", shm).group(1)) >= 256 * 2 ** 20 - 4096, shm

