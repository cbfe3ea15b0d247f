"""Calls API over real HTTP: dispatch through a (fake) carrier, call log and events, live calls, hangup and
transfer of a live call, and the error cases (unknown ids, bad numbers, carrier refusal, capacity)."""
from __future__ import annotations

import logging
from datetime import UTC

import aiohttp
import pytest

from gateway.api.calls import mmss
from sipp import wait_for
from test_api_fakes import CARRIERS, SIP_PASSWORD, Api, api, sip_body  # noqa: F401


async def setup_line(api, **agent_settings) -> tuple[int, int]:
    status, body = await api.post("/agents", json={"name": "Caller", "engine": "echo",
                                                   "settings": agent_settings})
    assert status == 201, body
    aid = body["agent"]["id"]
    status, body = await api.post("/phone_number/import/sip", json={**sip_body(), "agent_id": aid})
    assert status == 201, body
    return aid, body["phone_number"]["id"]


async def dispatch(api, aid, nid, to="+14155550123", **extra):
    return await api.post("/calls/dispatch", json={"agent_id": aid, "to_number": to, "from_number_id": nid,
                                                   **extra})


async def test_dispatch_reaches_carrier_and_is_logged(api, caplog):
    caplog.set_level(logging.DEBUG)
    aid, nid = await setup_line(api)
    status, body = await dispatch(api, aid, nid, call_context={"customer": "Dana"})
    assert status == 200, body
    assert body["success"] is True and body["status"] == "dispatched" and isinstance(body["requestId"], int)
    call, number, to = api.gw.carriers["sip"].dispatched[0]
    assert to == "+14155550123" and call.id == body["call_id"] and call.log_id == body["requestId"]
    assert number["secrets"]["sip_password"] == SIP_PASSWORD and number["id"] == nid
    assert call.agent["id"] == aid and call.metadata["call_context"] == {"customer": "Dana"}
    status, live = await api.get("/calls/live")
    assert status == 200 and live["count"] == 1 and live["calls"][0]["call_id"] == call.id
    assert live["calls"][0]["direction"] == "outbound"
    status, log = await api.get(f"/calls/logs/{body['requestId']}")
    assert status == 200
    row = log["call_log"]
    assert row["call_direction"] == "outbound" and row["from_number"] == "+14155550100"
    assert row["to_number"] == "+14155550123" and row["channel_type"] == "sip"
    assert row["call_status"] == "in-progress" and row["call_context"] == {"customer": "Dana"}
    events = [e["event"] for e in log["events"]]
    assert events[:3] == ["phone_call:connection_requested", "phone_call:accepted", "conversation:started"]
    assert SIP_PASSWORD not in str(log) and SIP_PASSWORD not in str(live)
    await api.post(f"/calls/{body['requestId']}/hangup")
    assert SIP_PASSWORD not in caplog.text   # the whole flow at DEBUG, store included


@pytest.mark.parametrize("change, field, code", [
    ({"to_number": "14155550123"}, "to_number", 400),
    ({"to_number": "+12"}, "to_number", 400),
    ({"to_number": None}, "to_number", 400),
    ({"from_number_id": 999}, "from_number_id", 404),
    ({"agent_id": 999}, "agent_id", 404),
    ({"agent_id": "abc"}, "agent_id", 400),
    ({"call_context": "x"}, "call_context", 400),
    ({"to": "+14155550123"}, "to", 400),
])
async def test_dispatch_bad_input(api, change, field, code):
    aid, nid = await setup_line(api)
    payload = {"agent_id": aid, "to_number": "+14155550123", "from_number_id": nid, **change}
    status, body = await api.post("/calls/dispatch", json=payload)
    assert status == code and body["field"] == field and field in body["error"], body
    assert api.gw.carriers["sip"].dispatched == []
    assert (await api.gw.store.list_calls())[1] == 0


async def test_dispatch_from_number_without_loaded_carrier(api):
    aid, _ = await setup_line(api)
    row = await api.gw.store.create_number({"phone_number": "+14155550177", "provider": "vonage", "config": {}}, {})
    status, body = await dispatch(api, aid, row["id"])
    assert status == 409 and body["field"] == "from_number_id" and "vonage" in body["error"]


