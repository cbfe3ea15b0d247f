"""Phone-number API over real HTTP against a real SQLite file: import per provider, list, show, attach/detach,
delete, connection tests, and every bad input the issue lists (nothing half-written on error)."""
from __future__ import annotations

import logging

import pytest

from test_api_fakes import EXOTEL_TOKEN, SIP_PASSWORD, TWILIO_TOKEN, api, exotel_body, sip_body, twilio_body  # noqa: F401


async def count_numbers(api) -> int:
    rows, total = await api.gw.store.list_numbers(1, 150)
    return total


async def make_agent(api, **over) -> int:
    status, body = await api.post("/agents", json={"name": "A", **over})
    assert status == 201, body
    return body["agent"]["id"]


async def test_import_sip_stores_fields_and_masks_password(api, caplog):
    caplog.set_level(logging.DEBUG)
    status, body = await api.post("/phone_number/import/sip", json=sip_body(phone_number="+1 (415) 555-0100"))
    assert status == 201, body
    n = body["phone_number"]
    assert n["phone_number"] == "+14155550100"
    assert n["provider"] == "sip" and n["sip_trunk_name"] == "main-trunk" and n["name"] == "Main"
    assert n["config"]["sip_port"] == 5070 and n["config"]["sip_strip_plus"] is True
    assert n["config"]["transport"] == "tcp" and n["config"]["allowed_ips"] == ["127.0.0.1"]
    assert n["config"]["sip_password"] == "****"
    # stored for the carrier, in the secrets column only
    row = await api.gw.store.get_number(n["id"], with_secrets=True)
    assert row["secrets"] == {"sip_password": SIP_PASSWORD}
    assert SIP_PASSWORD not in str(row["config"])
    carrier = api.gw.carriers["sip"]
    assert carrier.imported[0]["secrets"]["sip_password"] == SIP_PASSWORD
    assert carrier.validated[0]["sip_port"] == 5070
    # never echoed by show/list, never logged
    for path in (f"/phone_number/{n['id']}", "/phone_number/list"):
        status, text = await api.request("GET", path)
        assert status == 200 and SIP_PASSWORD not in str(text)
    assert SIP_PASSWORD not in caplog.text


async def test_import_defaults_and_optional_secret_unset(api):
    status, body = await api.post("/phone_number/import/sip", json={
        "phone_number": "+14155550100", "sip_host": "pbx.example.com", "sip_trunk_name": "ip-trunk",
        "auth_type": "ip"})
    assert status == 201, body
    cfg = body["phone_number"]["config"]
    assert cfg["sip_port"] == 5060 and cfg["transport"] == "udp" and cfg["sip_strip_plus"] is False
    assert cfg["sip_password"] is None


async def test_import_twilio_and_exotel(api):
    status, body = await api.post("/phone_number/import/twilio", json=twilio_body())
    assert status == 201, body
    assert body["phone_number"]["config"] == {"account_sid": "AC" + "1" * 32, "account_token": "****"}
    status, body = await api.post("/phone_number/import/exotel", json=exotel_body())
    assert status == 201, body
    n = body["phone_number"]
    assert n["phone_number"] == "+918047112233" and n["provider"] == "exotel"
    assert "exotel_phone_number" not in n["config"] and n["config"]["exotel_api_token"] == "****"
    status, listing = await api.get("/phone_number/list")
    assert TWILIO_TOKEN not in str(listing) and EXOTEL_TOKEN not in str(listing)
    # the carrier gets its own field names back for a connection test, secrets included
    status, report = await api.post(f"/phone_number/{n['id']}/test")
    assert status == 200, report
    seen = api.gw.carriers["exotel"].tested[-1]
    assert seen["exotel_phone_number"] == "+918047112233" and seen["exotel_api_token"] == EXOTEL_TOKEN
    assert EXOTEL_TOKEN not in str(report) and "used ****" in str(report)


