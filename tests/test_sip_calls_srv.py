"""Trunks named by DNS SRV (RFC 3263) end to end: a real dnsmasq publishes two SRV targets that are SIPp UAS
instances; the first says 503 or does not answer, and the INVITE (or test connection's OPTIONS) goes on to the
second."""
import asyncio
import re

import pytest

from dns_server import Dnsmasq, needs_dnsmasq
from sipp import api, free_port, needs_sipp, registrar_gone, sip_gateway, sip_number, sipp_uac, sipp_uas, wait_for
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


class Silent(asyncio.DatagramProtocol):
    """A SIP server that never answers: it only notes the transactions (CSeq numbers) that reached it."""

    def __init__(self) -> None:
        self.cseqs: set[int] = set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        m = re.search(rb"^CSeq:\s*(\d+)", data, re.MULTILINE | re.IGNORECASE)
        if m:
            self.cseqs.add(int(m.group(1)))


async def test_register_is_located_through_srv_and_fails_over(make_gateway):
    """REGISTER uses RFC 3263 like calls (it went to sip_host:5060 through getaddrinfo before): the first SRV
    target does not answer, the registrar behind the second one does, and the refresh goes straight back to it
    (RFC 3263 §4.3 fails over per request; starting each refresh from the top would cost 64·T1 every time)."""
    transport, silent = await asyncio.get_running_loop().create_datagram_endpoint(
        Silent, local_addr=("127.0.0.1", 0))
    silent_port = transport.get_extra_info("sockname")[1]
    creds = ["-key", "user", "16505550100", "-key", "pass", "rc-secret", "-key", "expires", "2"]
    # SIPp's -timeout runs from its start: it is started once the gateway is up (a loaded CI box has taken seconds
    # to start one), so its 15 s cover only the registration: 64·T1 = 3.2 s on the silent target, then the
    # registrar's two rounds 1 s apart (expires 2: refresh half-way) = 4.2 s of protocol time, the rest is slack
    registrar = sipp_uas("uas_registrar.xml", timeout_s=15, extra=creds)
    try:
        async with Dnsmasq(srv(silent_port, registrar.port)) as dns:
            gw = await sip_gateway(make_gateway, dns_server=dns.server)
            sip = gw.carriers["sip"]
            sip.layer.t1 = 0.05
            async with registrar:
                num = await sip_number(gw, agent=False, sip_host="trunk.test", register=True,
                                       sip_username="16505550100", sip_password="rc-secret")
                reg = sip.registrations[num["id"]]
                # registered past the silent first target, then refreshed (the scenario's two rounds)
                await wait_for(lambda: reg.refreshes >= 2, 15, what="registered through the second SRV target")
                assert reg.target == f"uas2.trunk.test (127.0.0.1):{registrar.port}/udp via SRV _sip._udp.trunk.test"
                assert reg.registrar_uri == "sip:trunk.test"      # the domain, never the target
                assert len(silent.cseqs) == 1, silent.cseqs       # only the first REGISTER tried it
    finally:
        transport.close()
    registrar.result.assert_calls(successful=1)
    await registrar_gone(gw)


async def test_in_dialog_requests_locate_a_contact_host_name(make_gateway):
    """A peer whose Contact is a host name without a port: the BYE goes where its SRV record points."""
    from gateway.sip.dialog import Dialog
    from gateway.sip.message import parse_message
    from gateway.sip.ua import SipSession

    async with Dnsmasq(["--srv-host=_sip._tcp.peer.test,box.peer.test,5099,10,0",
                        "--host-record=box.peer.test,127.0.0.9"]) as dns:
        gw = await sip_gateway(make_gateway, dns_server=dns.server)
        ua = gw.carriers["sip"].ua
        invite = parse_message(
            b"INVITE sip:+15550001111@gw SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.9:5099;branch=z9hG4bK1\r\n"
            b"From: <sip:a@peer.test>;tag=abc\r\nTo: <sip:+15550001111@gw>\r\nCall-ID: srv-dialog\r\n"
            b"CSeq: 1 INVITE\r\nContact: <sip:a@peer.test;transport=tcp>\r\nContent-Length: 0\r\n\r\n")
        session = SipSession(ua, Dialog.as_uas(invite, "ours", transport="tcp"), "uas", local_sdp=b"",
                             remote_sdp=None, invite=invite)
        assert await session._dest() == ("127.0.0.9", 5099, "tcp")


async def test_an_ip_trunk_may_call_from_a_server_its_srv_records_publish(make_gateway):
    """auth_type ip with no allow-list accepts the trunk's own hosts: for a name, that is every server its DNS
    publishes (here only through SRV: trunk.test itself has no address), not just its A record."""
    records = ["--srv-host=_sip._udp.trunk.test,edge.trunk.test,5060,10,0", "--host-record=edge.trunk.test,127.0.0.3"]
    async with Dnsmasq(records) as dns:
        gw = await sip_gateway(make_gateway, dns_server=dns.server)
        await sip_number(gw, sip_host="trunk.test", allowed_ips=[])
        sip = gw.carriers["sip"]
        from_edge = await sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=500,
                                   timeout_s=20, extra=["-i", "127.0.0.3"])
        from_elsewhere = await sipp_uac("uac_auth_rejected.xml", sip.port, service="15550001111", timeout_s=20,
                                        extra=["-i", "127.0.0.4"])
    from_edge.assert_calls(successful=1)
    from_elsewhere.assert_calls(successful=1)     # the scenario expects the 403
