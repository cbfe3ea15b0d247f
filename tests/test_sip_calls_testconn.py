"""`test connection` for SIP trunks (API before and after import): DNS, OPTIONS RTT, credentials, verdicts."""
import pytest

from sipp import api, needs_sipp, sip_gateway, sip_number, sipp_uas

pytestmark = [needs_sipp, pytest.mark.timeout(60)]

CREDS = ["-key", "user", "gwuser", "-key", "pass", "s3cret"]


def fields(port, **kw):
    return {"phone_number": "+15550001111", "sip_host": "127.0.0.1", "sip_port": port, "sip_trunk_name": "t",
            **kw}


def steps(report):
    return {s["step"]: s for s in report["steps"]}


async def test_authenticated_options_ok_and_rejected(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_options_auth.xml", calls=2, timeout_s=10, extra=CREDS) as uas:
        good = (await api(gw, "POST", "/phone_number/test/sip",
                          fields(uas.port, sip_username="gwuser", sip_password="s3cret"), expect=200))["report"]
        bad = (await api(gw, "POST", "/phone_number/test/sip",
                         fields(uas.port, sip_username="gwuser", sip_password="nope"), expect=200))["report"]
    uas.result.assert_calls(successful=2)
    s = steps(good)
    assert good["ok"] is True and good["verdict"] == "ok", good
    assert s["dns"]["verdict"] == "ok"
    assert s["options"]["verdict"] == "ok" and s["options"]["status_line"] == "SIP/2.0 401 Unauthorized"
    assert 0 < s["options"]["rtt_ms"] < 1000
    assert s["credentials"] == {**s["credentials"], "verdict": "ok", "status_line": "SIP/2.0 200 OK"}
    b = steps(bad)
    assert bad["ok"] is False and bad["verdict"] == "credentials rejected"
    assert b["credentials"]["status_line"] == "SIP/2.0 403 Forbidden"
    assert "nope" not in str(bad)


async def test_invite_probe_is_cancelled(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_trunk_probe.xml", calls=2, timeout_s=10) as uas:
        report = (await api(gw, "POST", "/phone_number/test/sip",
                            fields(uas.port, sip_username="gwuser", sip_password="s3cret"), expect=200))["report"]
    uas.result.assert_calls(successful=2)     # OPTIONS answered; INVITE got our CANCEL, 487, ACK
    s = steps(report)
    assert s["options"]["status_line"] == "SIP/2.0 200 OK"
    assert s["credentials"]["verdict"] == "ok"
    assert "cancelled" in s["credentials"]["detail"]
    assert s["credentials"]["status_line"] == "SIP/2.0 180 Ringing"


async def test_register_probe(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_registrar.xml", calls=2, timeout_s=10, extra=[*CREDS, "-key", "expires", "60"]) as uas:
        report = (await api(gw, "POST", "/phone_number/test/sip",
                            fields(uas.port, register=True, sip_username="gwuser", sip_password="s3cret"),
                            expect=200))["report"]
    uas.result.assert_calls(successful=2)   # OPTIONS; REGISTER (401, 200) then the un-REGISTER round
    s = steps(report)
    assert report["ok"] is True
    assert s["credentials"]["verdict"] == "ok" and s["credentials"]["status_line"] == "SIP/2.0 200 OK"
    assert s["credentials"]["detail"] == "REGISTER (then un-REGISTER)"


async def test_stored_number_test_route(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_trunk_probe.xml", calls=1, timeout_s=10) as uas:
        num = await sip_number(gw, agent=False, sip_port=uas.port)   # IP-authenticated: no credentials step
        report = (await api(gw, "POST", f"/phone_number/{num['id']}/test", {}, expect=200))["report"]
    uas.result.assert_calls(successful=1)
    s = steps(report)
    assert report["ok"] is True
    assert s["credentials"]["verdict"] == "skipped"


async def test_timed_out_and_not_found(make_gateway):
    gw = await sip_gateway(make_gateway)
    gw.carriers["sip"].layer.t1 = 0.05   # Timer F = 3.2 s
    report = (await api(gw, "POST", "/phone_number/test/sip", fields(9), expect=200))["report"]
    assert report["verdict"] == "timed out"
    assert steps(report)["options"]["verdict"] == "timed out"
    report = (await api(gw, "POST", "/phone_number/test/sip",
                        {**fields(5060), "sip_host": "no-such-trunk.invalid"}, expect=200))["report"]
    assert report["verdict"] == "not found" and steps(report)["dns"]["verdict"] == "not found"
