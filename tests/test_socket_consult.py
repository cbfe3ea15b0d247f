"""Attended transfer on the media-socket carriers (carriers/socket_consult.py): Telnyx, Plivo, Vonage and Exotel,
against their REST stand-ins (tests/fakes/) and websocket clients speaking each carrier's media protocol.

consult → the caller hears music on hold and nothing the engine says; the target's call is placed over REST and its
socket, once it presents the consultation token, is the engine's party (the echo engine's answer reaches the
target and not the caller) → complete: the carrier's join (Telnyx `bridge`, Plivo conference, Vonage
conversation) or the gateway's bridge (Exotel: caller's audio to the target's socket and back) → hangup ends both.
Cancel and a failed dial give the caller back to the engine."""
from __future__ import annotations

import asyncio
import re
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest

from carriers.exotel import ExotelCarrier
from carriers.telnyx import decode_state
from carriers.vonage import VonageCarrier
from exotel_helpers import EXOPHONE, CallWatch, FakeExotel, FakeExotelApi, add_exophone, tone, ws_url
from fakes.twilio_env import recording
from gateway.hold import HoldMusic, music_for
from sipp import wait_for
from test_plivo import NUMBER as PLIVO_NUMBER
from test_plivo import plivo_env  # noqa: F401  (fixture)
from test_telnyx import telnyx_env  # noqa: F401  (fixture)
from test_twilio_rest import api
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16
from voicecodecs._audioop import audioop
from vonage_helpers import (
    VONAGE_NUMBER,
    FakeVonageApi,
    FakeVonageSocket,
    add_vonage_number,
    rsa_private_pem,
    signed_headers,
)

TARGET = "+14155550177"
SETTINGS = {"transfer": {"number": TARGET}}


