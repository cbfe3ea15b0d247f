"""Number health on real sockets: the SIP trunk's OPTIONS probe (SIPp answering, or nothing listening), the
answer-seizure ratio and failure reasons from real outbound calls SIPp refused, shown in the number list, the
health endpoint and /metrics, and checked periodically by one process."""
import pytest

from gateway.health import judge
from sipp import api, free_port, metric_value, metrics_text, needs_sipp, sip_gateway, sip_number, sipp_uas, wait_for
from test_dispatch_queue import request

pytestmark = [needs_sipp, pytest.mark.timeout(120)]


def calls(attempts: int = 0, answered: int = 0, failures: list | None = None) -> dict:
    return {"attempts": attempts, "answered": answered, "top_failures": failures or []}


def test_judge_scores_each_finding_and_says_why():
    ok = {"reachable": True, "rtt_ms": 3.0, "sip_status": "SIP/2.0 200 OK", "registration": None, "detail": ""}
    assert judge(ok, calls()) == (100, "healthy", [])
    assert judge(None, calls()) == (100, "unknown", ["no probe for this carrier and no calls in the window"])
    score, status, why = judge({**ok, "registration": "failed", "rtt_ms": 250.0}, calls())
    assert (score, status) == (55, "degraded") and why == ["OPTIONS round trip 250 ms (> 200 ms)",
                                                           "registration failed"]
    score, status, why = judge(None, calls(10, 1, [{"status": "failed", "reason": "503 Service Unavailable",
                                                     "count": 9}]))
    assert (score, status) == (50, "degraded") and "10 calls" in why[0] and "9 of 10" in why[1]
    assert judge({**ok, "reachable": False, "detail": "timed out"}, calls(4, 0))[:2] == (40, "unhealthy")


async def test_probe_asr_and_failure_reasons_in_the_api_and_metrics(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_busy.xml", calls=5, timeout_s=30) as busy:
        num = await sip_number(gw, sip_port=busy.port)
        for i in range(5):
            await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                      "to_number": f"+1555987650{i}"}, expect=200)

        async def ended():
            rows, _ = await gw.store.list_calls(1, 10)
            return len(rows) == 5 and all(r["ended_at"] for r in rows)
        await wait_for(ended, 20, what="the five refused calls ended")
    busy.result.assert_calls(successful=5)
    async with sipp_uas("uas_trunk_probe.xml", calls=1, timeout_s=15) as trunk:
        await api(gw, "PATCH", f"/phone_number/{num['id']}", {"sip_port": trunk.port}, expect=200)
        status, got, _ = await request(gw, "POST", f"/phone_number/{num['id']}/health")
    trunk.result.assert_calls(successful=1)          # one OPTIONS, answered 200
    assert status == 200, got
    h = got["health"]
    assert h["probe"]["reachable"] is True and h["probe"]["sip_status"] == "SIP/2.0 200 OK"
    assert h["probe"]["rtt_ms"] is not None and h["attempts"] == 5 and h["asr"] == 0
    assert h["top_failures"] == [{"status": "busy", "reason": "486 Busy Here", "count": 5}]
    assert (got["health_score"], got["health_status"]) == (70, "degraded")
    assert got["health_score_updated_at"]
    listed = (await api(gw, "GET", "/phone_number/list"))["phone_numbers"][0]
    assert (listed["health_score"], listed["health_status"]) == (70, "degraded")
    assert listed["health"]["reasons"] == ["answer-seizure ratio 0% (< 20 %) over 5 calls"]
    text = await metrics_text(gw)
    labels = {"number_id": str(num["id"]), "phone_number": num["phone_number"]}
    assert metric_value(text, "gateway_number_health_score", **labels) == 70
    assert metric_value(text, "gateway_number_reachable", **labels) == 1
    assert metric_value(text, "gateway_number_asr", **labels) == 0
    # nothing listens any more: unreachable
    await api(gw, "PATCH", f"/phone_number/{num['id']}", {"sip_port": free_port()}, expect=200)
    status, got, _ = await request(gw, "POST", f"/phone_number/{num['id']}/health")
    assert got["health"]["probe"]["reachable"] is False
    assert (got["health_score"], got["health_status"]) == (10, "unhealthy")
    assert got["health"]["reasons"][0].startswith("trunk unreachable")


async def test_periodic_checks_by_one_process(make_gateway):
    gw = await sip_gateway(make_gateway, health_interval=1.0)
    async with sipp_uas("uas_trunk_probe.xml", calls=2, timeout_s=20) as trunk:
        num = await sip_number(gw, sip_port=trunk.port, agent=False)

        async def probed():
            record = gw.health.latest.get(num["id"])
            return record if record and (record["data"]["probe"] or {}).get("reachable") else None
        record = await wait_for(probed, 10, what="a periodic health record")
    trunk.result.assert_calls(successful=2)          # two rounds, two OPTIONS
    assert record["health_status"] == "healthy" and record["data"]["checked_by"] == gw.settings.proc_id
    # a record younger than most of the interval is not probed again (another process just did it)
    assert await gw.store.health_fresh(num["id"], 60)
