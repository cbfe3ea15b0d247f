"""Trunks named by DNS SRV (RFC 3263) end to end: a real dnsmasq publishes two SRV targets that are SIPp UAS
instances; the first says 503 or does not answer, and the INVITE (or test connection's OPTIONS) goes on to the
second."""
import pytest

from dns_server import Dnsmasq, needs_dnsmasq
from sipp import api, free_port, needs_sipp, sip_gateway, sip_number, sipp_uas
from test_sip_calls_outbound import dispatch, final_row, live

pytestmark = [needs_sipp, needs_dnsmasq, pytest.mark.timeout(90)]


def srv(first_port: int, second_port: int) -> list[str]:
    """trunk.test: uas1 (priority 10) then uas2 (priority 20), both on 127.0.0.1."""
    return [f"--srv-host=_sip._udp.trunk.test,uas1.trunk.test,{first_port},10,0",
            f"--srv-host=_sip._udp.trunk.test,uas2.trunk.test,{second_port},20,0",
            "--host-record=uas1.trunk.test,127.0.0.1", "--host-record=uas2.trunk.test,127.0.0.1"]


async def test_invite_fails_over_from_503_to_the_next_srv_target(make_gateway):
    async with sipp_uas("uas_503.xml", timeout_s=20) as busy, sipp_uas("uas_answer.xml", timeout_s=20) as good:
        async with Dnsmasq(srv(busy.port, good.port)) as dns:
            gw = await sip_gateway(make_gateway, dns_server=dns.server)
            num = await sip_number(gw, sip_host="trunk.test")          # no sip_port: located through SRV
            d = await dispatch(gw, num)
            call = await live(gw, d["call_id"])
            await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
            row = await final_row(gw, d["requestId"])
    busy.result.assert_calls(successful=1)    # got the INVITE, said 503, got the ACK
    good.result.assert_calls(successful=1)    # got the same INVITE next, answered, got our BYE
    assert row["call_status"] == "completed"
    assert row["extra"]["sip_request_uri"] == "sip:+15559876543@trunk.test"   # the domain, not the target


async def test_invite_fails_over_when_the_first_target_does_not_answer(make_gateway):
    silent = free_port()   # nothing listens there
    async with sipp_uas("uas_busy.xml", timeout_s=20) as second, Dnsmasq(srv(silent, second.port)) as dns:
        gw = await sip_gateway(make_gateway, dns_server=dns.server)
        gw.carriers["sip"].layer.t1 = 0.05   # Timer B = 3.2 s when the ICMP error does not arrive first
        num = await sip_number(gw, sip_host="trunk.test")
        d = await dispatch(gw, num)
        row = await final_row(gw, d["requestId"])
    second.result.assert_calls(successful=1)
    assert (row["call_status"], row["hangup_reason"]) == ("busy", "486 Busy Here")


async def test_connection_names_the_srv_target_that_answered(make_gateway):
    silent = free_port()
    async with sipp_uas("uas_trunk_probe.xml", calls=1, timeout_s=15) as good:
        async with Dnsmasq(srv(silent, good.port)) as dns:
            gw = await sip_gateway(make_gateway, dns_server=dns.server)
            gw.carriers["sip"].layer.t1 = 0.05
            body = {"phone_number": "+15550001111", "sip_host": "trunk.test", "sip_trunk_name": "t"}
            report = (await api(gw, "POST", "/phone_number/test/sip", body, expect=200))["report"]
    good.result.assert_calls(successful=1)
    s = {step["step"]: step for step in report["steps"]}
    assert report["ok"] is True, report
    assert f"uas1.trunk.test (127.0.0.1):{silent}/udp" in s["dns"]["detail"]
    assert s["options"]["target"] == f"uas2.trunk.test (127.0.0.1):{good.port}/udp via SRV _sip._udp.trunk.test"
    assert s["options"]["tried"][0].startswith(f"uas1.trunk.test (127.0.0.1):{silent}/udp")
