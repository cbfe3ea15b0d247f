"""OmniDimension-compatible response fields (docs/omnidimension-compat.md): a client written against the
documented OmniDimension responses reads ours unchanged, and every field of ours is still there."""
from __future__ import annotations

import re

from test_api_calls import dispatch, setup_line
from test_api_fakes import EXOTEL_TOKEN, SIP_PASSWORD, api, exotel_body, sip_body  # noqa: F401


async def test_number_import_list_attach_detach_fields(api):
    status, body = await api.post("/phone_number/import/sip", json=sip_body())
    assert status == 201, body
    assert body["success"] is True and body["id"] == body["phone_number"]["id"] and "imported" in body["message"]
    nid = body["id"]
    status, body = await api.post("/phone_number/import/exotel", json=exotel_body())
    assert status == 201, body
    status, listing = await api.get("/phone_number/list")
    assert listing["total_records"] == listing["total"] == 2
    sip, exo = listing["phone_numbers"]
    assert sip["number_provider"] == "sip" and sip["active_bot_id"] is False
    assert (sip["sip_host"], sip["sip_port"], sip["sip_username"], sip["sip_trunk_name"]) == \
        ("127.0.0.1", 5070, "alice", "main-trunk")
    assert sip["sip_password"] == "****" and SIP_PASSWORD not in str(listing)
    assert exo["number_provider"] == "exotel" and exo["exotel_account_sid"] == "acme1"
    assert exo["exotel_api_token"] == "****" and EXOTEL_TOKEN not in str(listing)
    assert sip["config"]["sip_host"] == "127.0.0.1" and sip["provider"] == "sip"     # ours kept
    status, body = await api.post("/agents", json={"name": "bot"})
    aid = body["agent"]["id"]
    status, body = await api.post("/phone_number/attach", json={"phone_number_id": nid, "agent_id": aid})
    assert status == 200 and body["phone_number_id"] == nid and body["message"]
    assert body["phone_number"]["active_bot_id"] == aid
    status, body = await api.post("/phone_number/detach", json={"phone_number_id": nid})
    assert status == 200 and body["phone_number_id"] == nid and body["message"]
    assert body["phone_number"]["active_bot_id"] is False


async def test_call_log_fields_dispatch_without_from_number_and_bulk_filter(api):
    aid, nid = await setup_line(api)
    # from_number_id is optional: the agent's attached number is used
    status, body = await api.post("/calls/dispatch", json={"agent_id": aid, "to_number": "+14155550123",
                                                           "call_context": {"bulk_call_id": 7}})
    assert status == 200, body
    first = body["requestId"]
    assert (await api.gw.store.get_call(first))["phone_number_id"] == nid
    await api.post(f"/calls/{first}/hangup")
    await dispatch(api, aid, nid)
    status, body = await api.post("/agents", json={"name": "lonely"})
    status, err = await api.post("/calls/dispatch", json={"agent_id": body["agent"]["id"],
                                                          "to_number": "+14155550123"})
    assert status == 400 and err["field"] == "from_number_id" and "no phone number attached" in err["error"]

    status, body = await api.get("/calls/logs")
    assert body["total_records"] == body["total"] == 2
    status, body = await api.get("/calls/logs", params={"bulk_call_id": "7"})
    assert body["total_records"] == 1
    row = body["call_log_data"][0]
    assert row["id"] == first
    assert isinstance(row["call_duration_in_seconds"], int)
    assert abs(row["call_duration_in_minutes"] * 60 - row["call_duration_in_seconds"]) <= 1
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", row["time_of_call"])
    assert row["recording_url"] is False and re.fullmatch(r"\d+:\d\d", row["call_duration"])
    status, body = await api.get("/calls/logs", params={"bulk_call_id": "x"})
    assert status == 400 and body["field"] == "bulk_call_id"
    # a single log comes as a one-item call_log_data too
    status, body = await api.get(f"/calls/logs/{first}")
    assert body["call_log_data"] == [body["call_log"]] and body["call_log"]["id"] == first
