"""Attended transfer on SIP trunks, against SIPp on real sockets: consultation call, REFER with Replaces, cancel,
the gateway bridge when the trunk refuses REFER, and INVITEs carrying Replaces (RFC 3891) into the gateway."""
import asyncio
import json
from urllib.parse import quote

import pytest

from sipp import api, needs_sipp, sip_gateway, sip_number, sipp_uac, sipp_uas, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(120)]

TARGET = "+15551112222"


async def answered_call(gw, num):
    d = await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                   "to_number": "+15559876543"}, expect=200)
    call = await wait_for(lambda: (c := gw.calls.get(d["call_id"])) is not None and c.status == "in-progress" and c,
                          what="the call answered")
    return d, call


async def final_row(gw, log_id, timeout=20):
    async def ended():
        row = await gw.store.get_call(log_id)
        return row if row and row.get("ended_at") else None
    return await wait_for(ended, timeout, what="the call ended in the log")


async def consult_answered(gw, call):
    reply = await api(gw, "POST", f"/calls/{call.id}/consult", {"number": TARGET}, expect=200)
    assert reply["status"] == "consult_dialing" and reply["number"] == TARGET
    await wait_for(lambda: call.consultation is not None and call.consultation.state == "answered", 15,
                   what="the consultation answered")
    return gw.carriers["sip"].legs[call.id]


async def events_of(gw, log_id):
    return [(e["kind"], e["data"]) for e in await gw.store.list_call_events(log_id)]


async def test_consult_then_complete_by_refer_with_replaces(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_consult.xml", calls=2, timeout_s=30, rtp_echo=True) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_strip_plus=True)
        d, call = await answered_call(gw, num)
        leg = await consult_answered(gw, call)
        consult = leg.consultation
        # the engine's audio path is the target's now; the caller is on hold
        assert consult.other.rtp.call is call and leg.rtp.call is not call
        frames = call.bus.counters.frames_in
        await wait_for(lambda: call.bus.counters.frames_in >= frames + 10, 5, what="target audio reaching the bus")
        target_dialog = consult.other.session.dialog
        reply = await api(gw, "POST", f"/calls/{call.id}/consult/complete", {}, expect=200)
        assert reply["method"] == "refer_replaces" and reply["status"] == "transferred"
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)   # caller leg: REFER+Replaces, NOTIFYs, BYE; consultation leg: BYE
    replaces = f"{target_dialog.call_id};to-tag={target_dialog.remote_tag};from-tag={target_dialog.local_tag}"
    assert row["extra"]["refer_to"] == f"sip:15551112222@127.0.0.1:{uas.port}?Replaces={quote(replaces, safe='')}"
    assert row["extra"]["transfer_method"] == "refer_replaces"
    assert row["extra"]["consult"]["state"] == "completed"
    assert (row["is_call_transfer"], row["transfer_target"], row["transfer_outcome"]) == (True, TARGET, "completed")
    assert row["hangup_reason"] == f"transferred to {TARGET} (attended)"
    states = [data["state"] for kind, data in await events_of(gw, d["requestId"]) if kind == "call:consult"]
    assert states == ["dialing", "answered", "completed"]


async def test_consult_cancel_returns_the_caller_to_the_engine(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_consult.xml", calls=2, timeout_s=30, rtp_echo=True) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        leg = await consult_answered(gw, call)
        reply = await api(gw, "POST", f"/calls/{call.id}/consult/cancel", {}, expect=200)
        assert reply["status"] == "consult_cancelled"
        assert call.consultation.state == "cancelled" and leg.consultation is None and leg.rtp.call is call
        # the caller is heard by the engine again: the echo engine's audio flows back to the caller's leg
        sent = call.bus.counters.frames_out
        await wait_for(lambda: call.bus.counters.frames_out >= sent + 10, 5, what="engine audio to the caller")
        again = await api(gw, "POST", f"/calls/{call.id}/consult/cancel", {}, expect=409)
        assert again["field"] == "id" and "no consultation in progress" in again["error"]
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)
    assert row["is_call_transfer"] is False and row["hangup_reason"] == "api_hangup"
    states = [data["state"] for kind, data in await events_of(gw, d["requestId"]) if kind == "call:consult"]
    assert states == ["dialing", "answered", "cancelled"]


async def test_refer_refused_the_gateway_bridges_caller_and_target(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_refer_reject.xml", calls=2, timeout_s=30, rtp_echo=True) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        leg = await consult_answered(gw, call)
        reply = await api(gw, "POST", f"/calls/{call.id}/consult/complete", {}, expect=200)
        assert reply["method"] == "bridge"
        bridge = leg.bridge
        # SIPp echoes each leg's RTP: audio crosses the gateway's bridge both ways
        await wait_for(lambda: bridge.stats["a_to_b"] >= 20 and bridge.stats["b_to_a"] >= 20, 5,
                       what="audio both ways through the bridge")
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)   # both legs got their BYE
    assert row["extra"]["transfer_method"] == "bridge" and row["extra"]["refer_status"].startswith("603")
    assert row["extra"]["rtp"]["bridge"]["a_to_b"] >= 20 and row["extra"]["rtp"]["bridge"]["b_to_a"] >= 20
    assert (row["transfer_target"], row["transfer_outcome"]) == (TARGET, "completed")


