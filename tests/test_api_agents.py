"""Agents CRUD over real HTTP: validation of engine, webhook URL and telephony settings; PUT vs PATCH."""
from __future__ import annotations

import pytest

from test_api_fakes import api, twilio_body  # noqa: F401

SETTINGS = {
    "transfer": {"number": "+1 415 555 0199", "backup_numbers": ["+14155550198", "+49 30 123456"],
                 "type": "static", "transfer_condition": "caller asks for a human",
                 "transfer_message": "Connecting you now"},
    "end_call": {"enabled": True, "phrases": ["goodbye"]},
    "voicemail": {"enabled": True, "message": "Please call us back"},
    "amd": {"enabled": True, "provider": "gateway"},
}


async def test_create_get_list(api):
    status, body = await api.post("/agents", json={"name": " Support ", "engine": "echo",
                                                   "webhook_url": "https://hooks.example.com/x?t=1",
                                                   "settings": SETTINGS})
    assert status == 201, body
    a = body["agent"]
    assert a["name"] == "Support" and a["engine"] == "echo"
    t = a["settings"]["transfer"]
    assert t["number"] == "+14155550199" and t["backup_numbers"] == ["+14155550198", "+4930123456"]
    assert a["settings"]["amd"] == {"enabled": True, "provider": "gateway"}
    status, body = await api.get(f"/agents/{a['id']}")
    assert status == 200 and body["agent"] == a
    assert (await api.gw.store.get_agent(a["id"]))["settings"]["voicemail"]["message"] == "Please call us back"
    await api.post("/agents", json={"name": "Second"})
    status, body = await api.get("/agents", params={"pagesize": "1", "pageno": "2"})
    assert status == 200 and body["total"] == 2 and [x["name"] for x in body["agents"]] == ["Second"]
    status, body = await api.get("/agents", params={"pagesize": "500"})
    assert status == 400 and body["field"] == "pagesize"


@pytest.mark.parametrize("payload, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x", "engine": "gpt-telepathy"}, "engine"),
    ({"name": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"name": "x", "webhook_url": "not a url"}, "webhook_url"),
    ({"name": "x", "colour": "red"}, "colour"),
    ({"name": "x", "settings": []}, "settings"),
    ({"name": "x", "settings": {"transfer": {"number": "12"}}}, "settings.transfer.number"),
    ({"name": "x", "settings": {"transfer": {"number": "+14155550199", "backup_numbers": ["+1", "x"]}}},
     "settings.transfer.backup_numbers[0]"),
    ({"name": "x", "settings": {"transfer": {"type": "psychic"}}}, "settings.transfer.type"),
    # a number without + is refused, never guessed (4155550130 would have become +41…, Switzerland)
    ({"name": "x", "settings": {"transfer": {"number": "4155550130"}}}, "settings.transfer.number"),
    ({"name": "x", "settings": {"transfer": {"number": "+14155550199", "backup_numbers": ["004930123456"]}}},
     "settings.transfer.backup_numbers[0]"),
    ({"name": "x", "settings": {"voicemail": {"enabled": "sometimes"}}}, "settings.voicemail.enabled"),
    ({"name": "x", "settings": {"amd": {"enabled": True, "provider": "vonage"}}}, "settings.amd.provider"),
    ({"name": "x", "settings": {"end_call": {"phrases": [1]}}}, "settings.end_call.phrases[0]"),
    ({"name": "x", "settings": {"custom": 3}}, "settings.custom"),
])
async def test_create_bad_input(api, payload, field):
    status, body = await api.post("/agents", json=payload)
    assert status == 400 and body["success"] is False, body
    assert body["field"] == field and field in body["error"]
    assert await api.gw.store.list_agents() == []


async def test_put_patch_delete(api):
    status, body = await api.post("/agents", json={"name": "A", "engine": "echo", "settings": SETTINGS,
                                                   "webhook_url": "http://hooks.example.com:9/hook"})
    aid = body["agent"]["id"]
    # PATCH changes only what is sent; settings merge per section
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"transfer": {"number": "+14155550111"}}})
    assert status == 200, body
    a = body["agent"]
    assert a["name"] == "A" and a["engine"] == "echo" and a["webhook_url"] == "http://hooks.example.com:9/hook"
    assert a["settings"]["transfer"]["number"] == "+14155550111"
    assert a["settings"]["transfer"]["transfer_message"] == "Connecting you now"
    assert a["settings"]["voicemail"]["enabled"] is True
    status, body = await api.patch(f"/agents/{aid}", json={"webhook_url": None})
    assert status == 200 and body["agent"]["webhook_url"] is None
    # PUT replaces everything
    status, body = await api.put(f"/agents/{aid}", json={"name": "B"})
    assert status == 200 and body["agent"]["name"] == "B"
    assert body["agent"]["engine"] is None and body["agent"]["settings"] == {}
    status, body = await api.put(f"/agents/{aid}", json={"engine": "echo"})
    assert status == 400 and body["field"] == "name"
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"transfer": {"number": "bad"}}})
    assert status == 400 and body["field"] == "settings.transfer.number"
    assert (await api.gw.store.get_agent(aid))["name"] == "B"   # nothing half-written
    # deleting an agent detaches its numbers
    status, body = await api.post("/phone_number/import/twilio", json={**twilio_body(), "agent_id": aid})
    assert status == 201 and body["phone_number"]["agent_id"] == aid
    nid = body["phone_number"]["id"]
    status, body = await api.delete(f"/agents/{aid}")
    assert status == 200 and body["deleted"] == aid
    assert (await api.gw.store.get_number(nid))["agent_id"] is None
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        status, body = await api.request(method, f"/agents/{aid}", json={"name": "C"})
        assert status == 404 and body["field"] == "id", (method, body)


