"""SIP over TLS with SDES-SRTP media against baresip (Debian) on loopback, with a CA and certificates this test
makes: baresip calls the gateway's TLS port, and the gateway calls baresip through a `_sips._tcp` SRV name
(dnsmasq), checking its certificate against the trunk's domain (RFC 5922). The echo engine sends back what it
hears, so baresip decoding its own tone proves the SRTP keys worked both ways.

(Debian's SIPp is built without OpenSSL — `sipp -t l1` says "To use a TLS transport you must compile SIPp with
OpenSSL" — so baresip is the TLS peer here; SIPp keeps testing the same call flows over UDP/TCP.)
"""
from pathlib import Path

import pytest

from baresip import Baresip, needs_baresip
from dns_server import Dnsmasq, needs_dnsmasq
from sipp import api, metric_value, metrics_text, sip_gateway, sip_number, wait_for
from test_sip_calls_outbound import dispatch, final_row, live
from tls_certs import TestCa

pytestmark = [needs_baresip, pytest.mark.timeout(120)]


def pem(tmp_path, issued) -> str:
    """baresip wants certificate and key in one file."""
    path = tmp_path / "baresip.pem"
    path.write_text(Path(issued.cert_path).read_text() + Path(issued.key_path).read_text())
    return str(path)


async def tls_gateway(make_gateway, tmp_path, ca: TestCa, **settings):
    gw_cert = ca.issue("gateway.test", "localhost", "127.0.0.1")
    return await sip_gateway(make_gateway, tls_cert=gw_cert.cert_path, tls_key=gw_cert.key_path, tls_port=0,
                             tls_ca_file=ca.cert_path, **settings)


#: baresip opens each media stream with one RTCP APP "PING" sent in the clear (16 bytes: too short to be SRTCP,
#: RFC 3711 §3.4), which the gateway rightly drops as unauthenticated and counts as failed. It only shows when
#: baresip advertises the loopback address it sends from; anything beyond it is a real decryption failure.
BARESIP_PLAIN_RTCP = 1


@pytest.mark.parametrize("trunk,peer", [
    ("srtp", "srtp-mand"),     # RTP/SAVP offer, SRTP required
    ("optional", "srtp"),      # baresip's best-effort mode: RTP/AVP with a=crypto, answered with keys
])
async def test_inbound_tls_srtp_call_decrypts_both_ways(make_gateway, tmp_path, trunk, peer):
    ca = TestCa(tmp_path)
    gw = await tls_gateway(make_gateway, tmp_path, ca)
    sip = gw.carriers["sip"]
    assert sip.transport.tls_port
    await sip_number(gw, phone="+15550001111", transport="tls", media_encryption=trunk)
    uri = f"sip:15550001111@127.0.0.1:{sip.transport.tls_port};transport=tls"
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("localhost", "127.0.0.1")), ca_file=ca.cert_path,
                       mediaenc=peer, dial=uri) as bs:
        leg = await wait_for(lambda: next((x for x in sip.legs.values() if x.call.status == "in-progress"), None),
                             15, what="an answered inbound call")
        call = leg.call
        assert leg.session.dialog.transport == "tls"
        assert leg.rtp.srtp is not None and leg.rtp.srtp.suite == "AES_CM_128_HMAC_SHA1_80"
        # the gateway decrypts baresip's tone (else the echo engine would have nothing to send back) …
        await wait_for(lambda: leg.rtp.srtp.unprotected >= 100, 15, what="100 SRTP packets decrypted")
        # … and baresip decrypts the echo: its own tone comes back out of the SRTP stream
        await wait_for(lambda: bs.heard_tone(1.0), 15, what="baresip hearing its tone echoed")
        assert leg.rtp.srtp.failed <= BARESIP_PLAIN_RTCP
        assert metric_value(await metrics_text(gw), "gateway_srtp_packets_failed_total") <= BARESIP_PLAIN_RTCP
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, call.log_id)
    assert row["extra"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
    assert row["extra"]["rtp"]["srtp_failed"] <= BARESIP_PLAIN_RTCP


def sips_srv(port: int) -> list[str]:
    """trunk.test publishes its TLS server only through _sips._tcp (RFC 3263 §4.1)."""
    return [f"--srv-host=_sips._tcp.trunk.test,bs.trunk.test,{port},10,0", "--host-record=bs.trunk.test,127.0.0.1"]


@needs_dnsmasq
async def test_outbound_call_over_sips_srv_with_srtp(make_gateway, tmp_path):
    ca = TestCa(tmp_path)
    # the certificate names the trunk's domain, not the SRV target bs.trunk.test (RFC 5922 §4)
    trunk_cert = pem(tmp_path, ca.issue("trunk.test"))
    async with Baresip(tmp_path, cert_pem=trunk_cert, ca_file=ca.cert_path, user="15559876543",
                       mediaenc="srtp-mand") as bs:
        async with Dnsmasq(sips_srv(bs.tls_port)) as dns:
            gw = await tls_gateway(make_gateway, tmp_path, ca, dns_server=dns.server)
            num = await sip_number(gw, sip_host="trunk.test", transport="tls", media_encryption="srtp",
                                   sip_strip_plus=True)
            assert num["config"].get("sip_port") in (None, "")    # located through SRV
            d = await dispatch(gw, num)
            call = await live(gw, d["call_id"])
            leg = gw.carriers["sip"].legs[call.id]
            assert leg.session.dialog.transport == "tls" and leg.rtp.srtp is not None
            await wait_for(lambda: leg.rtp.srtp.unprotected >= 100, 15, what="100 SRTP packets decrypted")
            await wait_for(lambda: bs.heard_tone(1.0), 15, what="baresip hearing its tone echoed")
            await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)   # BYE over the dialog's TLS
            row = await final_row(gw, d["requestId"])
    assert row["call_status"] == "completed" and row["extra"]["srtp"] == "AES_CM_128_HMAC_SHA1_80"
    assert row["extra"]["sip_request_uri"] == "sip:15559876543@trunk.test;transport=tls"
    assert row["extra"]["rtp"]["srtp_failed"] <= BARESIP_PLAIN_RTCP