@pytest.mark.parametrize("body, field, status", [
    ({"sip_host": "h", "sip_trunk_name": "t"}, "phone_number", 400),
    ({"phone_number": "4155550100x", "sip_host": "h", "sip_trunk_name": "t"}, "phone_number", 400),
    ({"phone_number": "+0123", "sip_host": "h", "sip_trunk_name": "t"}, "phone_number", 400),
    ({"phone_number": "+14155550100", "sip_trunk_name": "t"}, "sip_host", 400),
    ({"phone_number": "+14155550100", "sip_host": "  ", "sip_trunk_name": "t"}, "sip_host", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "sip_port": "abc"}, "sip_port", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "sip_port": True}, "sip_port", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "transport": "sctp"},
     "transport", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "register": "maybe"},
     "register", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "sip_pasword": "x"},
     "sip_pasword", 400),
    ({"phone_number": "+14155550100", "sip_host": 5, "sip_trunk_name": "t"}, "sip_host", 400),
    # a typed number must carry its + (4155550130 used to be stored as +4155550130, Switzerland)
    ({"phone_number": "4155550130", "sip_host": "h", "sip_trunk_name": "t"}, "phone_number", 400),
    ({"phone_number": 14155550100, "sip_host": "h", "sip_trunk_name": "t"}, "phone_number", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "sip_password": "****"},
     "sip_password", 400),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "agent_id": 999}, "agent_id", 404),
    ({"phone_number": "+14155550100", "sip_host": "h", "sip_trunk_name": "t", "agent_id": "x"}, "agent_id", 400),
])
async def test_import_bad_input_names_field_and_stores_nothing(api, body, field, status):
    code, resp = await api.post("/phone_number/import/sip", json=body)
    assert code == status, resp
    assert resp["success"] is False and resp["field"] == field and field in resp["error"]
    assert await count_numbers(api) == 0


async def test_import_invalid_json_and_non_object(api):
    for raw in (b"{not json", b"[1, 2]", b'"x"'):
        status, body = await api.post("/phone_number/import/sip", data=raw,
                                      headers={"Content-Type": "application/json"})
        assert status == 400 and body["field"] == "body", body
    assert await count_numbers(api) == 0


async def test_import_unknown_provider_lists_available(api):
    status, body = await api.post("/phone_number/import/plivo", json={"phone_number": "+14155550100"})
    assert status == 404 and body["field"] == "provider"
    for p in ("sip", "twilio", "exotel"):
        assert p in body["error"]


async def test_duplicate_trunk_name_and_number_conflict(api):
    assert (await api.post("/phone_number/import/sip", json=sip_body()))[0] == 201
    status, body = await api.post("/phone_number/import/sip", json=sip_body(phone_number="+14155550199"))
    assert status == 409 and body["field"] == "sip_trunk_name", body
    status, body = await api.post("/phone_number/import/sip", json=sip_body(sip_trunk_name="other"))
    assert status == 409 and body["field"] == "phone_number", body
    assert await count_numbers(api) == 1
    # the carrier was not asked to validate the rejected imports
    assert len(api.gw.carriers["sip"].validated) == 1


async def test_carrier_rejection_is_relayed_without_secret(api, caplog):
    status, body = await api.post("/phone_number/import/sip", json=sip_body(name="reject"))
    assert status == 401 and body["success"] is False
    assert "rejected" in body["error"] and SIP_PASSWORD not in body["error"]
    assert await count_numbers(api) == 0
    assert SIP_PASSWORD not in caplog.text


async def test_failed_on_number_imported_rolls_back(api):
    status, body = await api.post("/phone_number/import/sip", json=sip_body(name="explode-on-import"))
    assert status == 400 and "registration" in body["error"]
    assert await count_numbers(api) == 0


async def test_list_pagination(api):
    for i in range(5):
        status, _ = await api.post("/phone_number/import/sip",
                                   json=sip_body(phone_number=f"+1415555010{i}", sip_trunk_name=f"t{i}"))
        assert status == 201
    status, body = await api.get("/phone_number/list", params={"pageno": "2", "pagesize": "2"})
    assert status == 200
    assert body["total"] == 5 and body["pageno"] == 2 and body["pagesize"] == 2
    assert [n["sip_trunk_name"] for n in body["phone_numbers"]] == ["t2", "t3"]
    status, body = await api.get("/phone_number/list", params={"pagesize": "150"})
    assert status == 200 and len(body["phone_numbers"]) == 5
    await api.post("/phone_number/import/twilio", json={"phone_number": "+14155550111", "account_sid": "AC1",
                                                        "account_token": "tok-tok-tok"})
    status, body = await api.get("/phone_number/list", params={"provider": "twilio"})
    assert status == 200 and body["total"] == 1 and body["phone_numbers"][0]["provider"] == "twilio"
    for params, field in (({"pagesize": "151"}, "pagesize"), ({"pagesize": "0"}, "pagesize"),
                          ({"pageno": "0"}, "pageno"), ({"pageno": "x"}, "pageno"),
                          ({"page_size": "10"}, "page_size")):
        status, body = await api.get("/phone_number/list", params=params)
        assert status == 400 and body["field"] == field, body
        assert field in body["error"]


