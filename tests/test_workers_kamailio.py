"""`gateway serve --workers 2` behind a real Kamailio running deploy/kamailio/kamailio.cfg, with SIPp as the trunk
(docs/deploy.md): both workers take calls, a worker killed with -9 mid-call costs no new call (Kamailio fails
over and stops choosing it; the supervisor starts it again as the same process id), and SIGTERM to the
supervisor drains every worker and exits 0.

Real processes on 127.0.0.1 and a real PostgreSQL (GATEWAY_TEST_POSTGRES_URL; skipped without it).
"""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from baresip import Baresip, needs_baresip
from procs import (
    NODE,
    PG_URL,
    GatewayProc,
    KamailioProc,
    contact_ports,
    fresh_postgres,
    needs_kamailio,
    needs_kamailio_tls,
    until,
)
from sipp import needs_sipp, sipp_uac
from test_sip_calls_tls_srtp import pem
from tls_certs import TestCa

pytestmark = [needs_sipp, needs_kamailio]
NUMBER = "15550001111"


async def _node(tmp_path, made: list, *extra: str, allowed_ips: tuple[str, ...] = ("127.0.0.1",),
                kamailio_tls: tuple[str, str] | None = None) -> tuple[GatewayProc, KamailioProc]:
    """The node and Kamailio, each put in `made` as soon as it runs, so a start-up that fails half-way is still
    stopped (a node whose workers never answered was left running after the test)."""
    pg = await fresh_postgres()
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg, *extra)
    made.append(gw)
    await gw.wait_procs({f"{NODE}.1", f"{NODE}.2"})
    num = (await gw.api("POST", "/phone_number/import/sip", {
        "phone_number": "+" + NUMBER, "sip_host": "127.0.0.1", "sip_trunk_name": "kamailio-trunk",
        "auth_type": "ip", "allowed_ips": list(allowed_ips)}, expect=201))["phone_number"]
    agent = (await gw.api("POST", "/agents", {"name": "echo", "engine": "echo"}, expect=201))["agent"]
    await gw.api("POST", "/phone_number/attach", {"phone_number_id": num["id"], "agent_id": agent["id"]}, expect=200)
    kam = await KamailioProc.start(tmp_path, dispatcher_list=gw.data_dir / "dispatcher.list", tls=kamailio_tls)
    made.append(kam)
    await kam.wait_flags(lambda f: len(f) == 2 and all(v.startswith("A") for v in f.values()),
                         what="both workers active in Kamailio")
    return gw, kam


def _worker_ports(gw: GatewayProc) -> dict[int, int]:
    return {gw.sip_port + 1: 1, gw.sip_port + 2: 2}


@pytest.fixture
async def node(tmp_path):
    made: list = []

    async def make(*extra: str, **kw):
        return await _node(tmp_path, made, *extra, **kw)

    yield make
    for p in made:
        if isinstance(p, GatewayProc):
            await p.close()
        else:
            p.close()


async def test_two_workers_behind_kamailio_both_take_calls(node, tmp_path):
    gw, kam = await node()
    # Call-ID hashing spreads calls over both workers; Kamailio also sets a worker aside for a while when three
    # OPTIONS probes in a row go unanswered for 5 s (a badly starved worker on a busy box), so calls come in batches
    # until each worker has taken some, every one of them answered
    by_worker = {1: 0, 2: 0}
    for batch in range(5):
        work = tmp_path / f"sipp-{batch}"
        work.mkdir()
        res = await sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, calls=12, rate=12, duration_ms=1000,
                             timeout_s=40, extra=["-trace_msg"], workdir=str(work))
        res.assert_calls(successful=12)
        ports = contact_ports(work)
        assert len(ports) == 12, ports
        for port, w in _worker_ports(gw).items():
            by_worker[w] += ports.count(port)
        assert sum(by_worker.values()) == 12 * (batch + 1), (ports, by_worker)     # only the two workers answer
        if all(by_worker.values()):
            break
    assert by_worker[1] > 0 and by_worker[2] > 0, (by_worker, kam.flags())

    gw.signal(signal.SIGTERM)                                   # the supervisor drains both workers, then exits
    assert await gw.wait_exit(30) == 0, gw.output()
    assert not gw.worker_pids()