async def test_plain_rtp_offer_to_a_trunk_requiring_srtp_gets_488(make_gateway, tmp_path):
    ca = TestCa(tmp_path)
    gw = await tls_gateway(make_gateway, tmp_path, ca)
    sip = gw.carriers["sip"]
    num = await sip_number(gw, phone="+15550001111", transport="tls", media_encryption="srtp")
    uri = f"sip:15550001111@127.0.0.1:{sip.transport.tls_port};transport=tls"
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("localhost")), ca_file=ca.cert_path,
                       mediaenc="", dial=uri) as bs:
        await wait_for(lambda: b"488" in bs.output, 15, what="baresip told 488")
    rows, _ = await gw.store.list_calls(1, 10)
    assert rows and rows[0]["call_status"] == "failed"
    assert "requires SRTP" in rows[0]["hangup_reason"], rows[0]
    assert num["config"]["media_encryption"] == "srtp"


async def trunk_test(gw, **fields) -> dict:
    body = {"phone_number": "+15559876543", "sip_host": "trunk.test", "sip_trunk_name": "t", "transport": "tls",
            "sip_strip_plus": True, **fields}
    return (await api(gw, "POST", "/phone_number/test/sip", body, expect=200))["report"]


@needs_dnsmasq
async def test_connection_reports_tls_srv_target_and_srtp(make_gateway, tmp_path):
    ca = TestCa(tmp_path)
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("trunk.test")), ca_file=ca.cert_path,
                       user="15559876543", mediaenc="srtp-mand") as bs:
        async with Dnsmasq(sips_srv(bs.tls_port)) as dns:
            gw = await tls_gateway(make_gateway, tmp_path, ca, dns_server=dns.server)
            report = await trunk_test(gw, media_encryption="srtp")
    steps = {s["step"]: s for s in report["steps"]}
    assert report["ok"] is True, report
    assert steps["tls"]["verdict"] == "ok" and "certificate valid for trunk.test" in steps["tls"]["detail"]
    assert steps["options"]["target"] == f"bs.trunk.test (127.0.0.1):{bs.tls_port}/tls via SRV _sips._tcp.trunk.test"
    assert steps["srtp"]["verdict"] == "ok", steps["srtp"]
    assert "RTP/SAVP offer accepted with AES_CM_128_HMAC_SHA1_80" in steps["srtp"]["detail"]
    assert "warning" not in steps["srtp"]["detail"]          # keys went over TLS