async def test_show_attach_detach_delete(api):
    agent_id = await make_agent(api)
    status, body = await api.post("/phone_number/import/twilio", json=twilio_body())
    nid = body["phone_number"]["id"]
    status, body = await api.post("/phone_number/attach", json={"phone_number_id": nid, "agent_id": agent_id})
    assert status == 200 and body["phone_number"]["agent_id"] == agent_id
    status, body = await api.get(f"/phone_number/{nid}")
    assert status == 200 and body["phone_number"]["agent_id"] == agent_id
    assert (await api.gw.store.get_number(nid))["agent_id"] == agent_id
    for payload, field, code in (({"phone_number_id": 999, "agent_id": agent_id}, "phone_number_id", 404),
                                 ({"phone_number_id": nid, "agent_id": 999}, "agent_id", 404),
                                 ({"phone_number_id": nid}, "agent_id", 400),
                                 ({"agent_id": agent_id}, "phone_number_id", 400),
                                 ({"phone_number_id": "one", "agent_id": agent_id}, "phone_number_id", 400)):
        status, body = await api.post("/phone_number/attach", json=payload)
        assert status == code and body["field"] == field, (payload, body)
    status, body = await api.post("/phone_number/detach", json={"phone_number_id": nid})
    assert status == 200 and body["phone_number"]["agent_id"] is None
    status, body = await api.post("/phone_number/detach", json={"phone_number_id": 12345})
    assert status == 404 and body["field"] == "phone_number_id"
    status, body = await api.delete(f"/phone_number/{nid}")
    assert status == 200 and body["deleted"] == nid
    assert await api.gw.store.get_number(nid) is None
    assert api.gw.carriers["twilio"].deleted[0]["id"] == nid
    for method in ("GET", "DELETE"):
        status, body = await api.request(method, f"/phone_number/{nid}")
        assert status == 404 and body["field"] == "id"
    status, body = await api.get("/phone_number/abc")
    assert status == 400 and body["field"] == "id"


async def test_connection_tests(api):
    status, body = await api.post("/phone_number/test/sip", json=sip_body())
    assert status == 200, body
    assert body["report"]["ok"] is True and SIP_PASSWORD not in str(body)
    assert api.gw.carriers["sip"].tested[-1]["sip_password"] == SIP_PASSWORD
    assert await count_numbers(api) == 0   # testing imports nothing
    status, body = await api.post("/phone_number/test/sip", json=sip_body(sip_port="x"))
    assert status == 400 and body["field"] == "sip_port"
    status, body = await api.post("/phone_number/test/sip", json=sip_body(name="unreachable"))
    assert status == 502 and "no answer" in body["error"]
    status, body = await api.post("/phone_number/import/sip", json=sip_body())
    nid = body["phone_number"]["id"]
    status, body = await api.post(f"/phone_number/{nid}/test")
    assert status == 200 and body["phone_number_id"] == nid
    seen = api.gw.carriers["sip"].tested[-1]
    assert seen["sip_password"] == SIP_PASSWORD and seen["sip_host"] == "127.0.0.1"
    assert seen["sip_trunk_name"] == "main-trunk" and seen["phone_number"] == "+14155550100"
    status, body = await api.post("/phone_number/777/test")
    assert status == 404 and body["field"] == "id"


async def test_number_of_unloaded_carrier_cannot_be_tested(api):
    row = await api.gw.store.create_number({"phone_number": "+14155550100", "provider": "vonage", "config": {}},
                                           {"api_secret": "zzz-secret"})
    status, body = await api.get(f"/phone_number/{row['id']}")
    assert status == 200 and body["phone_number"]["config"] == {"api_secret": "****"}
    status, body = await api.post(f"/phone_number/{row['id']}/test")
    assert status == 409 and body["field"] == "provider"


