"""Secure defaults for carriers that cannot always sign: an anonymous caller who knows a Vonage number or an
ExoPhone gets no NCCO, no call row and no engine session unless the number was imported with the explicit, logged
opt-out. Real HTTP and websocket clients against a started gateway."""
from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import aiohttp

from carriers.exotel import CloseCode, ExotelCarrier
from carriers.vonage import VonageCarrier
from exotel_helpers import API_KEY, API_TOKEN, EXOPHONE, CallWatch, FakeExotel, add_exophone, basic, ws_url
from test_exotel_rest import _gw as exotel_gw  # noqa: F401 (fixture)
from test_exotel_rest import exotel_api, import_body  # noqa: F401 (fixture)
from test_vonage_rest import _gw as vonage_gw  # noqa: F401 (fixture)
from test_vonage_rest import _post, private_pem, vonage_api  # noqa: F401 (fixtures)
from test_vonage_rest import body as vonage_body
from vonage_helpers import APP_ID, VONAGE_NUMBER, add_vonage_number, signed_headers

CALL = {"to": VONAGE_NUMBER[1:], "from": "447700900999", "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356"}


async def nothing_opened(gw) -> bool:
    return not gw.calls.active and (await gw.store.list_calls())[1] == 0


# -- Vonage ------------------------------------------------------------------------------------------------------
async def test_vonage_import_requires_a_signature_secret(make_gateway, vonage_api, auth_headers, private_pem,
                                                         caplog):
    gw = await vonage_gw(make_gateway, vonage_api)
    creds = dict(vonage_application_id=APP_ID, vonage_private_key=private_pem)
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              vonage_body(vonage_signature_secret=None, **creds), auth_headers)
    assert status == 400 and res["field"] == "vonage_signature_secret", res
    assert (await gw.store.list_numbers())[1] == 0
    caplog.set_level(logging.WARNING, logger="carriers.vonage")
    status, res = await _post(gw, "/api/v1/phone_number/import/vonage",
                              vonage_body(vonage_signature_secret=None, vonage_allow_unsigned_webhooks=True, **creds),
                              auth_headers)
    assert status == 201 and res["phone_number"]["config"]["vonage_allow_unsigned_webhooks"] is True
    assert any("WITHOUT webhook signatures" in r.getMessage() for r in caplog.records)


async def test_vonage_number_without_secret_is_refused(make_gateway, caplog):
    """A row from before signing was required (no secret, no opt-out): nobody gets a call out of it."""
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw, signature_secret=None)
    caplog.set_level(logging.WARNING, logger="carriers.vonage")
    async with aiohttp.ClientSession() as s:
        for headers in ({}, signed_headers("any-secret-at-all-0123456789abcdef")):
            async with s.get(gw.url("/vonage/answer"), params=CALL, headers=headers) as r:
                assert r.status == 401
            async with s.post(gw.url("/vonage/events"), json={"uuid": CALL["uuid"], "status": "started"},
                              headers=headers) as r:
                assert r.status in (204, 401)
    assert await nothing_opened(gw)
    refused = [r for r in caplog.records if r.getMessage().startswith("unsigned Vonage webhook refused")]
    assert refused and refused[0].source_ip == "127.0.0.1" and refused[0].path == "/vonage/answer"


async def test_vonage_opt_out_accepts_unsigned_and_is_logged_at_start(make_gateway, caplog):
    caplog.set_level(logging.WARNING, logger="carriers.vonage")
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw, signature_secret=None, allow_unsigned=True)
    await gw.carriers["vonage"].start()           # what a restart logs for such a number
    assert any("UNSIGNED" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession() as s, s.get(gw.url("/vonage/answer"), params=CALL) as r:
        assert r.status == 200 and (await r.json())[0]["action"] == "connect"


async def test_vonage_signed_answer_is_accepted(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url("/vonage/answer"), params=CALL) as r:
            assert r.status == 401
        assert await nothing_opened(gw)
        async with s.get(gw.url("/vonage/answer"), params=CALL, headers=signed_headers()) as r:
            assert r.status == 200 and (await r.json())[0]["action"] == "connect"


# -- Exotel ------------------------------------------------------------------------------------------------------
async def test_exotel_anonymous_stream_gets_no_session(make_gateway, exotel_api, auth_headers, caplog):
    gw = await exotel_gw(make_gateway, exotel_api)
    status, res = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 201 and res["phone_number"]["config"]["exotel_allow_unauthenticated"] is False
    caplog.set_level(logging.WARNING, logger="carriers.exotel")
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": basic(API_KEY, "guess")}, {"Authorization": "Bearer x"}):
            exo = await FakeExotel(s, ws_url(gw), headers=headers).connect()
            await exo.start("CA-anon", to=EXOPHONE)
            assert await exo.wait_closed() == CloseCode.BAD_AUTH
            await exo.close()
    assert await nothing_opened(gw)
    refused = [r for r in caplog.records if "Voicebot socket" in r.getMessage()]
    assert len(refused) == 3 and all(r.source_ip == "127.0.0.1" for r in refused)


async def test_exotel_call_coming_needs_its_token(make_gateway, exotel_api, auth_headers):
    gw = await exotel_gw(make_gateway, exotel_api)
    status, res = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    number_id = res["phone_number"]["id"]
    status, test = await _post(gw, f"/api/v1/phone_number/{number_id}/test", {}, auth_headers)
    url = test["report"]["endpoints"]["call_coming"]
    token = parse_qs(urlsplit(url).query)["gw_token"][0]
    assert API_TOKEN not in str(test) and len(token) == 32
    q = {"CallSid": "CA-cc1", "CallFrom": "09876543210", "CallTo": "08047491899"}
    async with aiohttp.ClientSession() as s:
        for params, headers in (({}, {}), ({"gw_token": "0" * 32}, {}),
                                ({}, {"Authorization": basic(API_KEY, "guess")})):
            async with s.get(gw.url("/exotel/call_coming"), params={**q, **params}, headers=headers) as r:
                assert r.status == 403
        assert await nothing_opened(gw)
        async with s.get(url, params=q) as r:          # the URL the connection test shows, as Exotel calls it
            assert r.status == 200
        async with s.get(gw.url("/exotel/call_coming"), params={**q, "CallSid": "CA-cc2"},
                         headers={"Authorization": basic(API_KEY, API_TOKEN)}) as r:
            assert r.status == 200
    rows, total = await gw.store.list_calls()
    assert total == 2 and {r["carrier_sid"] for r in rows} == {"CA-cc1", "CA-cc2"}


async def test_exotel_opt_out_accepts_anonymous_stream(make_gateway, caplog):
    caplog.set_level(logging.WARNING, logger="carriers.exotel")
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw, allow_unauthenticated=True)
    await gw.carriers["exotel"].start()
    assert any("UNAUTHENTICATED" in r.getMessage() for r in caplog.records)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw), headers={}).connect()
        await exo.start("CA-optout")
        call = await watch.next_call()
        assert call.carrier_sid == "CA-optout"
        async with s.get(gw.url("/exotel/call_coming"), params={"CallSid": "CA-optout2",
                                                                "CallTo": "08047491899"}) as r:
            assert r.status == 200
        assert (await gw.store.list_calls())[1] == 2
        await exo.stop()
        await exo.close()