async def test_ip_trunk_behind_kamailio_is_known_by_its_own_address_forged_ones_are_not(node, tmp_path):
    """The trunk (127.0.0.2, the only allowed address) calls through Kamailio (127.0.0.1): the workers trust
    Kamailio (--trusted-proxy) to name the real sender in X-Gateway-Source. Another peer (127.0.0.3) writing that
    header itself gets 403, through Kamailio (which replaces it) and straight to a worker (which ignores it)."""
    gw, kam = await node("--trusted-proxy", "127.0.0.1", allowed_ips=("127.0.0.2",))
    trunk = await sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, duration_ms=500, timeout_s=30,
                           extra=["-i", "127.0.0.2"])
    trunk.assert_calls(successful=1)
    forged = ["-i", "127.0.0.3", "-key", "source", "127.0.0.2:5060"]
    for port in (kam.port, gw.sip_port + 1):
        refused = await sipp_uac("uac_forged_source.xml", port, service=NUMBER, timeout_s=20, extra=forged)
        refused.assert_calls(successful=1)             # the scenario succeeds on exactly 403
    rows = await until(_all_ended, 15, "the trunk's call logged as ended")
    assert [r["call_status"] for r in rows] == ["completed"], rows         # only the trunk's call was taken


@needs_baresip
@needs_kamailio_tls
async def test_tls_trunk_through_kamailio_reaches_a_worker(node, tmp_path):
    """Kamailio ends SIP over TLS (kamailio-tls-modules) and dispatches to the workers over UDP: baresip calls
    Kamailio's TLS port, a worker answers (the trunk known by its own address, X-Gateway-Source), baresip hears
    its tone echoed, and the API hangup's BYE goes back through Kamailio over TLS."""
    ca = TestCa(tmp_path)
    proxy_cert = ca.issue("localhost", "127.0.0.1")
    gw, kam = await node("--trusted-proxy", "127.0.0.1", kamailio_tls=(proxy_cert.cert_path, proxy_cert.key_path))
    uri = f"sip:{NUMBER}@127.0.0.1:{kam.tls_port};transport=tls"
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("localhost", "127.0.0.1")), ca_file=ca.cert_path,
                       mediaenc="", dial=uri) as bs:
        live = await until(_live_call(gw), 20, f"a worker to answer baresip's call\n{bs.log()}")
        await until(lambda: bs.heard_tone(1.0), 20, "baresip hearing its tone echoed by the worker")
        await gw.api("POST", f"/calls/{live['call_id']}/hangup", expect=200)
        await until(lambda: b"BYE" in bs.output or b"terminated" in bs.output, 15,
                    f"baresip to get the BYE through Kamailio\n{bs.log()}")
    rows = await until(_all_ended, 15, "the call logged as ended")
    assert [(r["call_status"], r["hangup_reason"]) for r in rows] == [("completed", "api_hangup")]


def _live_call(gw: GatewayProc):
    async def check() -> dict | None:
        calls = (await gw.api("GET", "/calls/live"))["calls"]
        return next((c for c in calls if c["status"] == "in-progress"), None)
    return check


async def _all_ended() -> list[dict] | None:
    rows = await _calls()
    return rows if rows and all(r["ended_at"] for r in rows) else None


async def _calls() -> list[dict]:
    from gateway.store import Store
    store = Store(PG_URL)
    await store.open()
    try:
        rows, _ = await store.list_calls(1, 100)
    finally:
        await store.close()
    return rows


async def test_worker_killed_mid_call_new_calls_go_to_the_survivor(node, tmp_path):
    gw, kam = await node()
    live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, duration_ms=8000,
                                        timeout_s=30))
    busy = await until(_busy_worker(gw), 20, "a worker with the live call")
    pids = gw.worker_pids()
    victim = int(busy.rsplit(".", 1)[1])
    victim_uri, survivor_port = f"sip:127.0.0.1:{gw.sip_port + victim}", gw.sip_port + 3 - victim
    # hold the supervisor still (SIGSTOP) so the outage lasts until we have looked at it; SIGCONT lets it restart
    gw.signal(signal.SIGSTOP)
    try:
        os.kill(pids[victim], signal.SIGKILL)
        await kam.wait_flags(lambda f: f[victim_uri][0] in "IT", timeout=15, what="Kamailio marks the dead worker")
        work = tmp_path / "sipp-b"
        work.mkdir()
        res = await sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, calls=6, rate=6, duration_ms=500,
                             timeout_s=40, extra=["-trace_msg"], workdir=str(work))
        res.assert_calls(successful=6)
        assert contact_ports(work) == [survivor_port] * 6
    finally:
        gw.signal(signal.SIGCONT)
    # the supervisor starts the dead worker again, as the same process id, and Kamailio takes it back
    await until(lambda: gw.worker_pids().get(victim) not in (None, pids[victim]), 30, "worker restarted")
    await gw.wait_procs({f"{NODE}.{victim}"})
    await kam.wait_flags(lambda f: f[victim_uri].startswith("A"), timeout=30, what="restarted worker active again")
    # and, being the same process id, it closed the call it held when it was killed (docs/deploy.md, orphans)
    rows = await until(_closed_by_restart, 30, "the killed worker's call closed as gateway_restart")
    assert [(r["hangup_source"], r["ended_at"] is not None) for r in rows] == [("system", True)]
    ended = await live                      # its worker died under it: SIPp's BYE fails, but SIPp ends
    assert not ended.result.killed and ended.result.stats.created == 1