async def test_consult_refusals_name_the_reason(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_consult.xml", calls=1, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        r = await api(gw, "POST", f"/calls/{call.id}/consult/complete", {}, expect=409)
        assert "no answered consultation" in r["error"]
        r = await api(gw, "POST", f"/calls/{call.id}/consult", {"number": "12"}, expect=400)
        assert r["field"] == "number"
        r = await api(gw, "POST", f"/calls/{call.id}/consult", {"number": TARGET, "colour": "red"}, expect=400)
        assert r["field"] == "colour"
        r = await api(gw, "POST", f"/calls/{call.id}/consult", {}, expect=400)   # the agent has no transfer number
        assert r["field"] == "number" and "no transfer number" in r["error"]
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        await final_row(gw, d["requestId"])
    r = await api(gw, "POST", f"/calls/{call.id}/consult", {"number": TARGET}, expect=404)
    assert r["field"] == "id"


async def inbound_call(gw):
    """An inbound call from SIPp (kept up until the gateway's BYE) and its live call."""
    num = await sip_number(gw)
    port = gw.carriers["sip"].port
    first = asyncio.create_task(sipp_uac("uac_gateway_hangs_up.xml", port, service="15550001111", timeout_s=40))
    legs = gw.carriers["sip"].legs
    # in progress from our 200 on (media starts there); its leg is the call's once the ACK confirmed the dialog
    call = await wait_for(lambda: next((c for c in gw.calls.active.values()
                                        if c.status == "in-progress" and c.id in legs), None),
                          15, what="the inbound call answered and ACKed")
    return num, port, first, call


async def test_invite_with_replaces_takes_over_the_call(make_gateway):
    gw = await sip_gateway(make_gateway)
    num, port, first, call = await inbound_call(gw)
    old = gw.carriers["sip"].legs[call.id]
    d = old.session.dialog
    replaces = f"{d.call_id};to-tag={d.local_tag};from-tag={d.remote_tag}"
    second = await sipp_uac("uac_replaces.xml", port, service="15550001111", duration_ms=3000, timeout_s=30,
                            extra=["-key", "replaces", replaces])
    second.assert_calls(successful=1)           # 200 with Supported: replaces, RTP, then its BYE answered
    (await first).assert_calls(successful=1)    # the replaced dialog got the gateway's BYE
    row = await final_row(gw, call.log_id)
    assert row["extra"]["replaced_sip_call_id"] == d.call_id
    assert row["carrier_sid"] != d.call_id and row["hangup_source"] == "user"
    # the new dialog's audio reached the same call's engine (echo) and came back
    assert row["extra"]["rtp"]["received"] >= 50 and row["extra"]["rtp"]["sent"] >= 50
    assert ("call:replaced", {"sip_call_id": row["carrier_sid"], "replaced_sip_call_id": d.call_id}) in \
        await events_of(gw, call.log_id)
    assert len((await gw.store.list_calls(1, 10))[0]) == 1      # one call, one row


async def test_replacing_dialogs_media_starts_at_our_200_like_any_other(make_gateway):
    """RFC 3264 §6 holds for an INVITE with Replaces too: the new far end sends RTP once it has our 200, and its
    ACK may come seconds later. Those first words reach the call (none played to nobody), as on a plain INVITE
    (test_sip_calls_ack.py)."""
    gw = await sip_gateway(make_gateway)
    num, port, first, call = await inbound_call(gw)
    d = gw.carriers["sip"].legs[call.id].session.dialog
    replaces = f"{d.call_id};to-tag={d.local_tag};from-tag={d.remote_tag}"
    second = await sipp_uac("uac_replaces_rtp_before_ack.xml", port, service="15550001111", duration_ms=500,
                            timeout_s=40, extra=["-key", "replaces", replaces])
    second.assert_calls(successful=1)
    (await first).assert_calls(successful=1)    # the replaced dialog got the gateway's BYE, after the ACK
    row = await final_row(gw, call.log_id)
    assert row["extra"]["replaced_sip_call_id"] == d.call_id
    rtp = row["extra"]["rtp"]                    # the replacing dialog's RTP session
    assert rtp["received"] >= 90, rtp            # ~3.5 s of 30 ms packets, 3 s of them before the ACK
    assert rtp["unheard"] == 0, rtp              # not one was played to nobody while the ACK was on its way


@pytest.mark.parametrize("mangle", ["call_id", "tag"])
async def test_invite_with_replaces_for_no_dialog_gets_481(make_gateway, mangle):
    gw = await sip_gateway(make_gateway)
    num, port, first, call = await inbound_call(gw)
    d = gw.carriers["sip"].legs[call.id].session.dialog
    call_id, local = (d.call_id + "x", d.local_tag) if mangle == "call_id" else (d.call_id, d.local_tag + "x")
    r = await sipp_uac("uac_replaces_no_dialog.xml", port, service="15550001111", timeout_s=15,
                       extra=["-key", "replaces", f"{call_id};to-tag={local};from-tag={d.remote_tag}"])
    r.assert_calls(successful=1)
    assert call.is_active and gw.carriers["sip"].legs[call.id].session.dialog is d   # the call is untouched
    await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
    (await first).assert_calls(successful=1)


async def test_cli_consult_then_cancel(make_gateway, capsys, monkeypatch):
    from gateway.cli import main

    gw = await sip_gateway(make_gateway)
    monkeypatch.setenv("GATEWAY_URL", gw.url())
    monkeypatch.setenv("GATEWAY_API_KEY", gw.api_key)

    async def cli(*argv: str) -> tuple[int, dict]:
        code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 30)
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 else {"error": err}

    async with sipp_uas("uas_consult.xml", calls=2, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        code, out = await cli("calls", "consult", str(d["requestId"]), "--number", TARGET)
        assert code == 0 and out["status"] == "consult_dialing"
        await wait_for(lambda: call.consultation.state == "answered", 15, what="the consultation answered")
        code, out = await cli("calls", "consult-cancel", d["call_id"])
        assert code == 0 and out["status"] == "consult_cancelled"
        code, out = await cli("calls", "consult-complete", d["call_id"])
        assert code == 1 and "409" in out["error"] and "no answered consultation" in out["error"]
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
    uas.result.assert_calls(successful=2)


async def test_engine_protocol_consult_and_complete(make_gateway):
    """A websocket engine (connect mode) runs the attended transfer itself: `consult` (the agent's transfer number),
    the `consult` events, audio to the target, `consult_complete`, then `transfer_result` and `hangup`."""
    from test_engine_ws import Engine, recv_json

    seen: list[dict] = []

    async def script(ws, engine):
        seen.append(await recv_json(ws, "start"))
        await ws.send(json.dumps({"type": "consult", "message": "A caller about order 42."}))
        seen.append(await recv_json(ws, "consult"))
        seen.append(await recv_json(ws, "consult"))
        await ws.send(bytes(640) * 10)                     # 200 ms for the target
        await ws.send(json.dumps({"type": "consult_complete"}))
        seen.append(await recv_json(ws, "consult"))
        seen.append(await recv_json(ws, "transfer_result"))
        seen.append(await recv_json(ws, "hangup"))

    gw = await sip_gateway(make_gateway)
    async with Engine(script) as engine, sipp_uas("uas_consult.xml", calls=2, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port, engine=engine.url(),
                               agent_settings={"transfer": {"number": TARGET}})
        d = await api(gw, "POST", "/calls/dispatch", {"agent_id": num["agent_id"], "from_number_id": num["id"],
                                                       "to_number": "+15559876543"}, expect=200)
        await asyncio.wait_for(engine.done.wait(), 20)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)
    assert seen[0]["transfer"]["options"][0]["number"] == TARGET
    assert [(m["state"], m["number"]) for m in seen[1:3]] == [("dialing", TARGET), ("answered", TARGET)]
    assert seen[2]["message"] == "A caller about order 42."        # text: the engine says it to the target
    assert seen[3]["state"] == "completed"
    assert (seen[4]["target"], seen[4]["outcome"]) == (TARGET, "completed")
    assert seen[5]["source"] == "system" and row["extra"]["transfer_method"] == "refer_replaces"