@needs_dnsmasq
async def test_connection_says_when_the_trunk_refuses_srtp(make_gateway, tmp_path):
    ca = TestCa(tmp_path)
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("trunk.test")), user="15559876543",
                       mediaenc="") as bs:                   # a peer without SRTP
        async with Dnsmasq(["--host-record=trunk.test,127.0.0.1"]) as dns:
            gw = await tls_gateway(make_gateway, tmp_path, ca, dns_server=dns.server)
            report = await trunk_test(gw, sip_port=bs.tls_port, media_encryption="srtp")
            optional = await trunk_test(gw, sip_port=bs.tls_port, media_encryption="optional")
            # a gateway that only dials out over TLS (no --tls-cert) is told what that means for the trunk
            client_only = await sip_gateway(make_gateway, tls_ca_file=ca.cert_path, dns_server=dns.server)
            outward = await trunk_test(client_only, sip_port=bs.tls_port)
    srtp = next(s for s in report["steps"] if s["step"] == "srtp")
    assert report["ok"] is False and srtp["verdict"] == "srtp refused", report
    fallback = next(s for s in optional["steps"] if s["step"] == "srtp")
    assert optional["ok"] is True and "plain RTP" in fallback["detail"], optional
    tls = next(s for s in outward["steps"] if s["step"] == "tls")
    assert outward["ok"] is True and "no TLS listener" in tls["detail"], outward


@needs_dnsmasq
@pytest.mark.parametrize("problem,verdict", [
    ("expired", "certificate expired"),
    ("wrong name", "certificate name mismatch"),
    ("unknown CA", "certificate from an unknown CA"),
    ("self-signed", "self-signed certificate"),
])
async def test_connection_names_each_certificate_problem(make_gateway, tmp_path, problem, verdict):
    ca = TestCa(tmp_path)
    issued = {"expired": lambda: ca.issue("trunk.test", days=(-30, -1)),
              "wrong name": lambda: ca.issue("other.test"),
              "unknown CA": lambda: TestCa(tmp_path, "stranger").issue("trunk.test"),
              "self-signed": lambda: ca.issue("trunk.test", self_signed=True)}[problem]()
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, issued), user="15559876543", mediaenc="") as bs:
        async with Dnsmasq(["--host-record=trunk.test,127.0.0.1"]) as dns:
            gw = await tls_gateway(make_gateway, tmp_path, ca, dns_server=dns.server)
            report = await trunk_test(gw, sip_port=bs.tls_port)
            if problem == "self-signed":   # the per-trunk switch for test peers: encrypted, not authenticated
                relaxed = await trunk_test(gw, sip_port=bs.tls_port, tls_verify=False)
    assert report["ok"] is False and report["verdict"] == verdict, report
    assert [s["step"] for s in report["steps"]] == ["dns", "tls"]
    if problem == "self-signed":
        tls = next(s for s in relaxed["steps"] if s["step"] == "tls")
        assert relaxed["ok"] is True and "NOT checked" in tls["detail"], relaxed
        assert "no TLS listener" not in tls["detail"]       # this gateway has one


@needs_dnsmasq
async def test_outbound_call_to_a_trunk_with_the_wrong_certificate_fails_naming_it(make_gateway, tmp_path):
    ca = TestCa(tmp_path)
    async with Baresip(tmp_path, cert_pem=pem(tmp_path, ca.issue("other.test")), user="15559876543",
                       mediaenc="") as bs:
        async with Dnsmasq(sips_srv(bs.tls_port)) as dns:
            gw = await tls_gateway(make_gateway, tmp_path, ca, dns_server=dns.server)
            num = await sip_number(gw, sip_host="trunk.test", transport="tls", sip_strip_plus=True)
            d = await dispatch(gw, num)
            row = await final_row(gw, d["requestId"])
    assert row["call_status"] == "failed"
    assert "certificate name mismatch" in row["hangup_reason"] and "trunk.test" in row["hangup_reason"], row
