"""Exotel REST against a loopback server that answers like Exotel: number import checks and outbound calls."""
from __future__ import annotations

import socket

import aiohttp
import pytest

from carriers.exotel import CloseCode, ExotelCarrier
from exotel_helpers import (
    ACCOUNT_SID,
    API_KEY,
    API_TOKEN,
    APP_ID,
    EXOPHONE,
    CallWatch,
    FakeExotel,
    FakeExotelApi,
    basic,
    tone,
    ws_url,
)


@pytest.fixture
async def exotel_api():
    api = await FakeExotelApi().start()
    yield api
    await api.stop()


def import_body(**over):
    body = {"exotel_phone_number": EXOPHONE, "exotel_api_key": API_KEY, "exotel_api_token": API_TOKEN,
            "exotel_subdomain": "@api.in.exotel.com", "exotel_account_sid": ACCOUNT_SID, "exotel_app_id": APP_ID,
            "name": "support line"}
    body.update(over)
    return body


async def _gw(make_gateway, api: FakeExotelApi):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.carriers["exotel"].base_url = api.url
    return gw


async def _post(gw, path, body, headers):
    async with aiohttp.ClientSession() as s, s.post(gw.url(path), json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_import_checks_credentials_and_exophone(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 201, body
    n = body["phone_number"]
    assert n["phone_number"] == EXOPHONE and n["provider"] == "exotel"
    assert n["config"]["exotel_api_token"] == "****" and n["config"]["exotel_api_key"] == "****"
    assert n["config"]["exotel_subdomain"] == "api.in.exotel.com"
    assert n["config"]["exotel_exophone"] == "08047491899"            # Exotel's own spelling, used as CallerId
    assert API_TOKEN not in str(body)
    pages = [q for m, p, q in exotel_api.requests if p.endswith("/IncomingPhoneNumbers")]
    assert [q["Page"] for q in pages] == ["0", "1"]                    # it paged to find the number


async def test_import_rejected_key_token(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel",
                               import_body(exotel_api_token="wrong-token"), auth_headers)
    assert status == 422 and body["field"] == "exotel_api_token"
    assert "Exotel rejected the API key/token" in str(body) and "wrong-token" not in str(body)
    rows, total = await gw.store.list_numbers()
    assert total == 0


async def test_import_unknown_exophone(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel",
                               import_body(exotel_phone_number="+918000000099"), auth_headers)
    assert status == 400
    assert f"ExoPhone +918000000099 not found on account {ACCOUNT_SID}" in str(body)


async def test_import_unreachable_subdomain_and_foreign_host(make_gateway, auth_headers):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    with socket.socket() as s:                         # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw.carriers["exotel"].base_url = f"http://127.0.0.1:{port}"
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 502 and "Exotel API unreachable at 127.0.0.1" in str(body)
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel",
                               import_body(exotel_subdomain="169.254.169.254"), auth_headers)
    assert status == 400 and "not an Exotel API host" in str(body)


async def test_test_connection_report(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    status, body = await _post(gw, "/api/v1/phone_number/test/exotel", import_body(), auth_headers)
    assert status == 200 and body["report"]["ok"] is True
    status, body = await _post(gw, "/api/v1/phone_number/test/exotel", import_body(exotel_api_key="bad"),
                               auth_headers)
    assert body["report"]["ok"] is False
    assert any("rejected the API key/token" in s["detail"] for s in body["report"]["steps"])


async def _imported(gw, auth_headers) -> tuple[int, int]:
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {}})
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 201, body
    return agent["id"], body["phone_number"]["id"]