def _udp_queue(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to `port` (/proc/net/udp), 0 when none."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            return int(f[4].split(":")[1], 16)
    return 0


async def test_workers_late_on_probes_keep_their_calls_coming(node, tmp_path):
    """An overloaded worker answers Kamailio's OPTIONS late but is alive: late answers must not take it out of the
    set, or an overload of every worker becomes Kamailio refusing every call itself (503). Both workers stall
    (SIGSTOP) while three probes each go unanswered, far past the INVITE's FR_TIMER (1 s here) and the old
    one-failure threshold; neither is marked inactive, and once they run again every call is answered."""
    gw, kam = await node()
    pids = gw.worker_pids()
    ports = {k: gw.sip_port + k for k in pids}
    uris = {k: f"sip:127.0.0.1:{port}" for k, port in ports.items()}
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        # the first probe queued in a stopped worker's socket tells one probe's size; wait for three
        one = {k: await until(lambda k=k: _udp_queue(ports[k]), 10, f"a probe queued at worker {k}", interval=0.02)
               for k in pids}

        inactive: list[dict[str, str]] = []

        def stalled_long_enough() -> bool:
            flags = kam.flags()
            if any(flags.get(uris[k], "A").startswith("I") for k in pids):
                inactive.append(flags)
            return all(_udp_queue(ports[k]) >= 3 * one[k] for k in pids)

        await until(stalled_long_enough, 20, "three probes unanswered at each worker", interval=0.1)
        assert not inactive, inactive[0]          # late, not dead: never set aside
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)
    work = tmp_path / "sipp-late"
    work.mkdir()
    res = await sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, calls=8, rate=8, duration_ms=300,
                         timeout_s=40, extra=["-trace_msg"], workdir=str(work))
    res.assert_calls(successful=8)          # no 503 from Kamailio: both workers stayed in the set
    assert not any(f.startswith("I") for f in kam.flags().values()), kam.flags()


async def _closed_by_restart() -> list[dict]:
    return [r for r in await _calls() if r["hangup_reason"] == "gateway_restart"]


def _busy_worker(gw: GatewayProc):
    async def check():
        h = await gw.health()
        return h and h[1].get("active_calls") == 1 and h[1]["proc"]
    return check


async def test_draining_worker_keeps_its_call_and_kamailio_moves_new_calls(node, tmp_path):
    gw, kam = await node("--drain-timeout", "60")
    live = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, duration_ms=6000,
                                        timeout_s=30))
    busy = await until(_busy_worker(gw), 20, "a worker with the live call")
    k = int(busy.rsplit(".", 1)[1])
    pids = gw.worker_pids()
    uri, other_port = f"sip:127.0.0.1:{gw.sip_port + k}", gw.sip_port + 3 - k
    os.kill(pids[k], signal.SIGTERM)          # what the supervisor forwards on a node drain, here to one worker
    # it answers OPTIONS 503 now: Kamailio stops choosing it while its call goes on
    await kam.wait_flags(lambda f: f[uri][0] in "IT", timeout=15, what="Kamailio marks the draining worker")
    work = tmp_path / "sipp-c"
    work.mkdir()
    res = await sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, calls=4, rate=4, duration_ms=300,
                         timeout_s=30, extra=["-trace_msg"], workdir=str(work))
    res.assert_calls(successful=4)
    assert contact_ports(work) == [other_port] * 4
    assert not live.done()
    (await live).assert_calls(successful=1)   # the drained worker's call ended normally (SIPp's BYE answered)
    # exit 0 = drained alone: a fresh worker k takes its SIP port and Kamailio's probes find it active again
    await until(lambda: gw.worker_pids().get(k) not in (None, pids[k]), 60, f"a fresh worker {k}\n{gw.output()}")
    await kam.wait_flags(lambda f: f[uri][0] == "A", timeout=120, what="Kamailio takes the fresh worker back")
    assert gw.proc.poll() is None and f"worker {k} drained and exited; starting a fresh one" in gw.output()
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit(30) == 0, gw.output()