async def test_webhook_secret_is_write_only(api):
    secret = "whsec-0123456789abcdef"
    status, body = await api.post("/agents", json={"name": "S", "webhook_url": "https://h.example.com/x",
                                                   "settings": {"webhook": {"secret": secret}}})
    assert status == 201 and body["agent"]["settings"]["webhook"]["secret"] == "****"
    aid = body["agent"]["id"]
    stored = lambda: api.gw.store.get_agent(aid)  # noqa: E731
    assert (await stored())["settings"]["webhook"]["secret"] == secret
    for path in (f"/agents/{aid}", "/agents"):
        status, got = await api.get(path)
        assert secret not in str(got) and "****" in str(got)
    # sending the masked GET body back keeps the secret; PATCH of another section keeps it too
    status, got = await api.get(f"/agents/{aid}")
    a = got["agent"]
    status, body = await api.put(f"/agents/{aid}", json={k: a[k] for k in ("name", "engine", "webhook_url",
                                                                           "settings")})
    assert status == 200 and (await stored())["settings"]["webhook"]["secret"] == secret
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"voicemail": {"enabled": True}}})
    assert status == 200 and (await stored())["settings"]["webhook"]["secret"] == secret
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"webhook": {"secret": "short"}}})
    assert status == 400 and body["field"] == "settings.webhook.secret" and "short" not in body["error"]
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"webhook": {"secret": None}}})
    assert status == 200 and (await stored())["settings"]["webhook"]["secret"] is None


async def test_engine_url_password_is_masked_and_kept(make_gateway, auth_headers):
    import aiohttp
    gw = await make_gateway()
    async with aiohttp.ClientSession(headers=auth_headers) as http:
        body = {"name": "a", "engine": "wss://bot:s3cret@eng.example/x"}
        async with http.post(gw.url("/api/v1/agents"), json=body) as r:
            agent = (await r.json())["agent"]
        assert r.status == 201 and agent["engine"] == "wss://bot:****@eng.example/x"
        body = {"name": "b", "engine": agent["engine"]}
        async with http.put(gw.url(f"/api/v1/agents/{agent['id']}"), json=body) as r:
            assert r.status == 200 and "s3cret" not in await r.text()
    assert (await gw.store.get_agent(agent["id"]))["engine"] == "wss://bot:s3cret@eng.example/x"


async def test_patch_merges_each_section_key_by_key(api):
    """Regression: a PATCH carrying part of a section used to reset the keys it did not send (checks filled
    defaults in before the merge): backup numbers dropped, dynamic → static, voicemail and AMD disabled."""
    settings = {"transfer": {"number": "+14155550199", "backup_numbers": ["+14155550198"], "type": "dynamic"},
                "voicemail": {"enabled": True, "message": "Please call us back"},
                "amd": {"enabled": True, "provider": "gateway"}}
    status, body = await api.post("/agents", json={"name": "A", "settings": settings})
    aid = body["agent"]["id"]
    for patch in ({"transfer": {"number": "+14155550111"}}, {"voicemail": {"message": "Call again"}},
                  {"amd": {"provider": "twilio"}}):
        status, body = await api.patch(f"/agents/{aid}", json={"settings": patch})
        assert status == 200, body
    s = (await api.get(f"/agents/{aid}"))[1]["agent"]["settings"]
    assert s["transfer"]["number"] == "+14155550111"
    assert s["transfer"]["backup_numbers"] == ["+14155550198"] and s["transfer"]["type"] == "dynamic"
    assert s["voicemail"] == {"enabled": True, "message": "Call again"}
    assert s["amd"] == {"enabled": True, "provider": "twilio"}
    # an explicit value still replaces, and a bad merged value is still refused naming the field
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"voicemail": {"enabled": False}}})
    assert status == 200 and body["agent"]["settings"]["voicemail"]["enabled"] is False
    status, body = await api.patch(f"/agents/{aid}", json={"settings": {"transfer": {"type": "psychic"}}})
    assert status == 400 and body["field"] == "settings.transfer.type"