async def test_carrier_refusal_fails_the_call(api):
    aid, nid = await setup_line(api)
    status, body = await dispatch(api, aid, nid, to="+14155550000")
    assert status == 502 and body["success"] is False and "refused" in body["error"]
    assert SIP_PASSWORD not in body["error"] and "****" in body["error"]
    row = await api.gw.store.get_call(body["requestId"])
    assert row["call_status"] == "failed" and row["hangup_source"] == "carrier"
    assert SIP_PASSWORD not in row["hangup_reason"]
    assert api.gw.calls.active == {}


async def test_capacity_gives_503(make_gateway):
    gw = await make_gateway(carriers=CARRIERS, max_calls=1)
    async with aiohttp.ClientSession() as s:
        a = Api(gw, s, gw.api_key)
        aid, nid = await setup_line(a)
        assert (await dispatch(a, aid, nid))[0] == 200
        status, body = await dispatch(a, aid, nid)
        assert status == 503 and "capacity" in body["error"]
        assert len(gw.carriers["sip"].dispatched) == 1


async def test_hangup_live_call(api):
    aid, nid = await setup_line(api)
    _, body = await dispatch(api, aid, nid)
    log_id, call_id = body["requestId"], body["call_id"]
    leg = api.gw.carriers["sip"].legs[call_id]
    status, body = await api.post(f"/calls/{log_id}/hangup")
    assert status == 200 and body["status"] == "hangup_requested"
    assert leg.hangups == ["api_hangup"]
    assert api.gw.calls.get(call_id) is None
    row = await api.gw.store.get_call(log_id)
    assert row["call_status"] == "completed" and row["hangup_source"] == "system"
    assert row["hangup_reason"] == "api_hangup"
    status, body = await api.post(f"/calls/{log_id}/hangup")
    assert status == 404 and body["field"] == "id" and "not live" in body["error"]
    status, body = await api.post("/calls/4242/hangup")
    assert status == 404 and "not found" in body["error"]
    # by call uuid
    _, body = await dispatch(api, aid, nid)
    status, _ = await api.post(f"/calls/{body['call_id']}/hangup")
    assert status == 200 and api.gw.calls.active == {}


async def test_transfer_live_call(api):
    aid, nid = await setup_line(api, transfer={"number": "+14155550188", "backup_numbers": ["+14155550189"]})
    _, body = await dispatch(api, aid, nid)
    leg = api.gw.carriers["sip"].legs[body["call_id"]]
    status, resp = await api.post(f"/calls/{body['requestId']}/transfer", json={"number": "+1 415 555 0177"})
    assert status == 200 and resp["number"] == "+14155550177", resp
    await wait_for(lambda: leg.transfers)
    assert leg.transfers[0].number == "+14155550177"
    # no number: the agent's configured one, with its backups
    status, resp = await api.post(f"/calls/{body['call_id']}/transfer")
    assert status == 200 and resp["number"] == "+14155550188"
    await wait_for(lambda: len(leg.transfers) == 2)
    assert leg.transfers[1].backup_numbers == ["+14155550189"]
    await wait_for(lambda: api.gw.calls.get(body["call_id"]).transfer_result is not None)
    status, resp = await api.post(f"/calls/{body['requestId']}/transfer", json={"number": "nope"})
    assert status == 400 and resp["field"] == "number"
    status, resp = await api.post("/calls/999/transfer", json={"number": "+14155550177"})
    assert status == 404 and resp["field"] == "id"


async def test_transfer_without_any_number(api):
    aid, nid = await setup_line(api)
    _, body = await dispatch(api, aid, nid)
    status, resp = await api.post(f"/calls/{body['requestId']}/transfer", json={})
    assert status == 400 and resp["field"] == "number" and "no transfer number" in resp["error"]
    assert api.gw.carriers["sip"].legs[body["call_id"]].transfers == []


