"""REGISTER to registration-based trunks: digest, refresh before expiry, status in the phone-number API."""
import pytest

from gateway.sip.registration import refresh_in
from sipp import api, needs_sipp, registrar_gone, sip_gateway, sip_number, sipp_uas, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(60)]

CREDS = ["-key", "user", "16505550100", "-key", "pass", "rc-secret"]


async def number_status(gw, number_id):
    return (await api(gw, "GET", f"/phone_number/{number_id}", expect=200))["phone_number"]["status"]


async def test_register_challenge_refresh_and_status(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_registrar.xml", timeout_s=15, extra=[*CREDS, "-key", "expires", "2"]) as uas:
        num = await sip_number(gw, agent=False, sip_port=uas.port, register=True, sip_username="16505550100",
                               sip_password="rc-secret", auth_username="16505550100")
        reg = gw.carriers["sip"].registrations[num["id"]]
        # registered (after answering the 401), then refreshed before the 2 s binding expires
        await wait_for(lambda: reg.refreshes >= 2, 10)
        status = await number_status(gw, num["id"])
        assert status["registration"] == "registered", status
        assert status["sip_status"] == "200 OK"
        assert status["registered_until"]
    uas.result.assert_calls(successful=1)   # both rounds: REGISTER, 401, REGISTER+auth, 200 (x2, one Call-ID)
    await registrar_gone(gw)


async def test_register_rejected_shows_failing(make_gateway):
    gw = await sip_gateway(make_gateway)
    gw.carriers["sip"].registration_retry = (60.0, 60.0)   # one attempt within the test: SIPp takes one call
    async with sipp_uas("uas_registrar_reject.xml", timeout_s=10) as uas:
        num = await sip_number(gw, agent=False, sip_port=uas.port, register=True, sip_username="alice",
                               sip_password="wrong")

        async def failing():
            s = await number_status(gw, num["id"])
            return s.get("registration") == "failing" and s
        status = await wait_for(failing, 10)
    uas.result.assert_calls(successful=1)
    assert status["sip_status"] == "403 Forbidden"
    assert status["registered_until"] is None


async def test_deleting_number_stops_registration(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_registrar.xml", timeout_s=10, extra=[*CREDS, "-key", "expires", "3600"]) as uas:
        num = await sip_number(gw, agent=False, sip_port=uas.port, register=True, sip_username="16505550100",
                               sip_password="rc-secret")
        reg = gw.carriers["sip"].registrations[num["id"]]
        await wait_for(lambda: reg.registered, 10)
        await api(gw, "DELETE", f"/phone_number/{num['id']}", expect=200)
        assert num["id"] not in gw.carriers["sip"].registrations
        assert not reg.registered
    uas.result.assert_calls(successful=1)   # the scenario's second round was our un-REGISTER (Expires: 0)


def test_refresh_schedule():
    assert refresh_in(2) == 1
    assert refresh_in(120) == 60
    assert refresh_in(3600) == 3540
