"""Outbound calls through each carrier's REST API, against local stand-ins answering as the documented APIs do
(real HTTP on loopback; tests/fakes/{twilio,exotel,vonage}_rest.py): one error mapping for every carrier, bounded
timeouts, a ringing call hung up through the API is cancelled at the carrier (or, on Exotel, kept from coming
back), a transfer the carrier refuses is an API error, carrier settings are checked when the agent is saved."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from carriers.exotel import CloseCode as ExotelClose
from carriers.exotel import ExotelCarrier
from carriers.twilio import TwilioCarrier
from carriers.vonage import VonageCarrier
from exotel_helpers import FakeExotel, add_exophone, ws_url
from fakes.exotel_rest import FakeExotelApi
from fakes.rest_faults import HANG
from fakes.twilio_rest import FakeTwilioRest
from fakes.vonage_rest import VONAGE_NUMBER, FakeVonageApi
from sipp import wait_for
from test_vonage_rest import private_pem  # noqa: F401 (fixture)
from vonage_helpers import SIGNATURE_SECRET, FakeVonageSocket, add_vonage_number, signed_headers

TWILIO_NUMBER = "+15005550006"
TARGET = "+14155550111"
CARRIERS = ("twilio", "exotel", "vonage")
#: the path suffix of each carrier's "create a call" request
CREATE = {"twilio": "/Calls.json", "exotel": "/Calls/connect.json", "vonage": "/v1/calls"}
LABEL = {"twilio": "Twilio", "exotel": "Exotel", "vonage": "Vonage"}
HEADERS = {"Authorization": "Bearer test-api-key"}


@dataclass
class Rig:
    name: str
    gw: Any
    rest: Any        # the carrier's stand-in
    agent: dict[str, Any]
    number: dict[str, Any]

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        timeout = aiohttp.ClientTimeout(total=20)    # far below any hang: only the gateway's own bound answers
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.request(method, self.gw.url(path), json=body, headers=HEADERS) as r:
                return r.status, await r.json(), r.headers

    async def dispatch(self, to: str = "+919876543210") -> tuple[int, Any, Any]:
        return await self.api("POST", "/api/v1/calls/dispatch", {
            "agent_id": self.agent["id"], "to_number": to, "from_number_id": self.number["id"]})

    async def row(self, call_id: str, pred: Any = lambda r: True, timeout: float = 5.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                r = await self.gw.store.find_call(call_uuid=call_id)
                if r is not None and pred(r):
                    return r
                await asyncio.sleep(0.02)
        return await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def rig(make_gateway, private_pem):
    """`r = await rig("vonage", settings={...}, carrier_timeout=0.5)`: a gateway with that one carrier, its REST
    stand-in, an agent and an imported number."""
    stand_ins: list[Any] = []
    gateways: list[Any] = []

    async def factory(name: str, *, settings: dict[str, Any] | None = None, engine: str = "echo",
                      **gw_kw: Any) -> Rig:
        cls = {"twilio": TwilioCarrier, "exotel": ExotelCarrier, "vonage": VonageCarrier}[name]
        gw = await make_gateway(carriers={name: cls}, engine=engine, **gw_kw)
        gateways.append(gw)
        carrier = gw.carriers[name]
        agent = await gw.store.create_agent({"name": name, "engine": engine, "settings": settings or {}})
        if name == "twilio":
            rest = await FakeTwilioRest().start()
            carrier.api_base_url = rest.url
            account = rest.add_account(numbers=(TWILIO_NUMBER,))
            number = await gw.store.create_number(
                {"phone_number": TWILIO_NUMBER, "provider": "twilio", "agent_id": agent["id"],
                 "config": {"account_sid": account.sid}}, {"account_token": account.token})
        elif name == "exotel":
            rest = await FakeExotelApi().start()
            carrier.base_url = rest.url
            number = await add_exophone(gw, agent_id=agent["id"])
        else:
            rest = await FakeVonageApi(private_pem).start()
            carrier.api_base = carrier.rest_base = rest.url
            number = await add_vonage_number(gw, agent_id=agent["id"], private_pem=private_pem)
        stand_ins.append(rest)
        return Rig(name, gw, rest, agent, number)

    yield factory
    for rest in stand_ins:       # a request a test left hanging answers now: the gateway's stop need not wait for it
        rest.faults.release()
    for gw in gateways:          # before the stand-ins go: shutdown may still hang calls up over REST
        if gw.started:
            await gw.stop()
    for rest in stand_ins:
        await rest.stop()


# -- item 7 (and 3): every carrier's REST failures answer the same way ------------------------------------------
@pytest.mark.parametrize("name", CARRIERS)
@pytest.mark.parametrize("answer,status", [(401, 502), (404, 502), (429, 503), (500, 502), (HANG, 504)])
async def test_dispatch_failures_map_alike_on_every_carrier(rig, name, answer, status):
    # only the hang needs a short bound; an answer the stand-in gives at once gets a bound a busy box cannot
    # outlast (0.5 s was seen expiring before the stand-in's 404 came back: 504 instead of 502)
    r = await rig(name, carrier_timeout=0.5 if answer == HANG else 10)
    r.rest.faults.add("POST", CREATE[name], answer, retry_after=7 if answer == 429 else None)
    got, body, headers = await r.dispatch()
    assert got == status, body
    assert body["success"] is False and body["error"].startswith(LABEL[name]), body
    if answer == HANG:
        assert "did not answer within 0.5 s" in body["error"]
    else:
        assert f"HTTP {answer}" in body["error"]
    if answer == 429:
        assert headers["Retry-After"] == "7"          # the carrier's own Retry-After is passed on
    rows, _ = await r.gw.store.list_calls()
    assert [x["call_status"] for x in rows] == ["failed"] and not r.gw.calls.active


# -- items 3 and 6: API hangup ends the call at once; the REST request behind it is bounded --------------------
async def test_twilio_hangup_against_a_hung_api_is_bounded(rig):
    r = await rig("twilio", carrier_timeout=0.5)
    status, body, _ = await r.dispatch(TARGET)
    assert status == 200, body
    call_sid = next(iter(r.rest.calls))
    r.rest.faults.add("POST", f"/Calls/{call_sid}.json", HANG)
    status, _, _ = await r.api("POST", f"/api/v1/calls/{body['call_id']}/hangup")
    assert status == 200
    row = await r.row(body["call_id"], lambda x: x["ended_at"] is not None)
    assert row["hangup_reason"] == "api_hangup"
    await wait_for(lambda: r.rest.faults.hanging == 1, 5, 0.02)    # the request reached Twilio…
    await wait_for(lambda: not r.gw.carriers["twilio"]._tasks, 5, 0.02)   # …and was given up on
    assert r.rest.faults.hanging == 1                                          # while Twilio still hung


# -- item 1: Vonage, a ringing outbound call hung up through the API is cancelled at Vonage ----------------------
async def test_vonage_hangup_while_ringing_sends_put_hangup(rig):
    r = await rig("vonage")
    status, body, _ = await r.dispatch("+447700900321")
    assert status == 200, body
    uuid = next(iter(r.rest.calls))
    status, _, _ = await r.api("POST", f"/api/v1/calls/{body['call_id']}/hangup")
    assert status == 200
    puts = await r.rest.wait_request("PUT", f"/v1/calls/{uuid}")
    assert puts == [{"action": "hangup"}]
    assert r.rest.calls[uuid]["status"] == "completed"
    row = await r.row(body["call_id"], lambda x: x["ended_at"] is not None)
    assert row["call_status"] == "canceled" and row["hangup_reason"] == "api_hangup"


# -- item 6: Vonage API hangup ends the call at once, the REST request finishes in the background ----------------
async def test_vonage_api_hangup_does_not_wait_for_a_hung_api(rig):
    r = await rig("vonage", carrier_timeout=30)        # the hang outlasts the test: only ordering can pass it
    status, body, _ = await r.dispatch("+447700900321")
    assert status == 200, body
    uuid = next(iter(r.rest.calls))
    ncco = r.rest.calls[uuid]["request"]["ncco"]
    call = r.gw.calls.get(body["call_id"])
    async with aiohttp.ClientSession() as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=r.gw.url(""))
        await v.connect()
        await wait_for(lambda: call.bus is not None, 5, 0.02)
        r.rest.faults.add("PUT", f"/v1/calls/{uuid}", HANG)
        status, _, _ = await r.api("POST", f"/api/v1/calls/{body['call_id']}/hangup")
        assert status == 200
        row = await r.row(body["call_id"], lambda x: x["ended_at"] is not None)
        assert row["hangup_reason"] == "api_hangup"
        await v.wait_closed()
        # the call is over here while Vonage still has not answered the hangup request
        await wait_for(lambda: r.rest.faults.hanging == 1, 5, 0.02)


# -- item 2: Exotel, a call hung up while ringing does not come back as a new inbound call -----------------------
async def test_exotel_stream_of_a_canceled_call_is_closed_and_the_flow_ends(rig):
    r = await rig("exotel")
    status, body, _ = await r.dispatch()
    assert status == 200, body
    sid = next(iter(r.rest.calls))
    status, _, _ = await r.api("POST", f"/api/v1/calls/{body['call_id']}/hangup")
    assert status == 200
    row = await r.row(body["call_id"], lambda x: x["ended_at"] is not None)
    assert row["call_status"] == "canceled"

    async def callee_answers() -> None:
        # Exotel's v1 API cannot cancel the ringing call: the callee answers and the flow's Voicebot connects
        async with aiohttp.ClientSession() as s:
            exo = FakeExotel(s, ws_url(r.gw))
            await exo.connect()
            await exo.start(sid, frm="09876543210", to="08047491899")
            assert await exo.wait_closed() == ExotelClose.CALL_ENDED
        async with aiohttp.ClientSession() as s:   # then the Passthru: 200 = the Hangup branch, the flow ends
            async with s.get(r.gw.url("/exotel/should_end_the_call"), params={"CallSid": sid}) as resp:
                assert resp.status == 200

    await callee_answers()
    r.gw.carriers["exotel"]._calls.clear()          # as after a restart: the call log alone must still tell
    await callee_answers()
    async with aiohttp.ClientSession() as s:
        async with s.get(r.gw.url("/exotel/call_coming"), params={"CallSid": sid, "CallFrom": "09876543210",
                                                                   "CallTo": "08047491899"}) as resp:
            assert resp.status == 200
    rows, total = await r.gw.store.list_calls()
    assert total == 1 and rows[0]["call_status"] == "canceled" and not r.gw.calls.active


# -- item 4: a transfer the carrier refuses is an API error and no transfer in the log ----------------------------
@pytest.mark.parametrize("answer,status", [(500, 502), (429, 503)])
async def test_twilio_transfer_refused_is_an_error(rig, answer, status):
    from fakes.twilio_env import TwilioEnv
    from test_twilio_media import open_call

    r = await rig("twilio", settings={"transfer": {"number": TARGET}})
    account = next(iter(r.rest.accounts.values()))
    env = TwilioEnv(r.gw, r.gw.carriers["twilio"], r.rest, account, r.agent, r.number)
    call_id, call_sid, client = await open_call(env)
    try:
        call = r.gw.calls.get(call_id)
        await wait_for(lambda: call.bus is not None, 5, 0.02)
        r.rest.faults.add("POST", f"/Calls/{call_sid}.json", answer)
        got, body, _ = await r.api("POST", f"/api/v1/calls/{call_id}/transfer", {})
        assert got == status and body["error"].startswith("Twilio") and f"HTTP {answer}" in body["error"], body
        row = await r.row(call_id, lambda x: x["transfer_outcome"] is not None)
        assert row["is_call_transfer"] is False and row["transfer_outcome"].startswith("failed")
        assert call.is_active                         # the caller stays with the agent
    finally:
        await client.__aexit__()


@pytest.mark.parametrize("answer,status", [(500, 502), (401, 502)])
async def test_vonage_transfer_refused_is_an_error(rig, answer, status):
    r = await rig("vonage", settings={"transfer": {"number": TARGET}})
    uuid = "0a1b2c3d-0000-4000-8000-00000000abcd"
    r.rest.register({"status": "answered"}, uuid)
    async with aiohttp.ClientSession() as s:
        async with s.get(r.gw.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                             "uuid": uuid}, headers=signed_headers()) as resp:
            ncco = await resp.json()
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=r.gw.url(""))
        await v.connect()
        call = r.gw.calls.find_by_sid(uuid)
        await wait_for(lambda: call.bus is not None, 5, 0.02)
        r.rest.faults.add("PUT", f"/v1/calls/{uuid}", answer)
        got, body, _ = await r.api("POST", f"/api/v1/calls/{call.id}/transfer", {})
        assert got == status and body["error"].startswith("Vonage") and f"HTTP {answer}" in body["error"], body
        row = await r.row(call.id, lambda x: x["transfer_outcome"] is not None)
        assert row["is_call_transfer"] is False and row["transfer_outcome"].startswith("failed")
        assert call.is_active and not v.closed.is_set()    # media goes on: the transfer never happened
        await v.close()


# -- item 5: carrier settings are checked when the agent is saved; dispatch never answers 500 ---------------------
@pytest.mark.parametrize("name,settings,field", [
    ("vonage", {"vonage": {"amd": {"enabled": True, "beep_timeout": 40}}}, "settings.vonage.amd.beep_timeout"),
    ("vonage", {"vonage": {"amd": {"enabled": True, "mode": "guess"}}}, "settings.vonage.amd.mode"),
    ("vonage", {"vonage": {"ring_timeout": 121}}, "settings.vonage.ring_timeout"),
    ("vonage", {"vonage": {"ringtimeout": 30}}, "settings.vonage.ringtimeout"),
    ("exotel", {"exotel": {"time_limit": 14401}}, "settings.exotel.time_limit"),
    ("exotel", {"exotel": {"ring_timeout": "45"}}, "settings.exotel.ring_timeout"),
    ("twilio", {"transfer": {"number": TARGET, "timeout": "soon"}}, "settings.transfer.timeout"),
])
async def test_carrier_settings_checked_at_save_time(rig, name, settings, field):
    r = await rig(name)
    status, body, _ = await r.api("POST", "/api/v1/agents", {"name": "x", "settings": settings})
    assert status == 400 and body["field"] == field, body
    status, body, _ = await r.api("PATCH", f"/api/v1/agents/{r.agent['id']}", {"settings": settings})
    assert status == 400 and body["field"] == field, body


async def test_carrier_settings_within_range_are_saved_and_sent(rig):
    r = await rig("vonage")
    settings = {"vonage": {"ring_timeout": 60, "amd": {"enabled": True, "beep_timeout": 45, "mode": "detect_beep"}}}
    status, body, _ = await r.api("PATCH", f"/api/v1/agents/{r.agent['id']}", {"settings": settings})
    assert status == 200, body
    r.agent = body["agent"]
    status, body, _ = await r.dispatch("+447700900321")
    assert status == 200, body
    sent = (await r.rest.wait_request("POST", "/v1/calls"))[0]
    assert sent["ringing_timer"] == 60 and sent["advanced_machine_detection"] == {
        "behavior": "continue", "mode": "detect_beep", "beep_timeout": 45}


@pytest.mark.parametrize("name,settings", [("vonage", {"vonage": {"amd": {"enabled": True, "beep_timeout": 40}}}),
                                           ("exotel", {"exotel": {"time_limit": "soon"}})])
async def test_dispatch_for_an_agent_saved_before_the_checks_is_a_422(rig, name, settings):
    r = await rig(name, settings=settings)          # stored directly, as an older gateway would have
    status, body, _ = await r.dispatch("+447700900321" if name == "vonage" else "+919876543210")
    assert status == 422 and body["field"] == "agent_id" and f"settings.{name}." in body["error"], body
    assert not [q for q in r.rest.requests if q[0] == "POST"]     # nothing reached the carrier


async def test_a_carrier_bug_during_dispatch_is_a_502_not_a_500(rig, monkeypatch):
    r = await rig("exotel")

    async def broken(*_a: Any) -> None:
        raise KeyError("oops")
    monkeypatch.setattr(r.gw.carriers["exotel"], "dispatch", broken)
    status, body, _ = await r.dispatch()
    assert status == 502 and "exotel" in body["error"], body
    rows, _ = await r.gw.store.list_calls()
    assert rows[0]["call_status"] == "failed"


# -- issue 14 item 10: GATEWAY_EXOTEL_API_BASE / GATEWAY_VONAGE_API_BASE point a gateway at a stand-in -------------
@pytest.mark.parametrize("name", ["exotel", "vonage"])
async def test_api_base_environment_points_imports_at_a_stand_in(make_gateway, monkeypatch, private_pem, name):
    from fakes.exotel_rest import ACCOUNT_SID, API_KEY, API_TOKEN, APP_ID
    from fakes.vonage_rest import APP_ID as VONAGE_APP

    if name == "exotel":
        rest = await FakeExotelApi().start()
        body = {"exotel_phone_number": "+918047491899", "exotel_api_key": API_KEY, "exotel_api_token": API_TOKEN,
                "exotel_subdomain": "api.in.exotel.com", "exotel_account_sid": ACCOUNT_SID, "exotel_app_id": APP_ID}
    else:
        rest = await FakeVonageApi(private_pem).start()
        body = {"vonage_phone_number": VONAGE_NUMBER, "vonage_application_id": VONAGE_APP,
                "vonage_private_key": private_pem, "vonage_signature_secret": SIGNATURE_SECRET}
    try:
        monkeypatch.setenv(f"GATEWAY_{name.upper()}_API_BASE", rest.url)
        cls = {"exotel": ExotelCarrier, "vonage": VonageCarrier}[name]
        gw = await make_gateway(carriers={name: cls})
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url(f"/api/v1/phone_number/import/{name}"), json=body, headers=HEADERS) as resp:
                assert resp.status == 201, await resp.text()
        assert rest.requests                           # the checks went to the stand-in, not to the carrier
        await gw.stop()
    finally:
        await rest.stop()