async def test_call_logs_list_filters_and_fields(api):
    aid, nid = await setup_line(api)
    status, body = await api.post("/agents", json={"name": "Other"})
    other = body["agent"]["id"]
    ids = []
    for i in range(3):
        _, body = await dispatch(api, aid, nid, to=f"+1415555012{i}")
        ids.append(body["requestId"])
        await api.post(f"/calls/{body['requestId']}/hangup")
    await dispatch(api, other, nid)                      # still live: in-progress
    await dispatch(api, aid, nid, to="+14155550000")     # refused: failed
    status, body = await api.get("/calls/logs", params={"pagesize": "2"})
    assert status == 200 and body["total"] == 5 and len(body["call_log_data"]) == 2
    status, body = await api.get("/calls/logs", params={"agentid": str(aid), "call_status": "completed"})
    assert status == 200 and body["total"] == 3
    assert sorted(c["id"] for c in body["call_log_data"]) == ids
    c = body["call_log_data"][0]
    for key in ("call_direction", "from_number", "to_number", "call_status", "call_duration",
                "call_duration_in_seconds", "is_call_transfer", "amd_detected", "amd_answered_by", "amd_duration",
                "is_voicemail", "voicemail_type", "is_fax", "hangup_source", "hangup_reason", "recording_url",
                "channel_type"):
        assert key in c, key
    assert c["hangup_source"] == "system" and ":" in c["call_duration"]
    status, body = await api.get("/calls/logs", params={"agentid": str(other)})
    assert body["total"] == 1 and body["call_log_data"][0]["call_status"] == "in-progress"
    status, body = await api.get("/calls/logs", params={"call_status": "failed"})
    assert body["total"] == 1
    for params, field in (({"pagesize": "151"}, "pagesize"), ({"agentid": "x"}, "agentid"),
                          ({"pageno": "-1"}, "pageno"), ({"status": "failed"}, "status"),
                          # regression: an unknown status used to give 200 and an empty page
                          ({"call_status": "bogus"}, "call_status"), ({"call_status": "Completed"}, "call_status")):
        status, body = await api.get("/calls/logs", params=params)
        assert status == 400 and body["field"] == field, body
    assert "no-answer" in body["error"]   # the error lists the statuses that exist
    status, body = await api.get("/calls/logs/99999")
    assert status == 404 and body["field"] == "id"
    row = await api.gw.store.get_call(ids[0])
    status, body = await api.get(f"/calls/logs/{row['call_uuid']}")
    assert status == 200 and body["call_log"]["id"] == ids[0]
    assert [e["event"] for e in body["events"]][-2:] == ["conversation:ended", "hang_up"]


def test_mmss():
    assert [mmss(x) for x in (None, 0, 59.4, 59.6, 61, 3600)] == ["0:00", "0:00", "0:59", "1:00", "1:01", "60:00"]


async def test_call_logs_filter_by_carrier_and_date(api):
    from datetime import datetime, timedelta

    store = api.gw.store
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    for uuid, carrier, at in (("a", "sip", day), ("b", "twilio", day + timedelta(hours=13, minutes=59)),
                              ("c", "twilio", day + timedelta(days=1))):
        await store.create_call({"call_uuid": uuid, "channel_type": carrier, "call_direction": "inbound",
                                 "call_status": "completed", "created_at": at})

    async def uuids(**params: str) -> list[str]:
        status, body = await api.get("/calls/logs", params=params)
        assert status == 200, body
        assert body["total"] == len(body["call_log_data"])
        return [c["call_uuid"] for c in body["call_log_data"]]

    assert await uuids(carrier="twilio") == ["c", "b"]
    assert await uuids(since="2026-11-20", until="2026-11-20") == ["b", "a"]     # a bare date: the whole UTC day
    assert await uuids(since="2026-11-21") == ["c"]
    assert await uuids(until="2026-11-20T10:00:00Z") == ["a"]                   # a date-time end is inclusive
    assert await uuids(since="2026-11-20T12:00:00+02:00", carrier="twilio") == ["c", "b"]
    assert await uuids(carrier="vonage") == []
    for params, field in (({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
                          ({"since": "2026-11-21", "until": "2026-11-20"}, "until")):
        status, body = await api.get("/calls/logs", params=params)
        assert status == 400 and body["field"] == field, body