async def test_outbound_connect_to_flow_then_stream_joins(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    agent_id, number_id = await _imported(gw, auth_headers)
    watch = CallWatch(gw)
    status, body = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent_id, "to_number": "+919876543210",
                                                              "from_number_id": number_id}, auth_headers)
    assert status == 200, body
    call = await watch.next_call()
    method, path, form = exotel_api.requests[-1]
    assert (method, path) == ("POST", f"/v1/Accounts/{ACCOUNT_SID}/Calls/connect.json")
    assert form["From"] == "+919876543210" and form["CallerId"] == "08047491899"
    assert form["Url"] == f"http://my.exotel.com/{ACCOUNT_SID}/exoml/start_voice/{APP_ID}"
    assert form["CallType"] == "trans" and form["StatusCallbackEvents[0]"] == "terminal"
    assert form["StatusCallback"] == gw.url(f"/exotel/status_callback?call_id={call.id}")
    sid = "b6cfaf0ae5bc2bd1bd7fd1d4b5f81234"
    assert call.carrier_sid == sid and call.direction == "outbound"

    async with aiohttp.ClientSession() as s:           # Exotel runs the flow: its Voicebot connects to us
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start(sid, frm="09876543210", to="08047491899")
        await exo.play(tone(0.5))
        await exo.wait_for(lambda rx: rx.chunks)
        assert watch.started.empty()
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()
        async with s.post(gw.url(f"/exotel/status_callback?call_id={call.id}"),
                          data={"CallSid": sid, "Status": "completed", "RecordingUrl": "https://rec.example/1.mp3",
                                "DateUpdated": "2026-11-23 10:01:00"}) as r:
            assert r.status == 200
    row = await gw.store.get_call(call.log_id)
    assert row["call_direction"] == "outbound" and row["answered_at"] is not None
    assert row["recording_url"] == "https://rec.example/1.mp3"
    assert row["extra"]["exotel_status"]["Status"] == "completed"


async def test_outbound_no_answer_status_callback_closes_the_call(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    agent_id, number_id = await _imported(gw, auth_headers)
    watch = CallWatch(gw)
    status, _ = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent_id, "to_number": "+919876543210",
                                                           "from_number_id": number_id}, auth_headers)
    assert status == 200
    call = await watch.next_call()
    async with aiohttp.ClientSession() as s, s.post(gw.url(f"/exotel/status_callback?call_id={call.id}"),
                      data={"CallSid": call.carrier_sid, "Status": "no-answer"}) as r:
        assert r.status == 200
    row = await watch.wait_ended(call)
    assert row["call_status"] == "no-answer" and row["hangup_source"] == "carrier"


async def test_outbound_refused_by_exotel_is_a_clear_error(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    agent_id, number_id = await _imported(gw, auth_headers)
    exotel_api.connect_status = 400
    status, body = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent_id, "to_number": "+919876543210",
                                                              "from_number_id": number_id}, auth_headers)
    assert status == 422 and "Call could not be placed" in str(body)
    assert not gw.calls.active


async def test_stream_auth_with_imported_credentials(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    status, _ = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 201                                   # authentication is the default
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw), headers={}).connect()
        await exo.start("CA-noauth")
        assert await exo.wait_closed() == CloseCode.BAD_AUTH
        exo = await FakeExotel(s, ws_url(gw), headers={"Authorization": basic(API_KEY, API_TOKEN)}).connect()
        await exo.start("CA-auth")
        await exo.play(tone(0.5))
        await exo.wait_for(lambda rx: rx.chunks)
        await exo.close()


async def test_outbound_stream_with_another_leg_sid_joins_by_numbers(make_gateway, exotel_api, auth_headers):
    gw = await _gw(make_gateway, exotel_api)
    agent_id, number_id = await _imported(gw, auth_headers)
    watch = CallWatch(gw)
    status, _ = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent_id, "to_number": "+919876543210",
                                                           "from_number_id": number_id}, auth_headers)
    assert status == 200
    call = await watch.next_call()
    rest_sid = call.carrier_sid
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("leg-sid-not-the-rest-sid", frm="08047491899", to="09876543210")
        await exo.play(tone(0.5))
        await exo.wait_for(lambda rx: rx.chunks)
        assert watch.started.empty() and call.bus is not None      # joined the dispatched call, no new one
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()
        async with s.post(gw.url(f"/exotel/status_callback?call_id={call.id}"),
                          data={"CallSid": rest_sid, "Status": "completed",
                                "RecordingUrl": "https://rec.example/2.mp3"}) as r:
            assert r.status == 200
    row = await gw.store.get_call(call.log_id)
    assert row["recording_url"] == "https://rec.example/2.mp3" and row["call_direction"] == "outbound"