def _answered_dialogs(workdir) -> list[tuple[str, str, str, int]]:
    """(Call-ID, gateway's To tag, caller's From tag, worker SIP port) of every 200 OK to an INVITE SIPp logged."""
    import re
    out = []
    for log in workdir.glob("*_messages.log"):
        for block in log.read_text(errors="replace").split("\n\n"):
            if "SIP/2.0 200" in block and "INVITE" in block:
                cid = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
                to = re.search(r"^To:.*;tag=([^;\s]+)", block, re.M | re.I)
                fr = re.search(r"^From:.*;tag=([^;\s]+)", block, re.M | re.I)
                port = re.search(r"^Contact:.*?:(\d+)[;>]", block, re.M | re.I)
                if cid and to and fr and port:
                    out.append((cid.group(1), to.group(1), fr.group(1), int(port.group(1))))
    return out


async def test_invite_with_replaces_reaches_the_worker_holding_the_dialog(node, tmp_path):
    """Kamailio hashes an INVITE with Replaces by the Call-ID it names (RFC 3891): it reaches the worker that holds
    that dialog, whichever worker its own Call-ID would hash to."""
    gw, kam = await node()
    calls, dialogs = [], []
    for batch in range(8):          # calls two at a time until both workers hold some (the hash decides)
        work = tmp_path / f"sipp-calls-{batch}"
        work.mkdir()
        calls.append(asyncio.create_task(sipp_uac("uac_gateway_hangs_up.xml", kam.port, service=NUMBER, calls=2,
                                                  rate=20, timeout_s=60, extra=["-trace_msg"], workdir=str(work))))
        dialogs += await until(lambda w=work: (d := _answered_dialogs(w)) and len(d) == 2 and d, 45,
                               "2 answered calls")
        if {port for *_, port in dialogs} == set(_worker_ports(gw)):
            break
    assert {port for *_, port in dialogs} == set(_worker_ports(gw)), dialogs     # both workers hold calls
    for call_id, to_tag, from_tag, _ in dialogs:
        res = await sipp_uac("uac_replaces.xml", kam.port, service=NUMBER, duration_ms=500, timeout_s=20,
                             extra=["-key", "replaces", f"{call_id};to-tag={to_tag};from-tag={from_tag}"])
        res.assert_calls(successful=1)          # 200 from the owning worker (another one would answer 481)
    for task in calls:
        (await task).assert_calls(successful=2)  # every replaced dialog got its BYE


def _live_on_both(gw: GatewayProc):
    async def check():
        live = (await gw.api("GET", "/calls/live", expect=200))["calls"]
        owners = {c["owner"] for c in live}
        return owners if owners == {f"{NODE}.1", f"{NODE}.2"} else None
    return check


async def test_rolling_restart_of_a_worker_under_load_loses_no_call(node, tmp_path):
    """issue 12 item 3: SIPp keeps calls coming through Kamailio (5 a second, 3 s each) while one worker, holding
    live calls, is drained with SIGTERM. Every call completes: the drained worker's own calls run to their BYE,
    INVITEs it refuses (503) go to the other worker, and every call's row is closed, none `in-progress`."""
    gw, kam = await node("--drain-timeout", "60")
    calls = 40
    load = asyncio.create_task(sipp_uac("uac_pcma_echo.xml", kam.port, service=NUMBER, calls=calls, rate=5,
                                        duration_ms=3000, timeout_s=150))
    await until(_live_on_both(gw), 60, "calls live on both workers")
    pids = gw.worker_pids()
    os.kill(pids[1], signal.SIGTERM)          # the rolling restart's step on worker 1
    res = await load
    res.assert_calls(successful=calls, failed=0)
    await until(lambda: gw.worker_pids().get(1) not in (None, pids[1]), 60,
                "the drained worker exits (and a fresh one takes its place)")
    body = await gw.api("GET", f"/calls/logs?pagesize={calls + 10}", expect=200)
    rows = body["call_log_data"]
    assert body["total"] == calls, [(r["call_status"], r["hangup_reason"]) for r in rows]
    assert {(r["call_status"], r["hangup_source"]) for r in rows} == {("completed", "user")}, [
        (r["owner"], r["call_status"], r["hangup_source"], r["hangup_reason"]) for r in rows]
    assert all(r["ended_at"] for r in rows)
    assert {r["owner"] for r in rows} == {f"{NODE}.1", f"{NODE}.2"}    # the drained worker had calls of its own
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit(60) == 0, gw.output()