async def test_concurrent_imports_of_one_trunk_name(api):
    """Racing imports: exactly one wins, the others get 409 (the store's unique index backs the pre-check)."""
    import asyncio
    results = await asyncio.gather(*[
        api.post("/phone_number/import/sip", json=sip_body(phone_number=f"+1415555012{i}")) for i in range(6)])
    codes = sorted(code for code, _ in results)
    assert codes == [201] + [409] * 5, results
    assert all(body["field"] == "sip_trunk_name" for code, body in results if code == 409)
    assert await count_numbers(api) == 1


async def test_concurrent_imports_of_one_number(api):
    """Two imports of one number with different trunk names, both inside validate_import at once: one 409."""
    import asyncio
    carrier = api.gw.carriers["sip"]
    gate, inside = asyncio.Event(), []
    original = carrier.validate_import

    async def slow_validate(fields):
        inside.append(fields["sip_trunk_name"])
        await gate.wait()
        return await original(fields)

    carrier.validate_import = slow_validate
    tasks = [asyncio.create_task(api.post("/phone_number/import/sip", json=sip_body(sip_trunk_name=f"t{i}")))
             for i in range(2)]

    async def both_inside():
        while len(inside) < 2:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(both_inside(), 5)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert sorted(code for code, _ in results) == [201, 409], results
    assert [b["field"] for c, b in results if c == 409] == ["phone_number"]
    assert await count_numbers(api) == 1


async def test_update_number(api, caplog):
    caplog.set_level(logging.DEBUG)
    carrier = api.gw.carriers["sip"]
    agent_id = await make_agent(api)
    status, body = await api.post("/phone_number/import/sip", json={**sip_body(), "agent_id": agent_id})
    nid = body["phone_number"]["id"]
    await api.post("/phone_number/import/sip", json=sip_body(phone_number="+14155550155", sip_trunk_name="other"))
    # change the host and port, keep the password by sending the mask back
    status, body = await api.patch(f"/phone_number/{nid}", json={"sip_host": "10.0.0.7", "sip_port": "5080",
                                                                 "sip_password": "****"})
    assert status == 200, body
    n = body["phone_number"]
    assert n["config"]["sip_host"] == "10.0.0.7" and n["config"]["sip_port"] == 5080
    assert n["config"]["sip_password"] == "****" and n["agent_id"] == agent_id
    assert n["config"]["transport"] == "tcp" and n["sip_trunk_name"] == "main-trunk"   # untouched fields stay
    row = await api.gw.store.get_number(nid, with_secrets=True)
    assert row["secrets"] == {"sip_password": SIP_PASSWORD}
    assert carrier.deleted[-1]["config"]["sip_host"] == "127.0.0.1"        # the carrier re-registers
    assert carrier.imported[-1]["config"]["sip_host"] == "10.0.0.7"
    # rotate the password
    status, body = await api.patch(f"/phone_number/{nid}", json={"sip_password": "n3w-Passw0rd!!"})
    assert status == 200 and "n3w-Passw0rd!!" not in str(body)
    assert (await api.gw.store.get_number(nid, with_secrets=True))["secrets"]["sip_password"] == "n3w-Passw0rd!!"
    assert "n3w-Passw0rd!!" not in caplog.text and SIP_PASSWORD not in caplog.text
    # bad input changes nothing
    before = await api.gw.store.get_number(nid, with_secrets=True)
    for payload, field, code in (({"sip_port": "x"}, "sip_port", 400), ({"phone_number": "12"}, "phone_number", 400),
                                 ({"sip_host": ""}, "sip_host", 400), ({"agent_id": 1}, "agent_id", 400),
                                 ({"sip_trunk_name": "other"}, "sip_trunk_name", 409),
                                 ({"phone_number": "+14155550155"}, "phone_number", 409)):
        status, body = await api.patch(f"/phone_number/{nid}", json=payload)
        assert status == code and body["field"] == field, (payload, body)
    status, body = await api.patch(f"/phone_number/{nid}", json={"name": "reject"})
    assert status == 401
    status, body = await api.patch(f"/phone_number/{nid}", json={"name": "explode-on-import"})
    assert status == 400 and "registration" in body["error"]
    after = await api.gw.store.get_number(nid, with_secrets=True)
    assert after == before                                               # restored
    assert carrier.imported[-1]["name"] == "Main"                        # and handed back to the carrier
    status, body = await api.patch("/phone_number/999", json={"name": "x"})
    assert status == 404 and body["field"] == "id"
