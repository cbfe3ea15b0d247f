"""A bulk call survives a restart of the gateway process: `gateway serve` is stopped (SIGTERM) in the middle of a
bulk call with retries and started again on the same database; the new process goes on where the old one
stopped, and SIPp (the callee, answering every INVITE 486) receives exactly two INVITEs per contact — nothing
lost, nothing doubled — each attempt one call-log row with its bulk call and attempt number."""
from __future__ import annotations

import pytest

from procs import GatewayProc, until
from sipp import needs_sipp, sipp_uas

pytestmark = [needs_sipp, pytest.mark.timeout(180)]

CONTACTS = 12


async def progress(gw: GatewayProc, bulk_id: int) -> dict | None:
    try:
        return (await gw.api("GET", f"/calls/bulk_call/{bulk_id}"))["details"]
    except Exception:       # the process is stopping or starting
        return None


async def test_bulk_call_goes_on_after_the_gateway_process_restarts(tmp_path):
    db = str(tmp_path / "gw.db")
    gw = await GatewayProc.start(tmp_path, "--db", db)
    second: GatewayProc | None = None
    try:
        await gw.wait_procs({"t"})
        async with sipp_uas("uas_busy.xml", calls=2 * CONTACTS, timeout_s=120) as uas:
            num = (await gw.api("POST", "/phone_number/import/sip", {
                "phone_number": "+15550001111", "sip_host": "127.0.0.1", "sip_port": uas.port,
                "sip_trunk_name": "restart", "auth_type": "ip", "allowed_ips": ["127.0.0.1"], "max_cps": 4},
                expect=201))["phone_number"]
            agent = await gw.api("POST", "/agents", {"name": "restart", "engine": "echo"})
            agent_id = (agent.get("agent") or agent)["id"]
            created = await gw.api("POST", "/calls/bulk_call/create", {
                "name": "across a restart", "phone_number_id": num["id"], "agent_id": agent_id,
                "contact_list": [{"phone_number": f"+155598765{i:02d}", "n": i} for i in range(CONTACTS)],
                "retry": {"max_attempts": 2, "delay_seconds": 0.5, "on": ["busy"]}}, expect=201)
            bulk_id = created["bulk_call_id"]

            async def under_way():
                d = await progress(gw, bulk_id)
                return d if d and d["counts"]["retrying"] + d["counts"]["failed"] >= 3 else None
            mid = await until(under_way, 60, "a few contacts called once")
            assert mid["status"] == "in_progress"
            gw.signal()                                      # SIGTERM: drain, give back what is claimed, exit
            assert await gw.wait_exit(60) == 0, gw.output()
            second = await GatewayProc.start(tmp_path, "--db", db)
            await second.wait_procs({"t"})

            async def finished():
                d = await progress(second, bulk_id)
                return d if d and d["status"] == "completed" else None
            details = await until(finished, 90, "the bulk call completed by the new process")
        uas.result.assert_calls(successful=2 * CONTACTS)    # two INVITEs per contact reached SIPp, no more
        assert details["counts"]["failed"] == CONTACTS and details["outcomes"] == {"busy": CONTACTS}, details
        logs = await second.api("GET", f"/calls/logs?bulk_call_id={bulk_id}&pagesize=150")
        rows = logs["call_log_data"]
        assert sorted((r["to_number"], r["attempt"]) for r in rows) == sorted(
            (f"+155598765{i:02d}", k) for i in range(CONTACTS) for k in (1, 2))
        assert all(r["call_status"] == "busy" and r["bulk_call_id"] == bulk_id for r in rows)
    finally:
        await gw.close()
        if second is not None:
            await second.close()