def music_frames(rate: int = 8000) -> set[bytes]:
    """Every 20 ms PCM16 frame of the packaged music-on-hold loop."""
    pcm = music_for("", rate)
    loop = HoldMusic(pcm, rate)
    return {loop.frame() for _ in range(len(pcm) // (rate // 50 * 2) + 1)}


MUSIC_ULAW = {pcm16_to_ulaw(f) for f in music_frames()}


def after(media: list[tuple[float, bytes]], start: int) -> list[bytes]:
    return [p for _, p in media[start:]]


async def call_api(gw, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, gw.url("/api/v1" + path), json=body,
                                                       headers={"Authorization": "Bearer test-api-key"}) as r:
        return r.status, await r.json()


async def ended_row(gw, call) -> dict[str, Any]:
    """The call-log row once the call has ended there."""
    row: dict[str, Any] = {}

    async def loop() -> None:
        nonlocal row
        while not (row := await gw.store.get_call(call.log_id) or {}).get("ended_at"):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(loop(), 10)
    return row


# -- Telnyx ---------------------------------------------------------------------------------------------------------
async def telnyx_consult_answered(env):
    call_id, ccid, answer = await env.inbound()
    caller = env.stream(answer["stream_url"])
    await caller.__aenter__()
    await caller.start(ccid)
    call = env.gw.calls.get(call_id)
    await wait_for(lambda: call.bus is not None, what="the caller's stream")
    status, body = await api(env, "POST", f"/api/v1/calls/{call_id}/consult", {})
    assert status == 200 and body["status"] == "consult_dialing", body
    dial = [b for m, p, b in env.rest.requests if p == "/v2/calls"][-1]
    assert dial["to"] == TARGET and dial["from"] == "+15005550006" and dial["connection_id"]
    assert decode_state(dial["client_state"]) == f"consult:{call_id}"
    assert "leg=consult" in dial["stream_url"] and dial["stream_bidirectional_mode"] == "rtp"
    target_ccid = next(k for k, v in env.rest.calls.items() if (v.get("dial") or {}).get("to") == TARGET)
    # the caller hears music on hold while the target rings
    await caller.wait_for(lambda: len(caller.got.media) >= 15, timeout=10)
    assert set(after(caller.got.media, 0)) <= MUSIC_ULAW
    target = env.stream(dial["stream_url"])
    await target.__aenter__()
    await target.start(target_ccid)
    await wait_for(lambda: call.consultation.state == "answered", what="answered")
    return call, ccid, target_ccid, caller, target, dial


async def test_telnyx_consult_then_complete_bridges_the_two_calls(telnyx_env):  # noqa: F811
    env = await telnyx_env(settings=SETTINGS)
    call, ccid, target_ccid, caller, target, _ = await telnyx_consult_answered(env)
    try:
        mark = len(caller.got.media)
        await target.play(recording()[:160 * 50])
        await target.wait_for(lambda: len(target.got.media) >= 40, timeout=10)     # the engine's echo: to the target
        assert set(after(caller.got.media, mark)) <= MUSIC_ULAW                  # …and not to the caller
        status, body = await api(env, "POST", f"/api/v1/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "telnyx_bridge", body
        row = await env.wait_row(call.id, lambda r: r.get("ended_at") is not None)
        bridge = [(p, b) for m, p, b in env.rest.requests if p.endswith("/actions/bridge")]
        assert bridge == [(f"/v2/calls/{ccid}/actions/bridge", bridge[0][1])]
        assert bridge[0][1]["call_control_id"] == target_ccid
        await asyncio.wait_for(target.closed.wait(), 5)
    finally:
        await target.__aexit__()
        await caller.__aexit__()
    assert (row["is_call_transfer"], row["transfer_target"], row["transfer_outcome"]) == (True, TARGET, "completed")
    assert row["extra"]["transfer_method"] == "telnyx_bridge" and row["extra"]["consult"]["state"] == "completed"
    # the gateway left the call: neither call was hung up
    assert not [p for m, p, b in env.rest.requests if p.endswith("/actions/hangup")]


async def test_telnyx_cancel_hangs_up_the_target_and_the_caller_talks_to_the_engine(telnyx_env):  # noqa: F811
    env = await telnyx_env(settings=SETTINGS)
    call, ccid, target_ccid, caller, target, _ = await telnyx_consult_answered(env)
    try:
        status, body = await api(env, "POST", f"/api/v1/calls/{call.id}/consult/cancel")
        assert status == 200 and body["status"] == "consult_cancelled", body
        assert f"/v2/calls/{target_ccid}/actions/hangup" in [p for _, p, _ in env.rest.requests]
        await asyncio.wait_for(target.closed.wait(), 5)
        mark = len(caller.got.media)
        await caller.play(recording()[:160 * 50])
        await caller.wait_for(lambda: len([p for p in after(caller.got.media, mark) if p not in MUSIC_ULAW]) >= 30,
                              timeout=10)                                       # the echo is back with the caller
        assert call.is_active and call.consultation.state == "cancelled"
    finally:
        await target.__aexit__()
        await caller.__aexit__()


async def telnyx_consult_dialing(env, call_id: str, ccid: str, caller) -> tuple[Any, dict[str, Any], str]:
    """The caller's stream starts and the API consults: (call, the dial request's body, the target's ccid)."""
    await caller.start(ccid)
    call = env.gw.calls.get(call_id)
    await wait_for(lambda: call.bus is not None)
    status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/consult", {})
    assert status == 200
    dial = [b for m, p, b in env.rest.requests if p == "/v2/calls"][-1]
    return call, dial, next(k for k, v in env.rest.calls.items() if v.get("dial") is dial)


async def engine_hears(caller) -> None:
    """The caller talks to the engine again: its echo (not music) comes back on the caller's stream."""
    mark = len(caller.got.media)
    await caller.play(recording()[:160 * 50])
    await caller.wait_for(lambda: len([p for p in after(caller.got.media, mark) if p not in MUSIC_ULAW]) >= 30,
                          timeout=10)


async def test_telnyx_busy_target_returns_the_caller(telnyx_env):  # noqa: F811
    env = await telnyx_env(settings=SETTINGS)
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as caller:
        call, dial, target_ccid = await telnyx_consult_dialing(env, call_id, ccid, caller)
        status, _ = await env.webhook("call.hangup", {"call_control_id": target_ccid, "hangup_cause": "user_busy",
                                                      "client_state": dial["client_state"]})
        assert status == 200
        await wait_for(lambda: call.consultation.state == "failed")
        assert call.consultation.reason == "busy"
        await engine_hears(caller)
        # a second socket with the (now stale) consultation URL is refused
        async with env.stream(dial["stream_url"]) as late:
            await late.start(target_ccid)
            await asyncio.wait_for(late.closed.wait(), 5)
            assert late.close_code == 4005


async def test_telnyx_engine_consults_from_its_caller_streams_sender(telnyx_env):  # noqa: F811
    """The engine asks (session.consult) behind its "please hold": the caller stream's sender carries the request
    out from inside the call's outbound queue, then leaves the call for music on hold; once the target's socket
    came, the engine hears and answers the target."""
    from gateway.frames import ConsultEvent
    from test_twilio_media import ScriptEngine

    async def script(session):
        await session.play(b"\x00\x00" * 1600, end_of_utterance=True)     # "please hold" (0.1 s)
        await session.consult()

    engine = ScriptEngine(script, echo=True)
    env = await telnyx_env(engine="consulter", settings=SETTINGS)
    env.gw.engines.register("consulter", engine)
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as caller:
        await caller.start(ccid)
        await engine.wait(lambda: [e.state for e in engine.of(ConsultEvent)] == ["dialing"])
        await wait_for(lambda: any(p == "/v2/calls" for _, p, _ in env.rest.requests), what="the consultation's dial")
        dial = [b for m, p, b in env.rest.requests if p == "/v2/calls"][-1]
        target_ccid = next(k for k, v in env.rest.calls.items() if v.get("dial") is dial)
        mark = len(caller.got.media)
        await caller.wait_for(lambda: len(caller.got.media) - mark >= 10, timeout=10)
        # (the tail of "please hold" may still be on its way)
        assert set(after(caller.got.media, mark)) <= MUSIC_ULAW | {pcm16_to_ulaw(bytes(320))}
        async with env.stream(dial["stream_url"]) as target:
            await target.start(target_ccid)
            await engine.wait(lambda: [e.state for e in engine.of(ConsultEvent)] == ["dialing", "answered"])
            mark = len(caller.got.media)
            await target.play(recording()[:160 * 25])
            await target.wait_for(lambda: len(target.got.media) >= 20, timeout=10)   # the echo reaches the target
            assert set(after(caller.got.media, mark)) <= MUSIC_ULAW
            status, body = await api(env, "POST", f"/api/v1/calls/{call_id}/consult/complete")
            assert status == 200 and body["method"] == "telnyx_bridge", body


async def test_telnyx_caller_hangs_up_during_the_consultation_and_the_target_call_ends(telnyx_env):  # noqa: F811
    env = await telnyx_env(settings=SETTINGS)
    call, ccid, target_ccid, caller, target, _ = await telnyx_consult_answered(env)
    try:
        await telnyx_caller_hangs_up(env, call, ccid, target, target_ccid)
        row = await env.wait_row(call.id, lambda r: r.get("ended_at") is not None)
        assert row["hangup_source"] == "user" and row["extra"]["consult"]["state"] == "ended"
        assert row["is_call_transfer"] is False
    finally:
        await target.__aexit__()
        await caller.__aexit__()


async def test_telnyx_refused_bridge_falls_back_to_the_gateways_own_bridge(telnyx_env):  # noqa: F811
    """Telnyx refuses `bridge`: the gateway relays the two media sockets itself, frame for frame, until the caller
    hangs up; then the target's call ends too."""
    env = await telnyx_env(settings=SETTINGS)
    env.rest.faults.add("POST", "/actions/bridge", 500)
    call, ccid, target_ccid, caller, target, _ = await telnyx_consult_answered(env)
    said = recording()[:160 * 50]
    relayed = {pcm16_to_ulaw(ulaw_to_pcm16(said[i:i + 160])) for i in range(0, len(said), 160)}
    try:
        status, body = await api(env, "POST", f"/api/v1/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "bridge", body
        mark_t, mark_c = len(target.got.media), len(caller.got.media)
        await caller.play(said)
        await target.wait_for(lambda: len(target.got.media) - mark_t >= 45, timeout=10)
        assert set(after(target.got.media, mark_t)) <= relayed           # the caller's own frames, not the engine's
        await target.play(said)
        await caller.wait_for(lambda: len(caller.got.media) - mark_c >= 45, timeout=10)
        assert set(after(caller.got.media, mark_c)) <= relayed
        await telnyx_caller_hangs_up(env, call, ccid, target, target_ccid)
        row = await env.wait_row(call.id, lambda r: (r.get("extra") or {}).get("bridge"))
    finally:
        await target.__aexit__()
        await caller.__aexit__()
    assert row["extra"]["transfer_method"] == "bridge" and "consult_join_error" in row["extra"]
    assert row["extra"]["bridge"]["a_to_b"] >= 45 and row["extra"]["bridge"]["b_to_a"] >= 45


async def telnyx_caller_hangs_up(env, call, ccid: str, target, target_ccid: str) -> None:
    """Telnyx says the caller hung up: the target's socket closes and its call is hung up over Call Control."""
    from carriers.telnyx import encode_state

    status, _ = await env.webhook("call.hangup", {"call_control_id": ccid, "hangup_cause": "normal_clearing",
                                                  "client_state": encode_state(call.id)})
    assert status == 200
    await asyncio.wait_for(target.closed.wait(), 5)
    await wait_for(lambda: f"/v2/calls/{target_ccid}/actions/hangup" in [p for _, p, _ in env.rest.requests],
                what="the target's call hung up")


async def test_consultation_the_carrier_never_reports_on_fails_after_a_while(telnyx_env, monkeypatch):  # noqa: F811
    """No socket and no webhook from the target's call: the caller is not left on hold forever."""
    monkeypatch.setattr("carriers.socket_consult.ANSWER_TIMEOUT", 0.3)
    env = await telnyx_env(settings=SETTINGS)
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as caller:
        call, dial, target_ccid = await telnyx_consult_dialing(env, call_id, ccid, caller)
        await wait_for(lambda: call.consultation.state == "failed", what="the consultation to give up")
        assert call.consultation.reason.startswith("no-answer")
        assert f"/v2/calls/{target_ccid}/actions/hangup" in [p for _, p, _ in env.rest.requests]
        await engine_hears(caller)


# -- Plivo ----------------------------------------------------------------------------------------------------------
def xml_stream_url(xml: str) -> str:
    m = re.search(r"<Stream[^>]*>([^<]+)</Stream>", xml)
    assert m, xml
    return unescape(m.group(1))


async def plivo_consult(env):
    call_id, call_uuid, url = await env.inbound()
    caller = env.stream(url)
    await caller.__aenter__()
    await caller.start(call_uuid)
    call = env.gw.calls.get(call_id)
    await wait_for(lambda: call.bus is not None)
    status, body = await api(env, "POST", f"/api/v1/calls/{call_id}/consult", {})
    assert status == 200, body
    kind, request_uuid, made = await asyncio.wait_for(env.rest.actions.get(), 5)
    assert kind == "call" and made["to"] == TARGET.lstrip("+") and made["from"] == PLIVO_NUMBER.lstrip("+")
    return call, call_uuid, caller, request_uuid, made


async def test_plivo_consult_then_complete_joins_a_conference(plivo_env):  # noqa: F811
    env = await plivo_env(settings=SETTINGS)
    call, call_uuid, caller, request_uuid, made = await plivo_consult(env)
    target_uuid = env.rest.add_call()
    answer_path = urlparse(made["answer_url"])
    status, xml = await env.post(answer_path.path + "?" + answer_path.query,
                                 {"CallUUID": target_uuid, "RequestUUID": request_uuid, "From": "15005550006",
                                  "To": TARGET.lstrip("+"), "Direction": "outbound", "CallStatus": "in-progress"})
    assert status == 200 and "leg=consult" in xml, xml
    target = env.stream(xml_stream_url(xml))
    try:
        await target.__aenter__()
        await target.start(target_uuid)
        await wait_for(lambda: call.consultation.state == "answered")
        mark = len(caller.got.media)
        await target.play(recording()[:160 * 50])
        await target.wait_for(lambda: len(target.got.media) >= 40, timeout=10)
        assert set(after(caller.got.media, mark)) <= MUSIC_ULAW
        status, body = await api(env, "POST", f"/api/v1/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "conference", body
        moves = [await asyncio.wait_for(env.rest.actions.get(), 5) for _ in range(2)]
        assert [(k, u) for k, u, _ in moves] == [("transfer", target_uuid), ("transfer", call_uuid)]
        join = urlparse(moves[0][2]["aleg_url"])
        assert moves[1][2]["aleg_url"] == moves[0][2]["aleg_url"] and moves[0][2]["legs"] == "aleg"
        row = await env.wait_row(call.id, lambda r: r.get("ended_at") is not None)
        # Plivo fetches the join XML after the gateway left the call: still signed, still answered
        status, xml = await env.post(join.path + "?" + join.query, {"CallUUID": call_uuid})
        assert status == 200 and f">gw-{call.id}</Conference>" in xml and 'endConferenceOnExit="true"' in xml, xml
        status, _ = await env.post(join.path + "?" + join.query, {"CallUUID": call_uuid}, token="wrong")
        assert status == 403
    finally:
        await target.__aexit__()
        await caller.__aexit__()
    assert row["transfer_outcome"] == "completed" and row["extra"]["transfer_method"] == "conference"
    assert not [a for a in env.rest.requests if a[0] == "DELETE"]


async def test_plivo_failed_dial_and_cancel(plivo_env):  # noqa: F811
    env = await plivo_env(settings=SETTINGS)
    call, call_uuid, caller, request_uuid, made = await plivo_consult(env)
    try:
        hangup = urlparse(made["hangup_url"])
        status, _ = await env.post(hangup.path + "?" + hangup.query, {"RequestUUID": request_uuid,
                                                                     "CallUUID": "x", "HangupCauseName": "User Busy"})
        assert status == 200
        await wait_for(lambda: call.consultation.state == "failed")
        assert call.consultation.reason == "busy"
        # a second consultation, cancelled while it rings: its request is cancelled at Plivo
        status, _ = await api(env, "POST", f"/api/v1/calls/{call.id}/consult", {})
        assert status == 200
        kind, second, _ = await asyncio.wait_for(env.rest.actions.get(), 5)
        status, body = await api(env, "POST", f"/api/v1/calls/{call.id}/consult/cancel")
        assert status == 200, body
        assert await asyncio.wait_for(env.rest.actions.get(), 5) == ("cancel", second, None)
        await engine_hears(caller)
    finally:
        await caller.__aexit__()


# -- Vonage ---------------------------------------------------------------------------------------------------------
@pytest.fixture
async def vonage_world(make_gateway):
    pem = rsa_private_pem()
    rest = await FakeVonageApi(pem).start()
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    gw.carriers["vonage"].api_base = gw.carriers["vonage"].rest_base = rest.url
    agent = await gw.store.create_agent({"name": "v", "engine": "echo", "settings": SETTINGS})
    await add_vonage_number(gw, agent_id=agent["id"], private_pem=pem, rate=8000)
    yield gw, rest
    await rest.stop()


async def vonage_consult_answered(gw, rest, session):
    caller_uuid = "63f61863-4a51-4f6b-86e1-46edebcf9356"
    rest.register({"status": "answered"}, caller_uuid)
    watch = CallWatch(gw)
    async with session.get(gw.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                               "uuid": caller_uuid}) as r:
        ncco = await r.json()
    call = await watch.next_call()
    caller = FakeVonageSocket(session, ncco[0]["endpoint"][0], gw_url=gw.url(""))
    await caller.connect()
    await wait_for(lambda: call.bus is not None)
    status, body = await call_api(gw, "POST", f"/calls/{call.id}/consult", {})
    assert status == 200, body
    create = (await rest.wait_request("POST", "/v1/calls"))[-1]
    assert create["to"] == [{"type": "phone", "number": TARGET[1:]}] and create["from"]["number"] == VONAGE_NUMBER[1:]
    assert create["event_url"] == [gw.url(f"/vonage/events?call_id={call.id}&leg=consult")]
    endpoint = create["ncco"][0]["endpoint"][0]
    assert endpoint["type"] == "websocket" and endpoint["headers"]["gw_leg"] == "consult"
    target_uuid = next(u for u, c in rest.calls.items() if c.get("request") is create)
    await caller.wait_for(lambda rx: len(rx.frames) >= 15, timeout=10)
    assert set(caller.rx.frames) <= music_frames()
    target = FakeVonageSocket(session, endpoint, gw_url=gw.url(""))
    await target.connect()
    await wait_for(lambda: call.consultation.state == "answered")
    return call, caller_uuid, target_uuid, caller, target


async def test_vonage_consult_then_complete_moves_both_to_a_conversation(vonage_world):
    gw, rest = vonage_world
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        call, caller_uuid, target_uuid, caller, target = await vonage_consult_answered(gw, rest, s)
        mark = len(caller.rx.frames)
        await target.play(tone(1.0, 8000), 320)
        await target.wait_for(lambda rx: len(rx.frames) >= 40, timeout=10)          # the echo reaches the target
        assert set(caller.rx.frames[mark:]) <= music_frames()
        status, body = await call_api(gw, "POST", f"/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "conversation", body
        moves = [(p, b) for m, p, b in rest.requests if m == "PUT"]
        assert [p for p, _ in moves] == [f"/v1/calls/{target_uuid}", f"/v1/calls/{caller_uuid}"]
        for _, b in moves:
            assert b["action"] == "transfer" and b["destination"]["ncco"] == [
                {"action": "conversation", "name": f"gw-{call.id}", "startOnEnter": True, "endOnExit": True}]
        row = await ended_row(gw, call)
        await target.close()
        await caller.close()
    assert row["transfer_outcome"] == "completed" and row["extra"]["transfer_method"] == "conversation"


async def test_vonage_target_hangs_up_then_unanswered_consultation(vonage_world):
    gw, rest = vonage_world
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        call, caller_uuid, target_uuid, caller, target = await vonage_consult_answered(gw, rest, s)
        await target.close()                                  # the target hangs up: the caller is back
        await wait_for(lambda: call.consultation.state == "ended")
        mark = len(caller.rx.frames)
        sent = tone(1.0, 8000)
        await caller.play(sent, 320)
        await caller.wait_for(lambda rx: audioop.rms(b"".join(rx.frames[mark:]), 2) > 0.3 * audioop.rms(sent, 2)
                              and len(rx.frames) - mark >= 40, timeout=10)
        # a consultation the target does not answer
        status, _ = await call_api(gw, "POST", f"/calls/{call.id}/consult", {})
        assert status == 200
        second = [u for u, c in rest.calls.items() if u != target_uuid][-1]
        async with s.post(gw.url(f"/vonage/events?call_id={call.id}&leg=consult"),
                          json={"uuid": second, "status": "unanswered"}) as r:
            assert r.status == 204
        await wait_for(lambda: call.consultation.state == "failed")
        assert call.consultation.reason == "no-answer"
        await caller.close()


# -- Exotel (no join primitive: the gateway bridges) -------------------------------------------------------------
@pytest.fixture
async def exotel_world(make_gateway):
    rest = await FakeExotelApi().start()
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.carriers["exotel"].base_url = rest.url
    agent = await gw.store.create_agent({"name": "x", "engine": "echo", "settings": {
        "transfer": {"number": "+919000000001"}}})
    await add_exophone(gw, agent_id=agent["id"], phone=EXOPHONE)
    yield gw, rest
    await rest.stop()


async def exotel_consulting(gw, rest, s, target_sid: str):
    """An Exotel caller whose call has just started a consultation (the carrier will name its call target_sid)."""
    watch = CallWatch(gw)
    caller = await FakeExotel(s, ws_url(gw)).connect()
    await caller.start("CA-caller")
    call = await watch.next_call()
    await wait_for(lambda: call.bus is not None)
    rest.next_sid = target_sid
    status, body = await call_api(gw, "POST", f"/calls/{call.id}/consult", {})
    assert status == 200, body
    return watch, caller, call


@pytest.mark.parametrize("leaves", ["target", "caller"])
async def test_exotel_consult_then_gateway_bridge_until_one_side_hangs_up(exotel_world, leaves):
    gw, rest = exotel_world
    async with aiohttp.ClientSession() as s:
        watch, caller, call = await exotel_consulting(gw, rest, s, "CA-target")
        form = rest.calls["CA-target"]
        assert form["From"] == "+919000000001" and form["CustomField"] == f"consult:{call.id}"
        assert parse_qs(urlparse(form["StatusCallback"]).query)["consult"] == ["1"]
        await caller.wait_for(lambda rx: len(rx.audio) >= 3200 * 3, timeout=10)      # music on hold
        music = music_frames()
        assert all(f in music or f == bytes(320) for f in chunks_of(caller.rx.audio))
        target = await FakeExotel(s, ws_url(gw)).connect()
        await target.start("CA-target", frm="09000000001", to="08047491899")
        await wait_for(lambda: call.consultation.state == "answered")
        await target.play(tone(1.0, 8000))
        await target.wait_for(lambda rx: len(rx.audio) >= 8000, timeout=10)         # the engine's echo
        status, body = await call_api(gw, "POST", f"/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "bridge", body
        # the gateway relays caller ↔ target: a tone from each side reaches the other, the engine is out
        got_t, got_c = len(target.rx.audio), len(caller.rx.audio)
        sent = tone(1.0, 8000, freq=700)
        await caller.play(sent, pace=0.1)                  # (at real time, as Exotel sends)
        await target.wait_for(lambda rx: audioop.rms(rx.audio[got_t:], 2) > 0.3 * audioop.rms(sent, 2)
                              and len(rx.audio) - got_t >= 12000, timeout=10)
        await target.play(sent, pace=0.1)
        await caller.wait_for(lambda rx: audioop.rms(rx.audio[got_c:], 2) > 0.3 * audioop.rms(sent, 2)
                              and len(rx.audio) - got_c >= 12000, timeout=10)
        # one side hangs up: the gateway closes the other side's socket (its flow's Passthru then hangs up)
        gone, other = (target, caller) if leaves == "target" else (caller, target)
        await gone.stop()
        await other.wait_closed(timeout=10)
        await watch.wait_ended(call)
        row = await ended_row(gw, call)
        await target.close()
        await caller.close()
    assert row["transfer_outcome"] == "completed" and row["extra"]["transfer_method"] == "bridge"
    assert row["hangup_reason"].startswith("transfer target hung up" if leaves == "target" else "caller_hangup")
    async def bridge_stats() -> dict[str, int]:     # (kept when the bridge ends, also after the call's end)
        while not (stats := ((await ended_row(gw, call))["extra"] or {}).get("bridge")):
            await asyncio.sleep(0.02)
        return stats
    stats = await asyncio.wait_for(bridge_stats(), 5)
    assert stats["a_to_b"] > 0 and stats["b_to_a"] > 0


async def test_exotel_busy_consultation_and_a_late_socket_is_refused(exotel_world):
    gw, rest = exotel_world
    async with aiohttp.ClientSession() as s:
        _, caller, call = await exotel_consulting(gw, rest, s, "CA-busy")
        async with s.post(gw.url(f"/exotel/status_callback?call_id={call.id}&consult=1"),
                          data={"CallSid": "CA-busy", "Status": "busy"}) as r:
            assert r.status == 200
        await wait_for(lambda: call.consultation.state == "failed")
        assert call.consultation.reason == "busy"
        late = await FakeExotel(s, ws_url(gw)).connect()
        await late.start("CA-busy", frm="09000000001", to="08047491899")
        assert await late.wait_closed(timeout=5) == 4009
        got = len(caller.rx.audio)
        sent = tone(1.0, 8000)
        await caller.play(sent)                          # the engine hears the caller again (echo)
        await caller.wait_for(lambda rx: audioop.rms(rx.audio[got:], 2) > 0.3 * audioop.rms(sent, 2)
                              and len(rx.audio) - got >= 8000, timeout=10)
        await late.close()
        await caller.close()


def chunks_of(audio: bytes, size: int = 320) -> list[bytes]:
    return [audio[i:i + size] for i in range(0, len(audio) - size + 1, size)]
