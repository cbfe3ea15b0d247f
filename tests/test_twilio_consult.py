"""Attended transfer through Twilio (and SignalWire, the same carrier): the caller waits in a conference, the
target's call brings its own media stream to the engine, completion joins the target to the conference; cancel
and a busy target give the caller back to the engine on a new stream. Against the REST stand-in
(tests/fakes/twilio_rest.py) and real media websockets."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from fakes.signalwire_env import signalwire_env  # noqa: F401  (fixture)
from fakes.twilio_env import NUMBER, recording, twilio_env  # noqa: F401  (fixture)
from test_twilio_media import open_call

TARGET = "+14155550177"
SETTINGS = {"transfer": {"number": TARGET}}


@pytest.fixture(params=["twilio", "signalwire"])
def env_factory(request, twilio_env, signalwire_env):  # noqa: F811
    return twilio_env if request.param == "twilio" else signalwire_env


async def api(env, method: str, path: str, body=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, env.gw.url("/api/v1" + path), json=body,
                             headers={"Authorization": f"Bearer {env.gw.api_key}"}) as r:
            return r.status, await r.json()


async def consult_answered(env):
    """An inbound call whose agent consults its transfer number: returns the call, its ids, and the target's
    stream (answered)."""
    call_id, call_sid, caller = await open_call(env)
    status, body = await api(env, "POST", f"/calls/{call_id}/consult", {})
    assert status == 200 and body["status"] == "consult_dialing" and body["number"] == TARGET, body
    sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)      # the caller to the hold conference
    assert sid == call_sid
    assert f'<Conference beep="false" endConferenceOnExit="true" startConferenceOnEnter="false">gw-{call_id}' \
           f'</Conference>' in rec.one("Twiml")
    await asyncio.wait_for(caller.closed.wait(), 3)                   # the caller's stream ended (our side)
    await caller.__aexit__()
    create = env.rest.of("POST", "/Calls.json")[-1]
    assert create.one("To") == TARGET and create.one("From") == NUMBER
    assert f'<Parameter name="call_id" value="{call_id}" />' in create.one("Twiml")
    target_sid = list(env.rest.calls)[-1]          # the call the create above made
    call = env.gw.calls.get(call_id)
    assert call.is_active and call.consultation.state == "dialing"
    target = env.stream()
    await target.__aenter__()
    await target.start(call_id, call_sid=target_sid, account_sid=env.account.sid)
    await target.wait_for(lambda: call.consultation.state == "answered")
    return call, call_sid, target_sid, target


async def test_consult_then_complete_joins_the_conference(env_factory):
    env = await env_factory(settings=SETTINGS)
    call, call_sid, target_sid, target = await consult_answered(env)
    try:
        # the engine (echo) now talks to the target: what the target says comes back on the target's stream
        audio = recording()[:160 * 50]
        await target.play(audio)
        await target.wait_for(lambda: len(target.got.media) >= 40)
        status, body = await api(env, "POST", f"/calls/{call.id}/consult/complete")
        assert status == 200 and body["method"] == "conference", body
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == target_sid
        assert f'startConferenceOnEnter="true">gw-{call.id}</Conference>' in rec.one("Twiml")
        row = await env.wait_row(call.id, lambda r: r["ended_at"] is not None)
    finally:
        await target.__aexit__()
    assert (row["is_call_transfer"], row["transfer_target"], row["transfer_outcome"]) == (True, TARGET, "completed")
    assert row["extra"]["transfer_method"] == "conference" and row["extra"]["consult_call_sid"] == target_sid
    assert row["hangup_reason"] == f"transferred to {TARGET} (attended)"
    # the gateway left the call: it completed neither the caller's call nor the target's over REST
    assert not [r for r in env.rest.of("POST", ".json") if r.one("Status") == "completed"]


async def test_consult_cancel_gives_the_caller_back_on_a_new_stream(env_factory):
    env = await env_factory(settings=SETTINGS)
    call, call_sid, target_sid, target = await consult_answered(env)
    try:
        status, body = await api(env, "POST", f"/calls/{call.id}/consult/cancel")
        assert status == 200 and body["status"] == "consult_cancelled", body
        updates = [await asyncio.wait_for(env.rest.updates.get(), 5) for _ in range(2)]
        assert updates[0][0] == target_sid and updates[0][1].one("Status") == "completed"
        assert updates[1][0] == call_sid and f'<Parameter name="call_id" value="{call.id}" />' in \
            updates[1][1].one("Twiml")
        await asyncio.wait_for(target.closed.wait(), 3)
    finally:
        await target.__aexit__()
    # Twilio runs <Connect><Stream> for the caller again: the same call, the engine hears the caller
    caller = env.stream()
    async with caller:
        await caller.start(call.id, call_sid=call_sid, account_sid=env.account.sid)
        await caller.play(b"\xff" * 1600)
        await caller.wait_for(lambda: len(caller.got.media) >= 8)
        assert call.is_active and call.consultation.state == "cancelled"
        await caller.stop(call_sid)
    row = await env.wait_row(call.id, lambda r: r["ended_at"] is not None)
    assert row["is_call_transfer"] is False and row["extra"]["consult"]["state"] == "cancelled"


async def test_busy_target_returns_the_caller(twilio_env):  # noqa: F811
    env = await twilio_env(settings=SETTINGS)
    call_id, call_sid, caller = await open_call(env)
    await api(env, "POST", f"/calls/{call_id}/consult", {"number": "+14155550166"})
    await asyncio.wait_for(env.rest.updates.get(), 5)
    await caller.__aexit__()
    target_sid = list(env.rest.calls)[-1]
    status, _ = await env.callback(f"/twilio/consult_status?call_id={call_id}",
                                   {"CallSid": target_sid, "CallStatus": "busy"})
    assert status == 200
    sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
    assert sid == call_sid and f'<Parameter name="call_id" value="{call_id}" />' in rec.one("Twiml")
    call = env.gw.calls.get(call_id)
    assert call.consultation.state == "failed" and call.consultation.reason == "busy"
    # a forged status callback is refused
    status, _ = await env.callback(f"/twilio/consult_status?call_id={call_id}",
                                   {"CallSid": target_sid, "CallStatus": "completed"}, tamper=True)
    assert status == 403
    await api(env, "POST", f"/calls/{call_id}/hangup")


async def test_engine_consults_through_its_own_stream(twilio_env):  # noqa: F811
    """The engine asks (session.consult): carried out behind its queued audio by the caller stream's sender, the
    stream the hold then ends."""
    from gateway.frames import ConsultEvent
    from test_twilio_media import ScriptEngine

    async def script(session):
        await session.play(b"\x00\x00" * 1600, end_of_utterance=True)     # "please hold" (0.1 s)
        await session.consult()

    engine = ScriptEngine(script, echo=True)
    env = await twilio_env(engine="consulter", settings=SETTINGS)
    env.gw.engines.register("consulter", engine)
    call_id, call_sid, caller = await open_call(env)
    try:
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid and "<Conference" in rec.one("Twiml")
        await asyncio.wait_for(caller.closed.wait(), 3)
    finally:
        await caller.__aexit__()
    target = env.stream()
    async with target:
        await target.start(call_id, call_sid=list(env.rest.calls)[-1], account_sid=env.account.sid)
        await engine.wait(lambda: [e.state for e in engine.of(ConsultEvent)] == ["dialing", "answered"])
        await target.play(recording()[:160 * 25])
        await target.wait_for(lambda: len(target.got.media) >= 20)        # the engine's echo reaches the target
    await api(env, "POST", f"/calls/{call_id}/hangup")
