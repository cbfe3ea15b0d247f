"""Vonage REST through the official SDK against a loopback HTTPS fake: import checks, outbound with AMD, hangup,
transfer to the primary then backups (synchronous connect events), DTMF."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from carriers.vonage import VonageCarrier
from exotel_helpers import CallWatch, tone
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AmdResult, CallStarted, Dtmf, Hangup, TransferResult
from vonage_helpers import (
    API_KEY,
    API_SECRET,
    APP_ID,
    SIGNATURE_SECRET,
    VONAGE_NUMBER,
    FakeVonageApi,
    FakeVonageSocket,
    add_vonage_number,
    rsa_private_pem,
    signed_headers,
)

PRIMARY, BACKUP1, BACKUP2 = "+447700900001", "+447700900002", "+447700900003"


@pytest.fixture(scope="module")
def private_pem() -> str:
    return rsa_private_pem()


@pytest.fixture
async def vonage_api(private_pem):
    api = await FakeVonageApi(private_pem).start()
    yield api
    await api.stop()


async def _gw(make_gateway, api: FakeVonageApi, engine: str = "echo"):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine=engine)
    gw.carriers["vonage"].api_base = gw.carriers["vonage"].rest_base = api.url
    return gw


async def _post(gw, path, body, headers):
    async with aiohttp.ClientSession() as s, s.post(gw.url(path), json=body, headers=headers) as r:
        return r.status, await r.json()


def body(**over):
    b = {"vonage_phone_number": VONAGE_NUMBER, "name": "uk", "vonage_signature_secret": SIGNATURE_SECRET}
    b.update(over)
    return b


# -- import ------------------------------------------------------------------------------------------------------
async def test_import_with_application_credentials(make_gateway, vonage_api, auth_headers, private_pem):
    gw = await _gw(make_gateway, vonage_api)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_application_id=APP_ID, vonage_private_key=private_pem.replace("\n", "\\n")),
                              auth_headers)
    assert status == 201, res
    assert res["phone_number"]["config"]["vonage_private_key"] == "****" and "PRIVATE KEY" not in str(res)
    assert any(p == "/v1/calls" for _, p, _ in vonage_api.requests)     # the JWT was tried for real
    other = rsa_private_pem()
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_phone_number="+447700900555", vonage_application_id=APP_ID,
                                   vonage_private_key=other), auth_headers)
    assert status == 422 and res["field"] == "vonage_private_key"
    assert "Vonage rejected the application id / private key" in str(res)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_phone_number="+447700900556", vonage_application_id=APP_ID,
                                   vonage_private_key="not a key"), auth_headers)
    assert status == 400 and "not a PEM private key" in str(res)


async def test_import_with_account_key_secret(make_gateway, vonage_api, auth_headers):
    gw = await _gw(make_gateway, vonage_api)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_api_key=API_KEY, vonage_api_secret="wrong"), auth_headers)
    assert status == 422 and res["field"] == "vonage_api_secret"
    assert "Vonage rejected the API key/secret" in str(res) and "wrong" not in str(res)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_phone_number="+447700900777", vonage_api_key=API_KEY,
                                   vonage_api_secret=API_SECRET), auth_headers)
    assert status == 400 and f"number +447700900777 not found on Vonage account {API_KEY}" in str(res)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_api_key=API_KEY, vonage_api_secret=API_SECRET), auth_headers)
    assert status == 201, res
    assert res["phone_number"]["config"]["vonage_linked_application_id"] == APP_ID
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage", body(vonage_phone_number="+447700900888"),
                              auth_headers)
    assert status == 400 and "credentials needed" in str(res)


async def test_unreachable_api_is_a_clear_error(make_gateway, auth_headers, private_pem, tmp_path, monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    gw.carriers["vonage"].api_base = f"http://127.0.0.1:{port}"
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              body(vonage_application_id=APP_ID, vonage_private_key=private_pem), auth_headers)
    assert status == 502 and "Vonage API unreachable" in str(res)


# -- outbound, AMD, hangup --------------------------------------------------------------------------------------
class GreetThenHangup(VoiceEngine):
    sample_rate = 16000

    def __init__(self) -> None:
        self.amd: list[AmdResult] = []

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, AmdResult):
                self.amd.append(item)
                await session.play(tone(0.3, 16000), end_of_utterance=True)
                await session.send_dtmf("12#")
                await session.hangup("done")
            elif isinstance(item, Hangup):
                return


async def test_outbound_with_vonage_amd_then_agent_hangup(make_gateway, vonage_api, auth_headers, private_pem):
    gw = await _gw(make_gateway, vonage_api, engine="gh")
    engine = GreetThenHangup()
    gw.engines.register("gh", engine)
    agent = await gw.store.create_agent({"name": "a", "engine": "gh", "settings": {
        "vonage": {"amd": {"enabled": True, "mode": "detect_beep", "beep_timeout": 45}}}})
    number = await add_vonage_number(gw, private_pem=private_pem)
    watch = CallWatch(gw)
    status, res = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent["id"], "to_number": "+447700900321",
                                                             "from_number_id": number["id"]}, auth_headers)
    assert status == 200, res
    call = await watch.next_call()
    created = (await vonage_api.wait_request("POST", "/v1/calls"))[0]
    assert created["to"] == [{"number": "447700900321", "type": "phone"}]
    assert created["from"] == {"number": VONAGE_NUMBER[1:], "type": "phone"}
    assert created["advanced_machine_detection"] == {"behavior": "continue", "mode": "detect_beep",
                                                     "beep_timeout": 45}
    assert created["event_url"] == [gw.url(f"/vonage/events?call_id={call.id}")]
    ep = created["ncco"][0]["endpoint"][0]
    assert created["ncco"][0]["action"] == "connect" and ep["type"] == "websocket"
    assert ep["content-type"] == "audio/l16;rate=16000" and ep["headers"]["call_id"] == call.id
    uuid = call.carrier_sid
    assert uuid in vonage_api.calls

    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        for st in ("started", "ringing", "answered"):
            async with s.post(gw.url(f"/vonage/events?call_id={call.id}"), json={"uuid": uuid, "status": st}) as r:
                assert r.status == 204
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect()
        async with s.post(gw.url(f"/vonage/events?call_id={call.id}"),
                          json={"uuid": uuid, "status": "human", "call_uuid": uuid}) as r:
            assert r.status == 204
        hang = await vonage_api.wait_request("PUT", f"/v1/calls/{uuid}", timeout=10)
        assert hang == [{"action": "hangup"}]
        assert len(v.rx.audio) >= int(0.3 * 16000 * 2)             # the goodbye went out before the hangup
        row = await watch.wait_ended(call)
        dtmf = await vonage_api.wait_request("PUT", f"/v1/calls/{uuid}/dtmf")
        await v.close()
    assert dtmf == [{"digits": "12#"}]
    assert [a.answered_by.value for a in engine.amd] == ["human"]
    assert row["amd_answered_by"] == "human" and row["amd_detected"] is True
    assert row["hangup_source"] == "agent" and row["call_direction"] == "outbound"


# -- transfer ---------------------------------------------------------------------------------------------------
class TransferAtStart(VoiceEngine):
    sample_rate = 16000

    def __init__(self) -> None:
        self.results: list[TransferResult] = []
        self.got_result = asyncio.Event()
        self.dtmf = asyncio.Event()

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, CallStarted):
                await session.play(tone(0.2, 16000), end_of_utterance=True)
                await session.transfer()
            elif isinstance(item, TransferResult):
                self.results.append(item)
                self.got_result.set()
            elif isinstance(item, Dtmf):
                self.dtmf.set()
            elif isinstance(item, Hangup):
                return


async def _transfer_setup(make_gateway, vonage_api, private_pem):
    gw = await _gw(make_gateway, vonage_api, engine="xfer")
    engine = TransferAtStart()
    gw.engines.register("xfer", engine)
    agent = await gw.store.create_agent({"name": "a", "engine": "xfer", "settings": {
        "transfer": {"number": PRIMARY, "backup_numbers": [BACKUP1, BACKUP2], "ring_timeout": 20}}})
    await add_vonage_number(gw, agent_id=agent["id"], private_pem=private_pem)
    uuid = "0a1b2c3d-0000-4000-8000-00000000abcd"
    vonage_api.register({"inbound": True}, uuid)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.get(gw.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                           "uuid": uuid}) as r:
            ncco = await r.json()
    call = await watch.next_call()
    return gw, engine, watch, call, uuid, ncco


async def _transfer_event(gw, call, attempt: int, status: str):
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.post(gw.url(f"/vonage/transfer_event?call_id={call.id}&attempt={attempt}"),
                          json={"uuid": "leg-" + str(attempt), "status": status}) as r:
            return r.status, (await r.json() if r.status == 200 else None)


async def test_transfer_primary_then_backups_then_answered(make_gateway, vonage_api, private_pem):
    gw, engine, watch, call, uuid, ncco = await _transfer_setup(make_gateway, vonage_api, private_pem)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        puts = await vonage_api.wait_request("PUT", f"/v1/calls/{uuid}", timeout=10)
        await v.close()          # Vonage drops the websocket leg when the call moves to the transfer NCCO
    t = puts[0]
    assert t["action"] == "transfer" and t["destination"]["type"] == "ncco"
    first = t["destination"]["ncco"][0]
    assert first["action"] == "connect" and first["endpoint"] == [{"number": PRIMARY[1:], "type": "phone"}]
    assert first["eventType"] == "synchronous" and first["timeout"] == 20 and first["from"] == VONAGE_NUMBER[1:]
    assert first["eventUrl"] == [gw.url(f"/vonage/transfer_event?call_id={call.id}&attempt=0")]
    assert call.is_active                                     # the socket went away, the call did not
    row = await gw.store.get_call(call.log_id)
    assert row["is_call_transfer"] is True and row["transfer_target"] == PRIMARY

    assert await _transfer_event(gw, call, 0, "ringing") == (204, None)
    status, nxt = await _transfer_event(gw, call, 0, "busy")
    assert status == 200 and nxt[0]["endpoint"] == [{"number": BACKUP1[1:], "type": "phone"}]
    assert nxt[0]["eventUrl"] == [gw.url(f"/vonage/transfer_event?call_id={call.id}&attempt=1")]
    status, nxt = await _transfer_event(gw, call, 1, "timeout")
    assert status == 200 and nxt[0]["endpoint"] == [{"number": BACKUP2[1:], "type": "phone"}]
    assert (await _transfer_event(gw, call, 2, "answered"))[0] == 204
    row = await watch.wait_ended(call)
    assert row["transfer_outcome"] == "completed" and row["transfer_target"] == BACKUP2
    assert row["hangup_reason"] == "transferred"
    assert [a["status"] for a in row["extra"]["transfer_attempts"]] == ["busy", "timeout", "answered"]
    assert engine.results and engine.results[-1].outcome == "completed"


async def test_transfer_all_fail_gives_the_caller_back_to_the_agent(make_gateway, vonage_api, private_pem):
    gw, engine, watch, call, uuid, ncco = await _transfer_setup(make_gateway, vonage_api, private_pem)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        await vonage_api.wait_request("PUT", f"/v1/calls/{uuid}", timeout=10)
        await v.close()
        for attempt, st in enumerate(("unanswered", "rejected")):
            status, _ = await _transfer_event(gw, call, attempt, st)
            assert status == 200
        status, back = await _transfer_event(gw, call, 2, "failed")
        assert status == 200 and back[0]["endpoint"][0]["type"] == "websocket"   # reconnect NCCO
        await asyncio.wait_for(engine.got_result.wait(), 5)
        assert engine.results[-1].outcome == "failed" and engine.results[-1].target == BACKUP2
        v2 = FakeVonageSocket(s, back[0]["endpoint"][0], gw_url=gw.url(""))
        await v2.connect()                                          # same call, new socket, engine still there
        await v2.dtmf("9")
        await asyncio.wait_for(engine.dtmf.wait(), 5)
        await v2.play(tone(0.2, 16000), 640)
        assert call.is_active
        await v2.close()
        row = await watch.wait_ended(call)
    assert row["transfer_outcome"] == "failed" and row["hangup_source"] == "user"


async def test_transfer_without_application_credentials_fails_cleanly(make_gateway, vonage_api):
    gw = await _gw(make_gateway, vonage_api, engine="xfer")
    engine = TransferAtStart()
    gw.engines.register("xfer", engine)
    agent = await gw.store.create_agent({"name": "a", "engine": "xfer", "settings": {
        "transfer": {"number": PRIMARY}}})
    await add_vonage_number(gw, agent_id=agent["id"])
    watch = CallWatch(gw)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.get(gw.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                           "uuid": "0a1b2c3d-0000-4000-8000-00000000ffff"}) as r:
            ncco = await r.json()
        call = await watch.next_call()
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        await asyncio.wait_for(engine.got_result.wait(), 5)
        assert engine.results[0].outcome.startswith("failed") and call.is_active
        await v.close()
        await watch.wait_ended(call)