async def test_hangup_during_the_consultation_ends_the_target_call_too(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_consult.xml", calls=2, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port)
        d, call = await answered_call(gw, num)
        await consult_answered(gw, call)
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        row = await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)       # the caller's leg and the target's both got a BYE
    assert row["extra"]["consult"]["state"] == "ended" and row["is_call_transfer"] is False


async def test_consult_cancelled_while_the_target_rings(make_gateway):
    gw = await sip_gateway(make_gateway)
    async with sipp_uas("uas_consult_ringing.xml", calls=2, timeout_s=30) as uas:
        num = await sip_number(gw, sip_port=uas.port, sip_strip_plus=True)
        d, call = await answered_call(gw, num)
        await api(gw, "POST", f"/calls/{call.id}/consult", {"number": TARGET}, expect=200)
        leg = gw.carriers["sip"].legs[call.id]
        await wait_for(lambda: leg.consultation is not None and leg.consultation.other.invite is not None
                       and leg.consultation.other.invite.provisional.is_set(), 10, what="the target ringing")
        r = await api(gw, "POST", f"/calls/{call.id}/consult/complete", {}, expect=409)
        assert "no answered consultation" in r["error"] and "dialing" in r["error"]
        await api(gw, "POST", f"/calls/{call.id}/consult/cancel", {}, expect=200)    # CANCEL, 200, 487, ACK
        assert call.consultation.state == "cancelled" and leg.consultation is None and leg.rtp.call is call
        await api(gw, "POST", f"/calls/{call.id}/hangup", {}, expect=200)
        await final_row(gw, d["requestId"])
    uas.result.assert_calls(successful=2)
