"""The real twilio SDK against the local fake REST server: import, outbound dispatch, AMD, voicemail, transfer."""
from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs, urlparse

import aiohttp

from fakes.twilio_env import NUMBER, twilio_env  # noqa: F401  (fixture)
from gateway.frames import TransferResult
from test_twilio_media import ScriptEngine, open_call

OTHER = "+15005550007"
TARGET_A = "+14155550111"
TARGET_B = "+14155550122"


async def api(env, method: str, path: str, body=None, headers=None):
    async with aiohttp.ClientSession() as s, s.request(method, env.http(path), json=body,
                         headers={"Authorization": "Bearer test-api-key", **(headers or {})}) as r:
        return r.status, await r.json()


# -- number import ----------------------------------------------------------------------------------------------

async def test_import_checks_account_and_number_and_configures_webhooks(twilio_env):
    env = await twilio_env()
    env.account.numbers[OTHER] = {"sid": "PN" + "7" * 32, "phone_number": OTHER, "voice_url": None,
                                  "status_callback": None}
    status, body = await api(env, "POST", "/api/v1/phone_number/import/twilio", {
        "phone_number": OTHER, "account_sid": env.account.sid, "account_token": env.account.token,
        "name": "support line", "configure_webhooks": True, "force_webhooks": True, "agent_id": env.agent["id"]})
    assert status == 201, body
    stored = body["phone_number"]
    assert stored["config"]["account_sid"] == env.account.sid and stored["config"]["account_token"] == "****"
    assert stored["config"]["number_sid"] == "PN" + "7" * 32
    assert env.account.token not in str(body)
    assert env.account.numbers[OTHER]["voice_url"] == env.gw.settings.public_base + "/twilio/voice"
    assert env.account.numbers[OTHER]["status_callback"] == env.gw.settings.public_base + "/twilio/status"
    # the SDK asked for exactly this number
    lookups = env.rest.of("GET", "/IncomingPhoneNumbers.json")
    assert lookups[-1].one("PhoneNumber") == OTHER


async def test_configure_webhooks_refuses_a_public_url_twilio_cannot_reach(twilio_env):
    """Regression (issue 14): with the default public URL (http://127.0.0.1:…) configure_webhooks rewrote a real
    number's VoiceUrl to loopback. Now a 400 naming the field and the fix, and the number is left untouched."""
    env = await twilio_env()
    env.account.numbers[OTHER] = {"sid": "PN" + "7" * 32, "phone_number": OTHER, "voice_url": "https://old/voice",
                                  "status_callback": None}
    assert env.gw.settings.public_base.startswith("http://127.0.0.1")
    status, body = await api(env, "POST", "/api/v1/phone_number/import/twilio", {
        "phone_number": OTHER, "account_sid": env.account.sid, "account_token": env.account.token,
        "configure_webhooks": True})
    assert status == 400 and body["field"] == "configure_webhooks", body
    assert "loopback" in body["error"] and "--public-url" in body["error"] and "force_webhooks" in body["error"]
    assert env.account.numbers[OTHER]["voice_url"] == "https://old/voice"
    assert await env.gw.store.find_number(OTHER, "twilio") is None


async def test_import_with_bad_token_says_twilio_rejected_the_credentials(twilio_env):
    env = await twilio_env()
    status, body = await api(env, "POST", "/api/v1/phone_number/import/twilio", {
        "phone_number": OTHER, "account_sid": env.account.sid, "account_token": "wrong-token-123"})
    assert status == 422 and body["field"] == "account_token", body
    assert "Twilio rejected the account SID / auth token (HTTP 401)" in str(body)
    assert "wrong-token-123" not in str(body)
    assert await env.gw.store.find_number(OTHER, "twilio") is None


async def test_import_of_number_not_on_account_names_both(twilio_env):
    env = await twilio_env()
    status, body = await api(env, "POST", "/api/v1/phone_number/import/twilio", {
        "phone_number": OTHER, "account_sid": env.account.sid, "account_token": env.account.token})
    assert status == 422, body
    assert f"number {OTHER} is not on account {env.account.sid}" in str(body)


async def test_connection_test_reports_each_step(twilio_env):
    env = await twilio_env()
    report = await env.carrier.test_connection({"phone_number": NUMBER, "account_sid": env.account.sid,
                                                "account_token": env.account.token})
    assert [s["step"] for s in report["steps"]] == ["credentials", "number", "voice_webhook"]
    assert report["steps"][0]["ok"] and report["steps"][1]["ok"] and not report["steps"][2]["ok"]


# -- outbound ---------------------------------------------------------------------------------------------------

async def dispatch(env, to="+14155550199"):
    status, body = await api(env, "POST", "/api/v1/calls/dispatch", {
        "agent_id": env.agent["id"], "to_number": to, "from_number_id": env.number["id"]})
    return status, body


async def test_dispatch_creates_call_with_connect_stream_and_status_callback(twilio_env):
    env = await twilio_env()
    status, body = await dispatch(env)
    assert status == 200, body
    call_id = body["call_id"]
    create = env.rest.of("POST", "/Calls.json")[-1]
    assert create.one("To") == "+14155550199" and create.one("From") == NUMBER
    assert f'<Stream url="{env.gw.settings.public_ws_base}/twilio/media">' in create.one("Twiml")
    assert f'<Parameter name="call_id" value="{call_id}" />' in create.one("Twiml")
    assert create.one("StatusCallback") == env.gw.settings.public_base + f"/twilio/status?call_id={call_id}"
    assert create.params["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert create.one("MachineDetection") is None   # no voicemail, no AMD
    call_sid = next(iter(env.rest.calls))
    row = await env.row(call_id)
    assert row["carrier_sid"] == call_sid and row["call_direction"] == "outbound"
    # ringing, then answered: the stream attaches and echo flows
    await env.callback(f"/twilio/status?call_id={call_id}", {"CallSid": call_sid, "CallStatus": "ringing"})
    assert (await env.row(call_id))["call_status"] == "ringing"
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid)
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)
    await env.callback(f"/twilio/status?call_id={call_id}", {"CallSid": call_sid, "CallStatus": "completed",
                                                             "CallDuration": "3"})
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["call_status"] == "completed" and row["answered_at"]


async def test_dispatch_refused_by_twilio_is_a_clear_error(twilio_env):
    env = await twilio_env()
    env.rest.create_error = (400, 21211, "The 'To' number +14155550199 is not a valid phone number.")
    status, body = await dispatch(env)
    assert status == 422, body        # the carrier refused what was asked (docs/api.md, "Carrier errors")
    assert "21211" in str(body) and "not a valid phone number" in str(body)
    rows, _ = await env.gw.store.list_calls()
    assert rows[0]["call_status"] == "failed"


VOICEMAIL = {"voicemail": {"enabled": True, "message": "Hi, this is Acme. Please call us back."}}


async def test_amd_machine_leaves_voicemail_after_beep_then_hangs_up(twilio_env):
    env = await twilio_env(settings=VOICEMAIL)
    status, body = await dispatch(env)
    assert status == 200, body
    call_id = body["call_id"]
    create = env.rest.of("POST", "/Calls.json")[-1]
    assert create.one("MachineDetection") == "DetectMessageEnd" and create.one("AsyncAmd") == "true"
    assert create.one("AsyncAmdStatusCallback") == env.gw.settings.public_base + f"/twilio/amd?call_id={call_id}"
    call_sid = next(iter(env.rest.calls))
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        status, _ = await env.callback(f"/twilio/amd?call_id={call_id}", {
            "CallSid": call_sid, "AnsweredBy": "machine_end_beep", "MachineDetectionDuration": "4321"})
        assert status == 200
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid
        assert rec.one("Twiml").endswith(
            "<Response><Say>Hi, this is Acme. Please call us back.</Say><Hangup /></Response>")
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["amd_detected"] and row["amd_answered_by"] == "machine_end_beep"
    assert row["amd_duration"] == 4.321 and row["is_voicemail"] and not row["is_fax"]
    assert row["voicemail_type"] == "text"
    assert row["hangup_reason"] == "voicemail" and row["hangup_source"] == "system"
    # Twilio now plays the message and hangs up by itself: no REST hangup on top of it
    assert not any(r.one("Status") for r in env.rest.of("POST", f"/Calls/{call_sid}.json"))


async def test_amd_human_is_recorded_and_the_call_goes_on(twilio_env):
    env = await twilio_env(settings=VOICEMAIL)
    _, body = await dispatch(env)
    call_id = body["call_id"]
    call_sid = next(iter(env.rest.calls))
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        await env.callback(f"/twilio/amd?call_id={call_id}", {"CallSid": call_sid, "AnsweredBy": "human",
                                                              "MachineDetectionDuration": "1200"})
        row = await env.wait_row(call_id, lambda r: r["amd_detected"])
        assert row["amd_answered_by"] == "human" and not row["is_voicemail"] and row["amd_duration"] == 1.2
        assert env.gw.calls.get(call_id).is_active
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)


def write_wav(path, seconds: float = 0.4) -> str:
    import wave

    import numpy as np
    pcm = (np.sin(2 * np.pi * 600 * np.arange(int(8000 * seconds)) / 8000) * 8000).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    return str(path)


async def test_amd_controller_holds_engine_until_human(twilio_env):
    env = await twilio_env(settings={"amd": {"enabled": True, "provider": "twilio"}})
    _, body = await dispatch(env)
    call_id = body["call_id"]
    assert env.rest.of("POST", "/Calls.json")[-1].one("AsyncAmd") == "true"
    call_sid = next(iter(env.rest.calls))
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        await client.play(b"\xff" * 1600)
        await asyncio.sleep(0.3)
        assert client.got.media == []          # the echo engine's audio is held while AMD decides
        await env.callback(f"/twilio/amd?call_id={call_id}", {"CallSid": call_sid, "AnsweredBy": "human",
                                                              "MachineDetectionDuration": "900"})
        await client.wait_for(lambda: len(client.got.media) >= 8)   # released once a human is confirmed
    row = await env.row(call_id)
    assert row["amd_answered_by"] == "human" and row["amd_duration"] == 0.9


async def test_amd_controller_plays_wav_voicemail_through_the_stream(twilio_env, tmp_path):
    wav = write_wav(tmp_path / "vm.wav", 0.4)
    env = await twilio_env(settings={"amd": {"enabled": True, "provider": "twilio"},
                                     "voicemail": {"enabled": True, "message": wav}})
    _, body = await dispatch(env)
    call_id = body["call_id"]
    call_sid = next(iter(env.rest.calls))
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        await env.callback(f"/twilio/amd?call_id={call_id}", {"CallSid": call_sid,
                                                              "AnsweredBy": "machine_end_silence",
                                                              "MachineDetectionDuration": "5100"})
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 10)
        assert sid == call_sid and rec.one("Status") == "completed"
        assert len(client.got.media) >= 19                      # the 0.4 s message went out as 20 ms frames
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["is_voicemail"] and row["voicemail_type"] == "audio" and row["hangup_reason"] == "voicemail"
    assert row["amd_answered_by"] == "machine_end_silence"


async def test_gateway_amd_provider_does_not_ask_twilio(twilio_env):
    env = await twilio_env(settings={**VOICEMAIL, "amd": {"provider": "gateway"}})
    status, _ = await dispatch(env)
    assert status == 200
    assert env.rest.of("POST", "/Calls.json")[-1].one("MachineDetection") is None


# -- transfer ---------------------------------------------------------------------------------------------------

TRANSFER = {"transfer": {"number": TARGET_A, "backup_numbers": [TARGET_B],
                         "transfer_message": "Transferring you now."}}


async def transfer_env(twilio_env):
    async def script(session):
        await session.transfer()

    engine = ScriptEngine(script, echo=True)
    env = await twilio_env(engine="xfer", settings=TRANSFER)
    env.gw.engines.register("xfer", engine)
    return env, engine


def dial_of(twiml: str) -> tuple[str, str, dict]:
    action = re.search(r'<Dial action="([^"]+)"', twiml).group(1).replace("&amp;", "&")
    number = re.search(r"<Number [^>]*>([^<]+)</Number>", twiml).group(1)
    leg_cb = re.search(r'<Number statusCallback="([^"]+)"', twiml).group(1).replace("&amp;", "&")
    return action, number, {"leg": leg_cb}


async def test_transfer_primary_busy_dials_backup_then_reports_completed(twilio_env):
    env, engine = await transfer_env(twilio_env)
    call_id, call_sid, client = await open_call(env)
    try:
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        twiml = rec.one("Twiml")
        assert sid == call_sid and "<Say>Transferring you now.</Say>" in twiml
        action, number, cbs = dial_of(twiml)
        assert number == TARGET_A and parse_qs(urlparse(action).query)["attempt"] == ["0"]
        # Twilio ends the stream to run the new TwiML: the call must stay up while the transfer is dialled
        await client.stop(call_sid)
        await asyncio.wait_for(client.closed.wait(), 3)
        assert env.gw.calls.get(call_id).is_active
        # primary busy → the action callback answers with a <Dial> to the backup
        path = action.removeprefix(env.gw.settings.public_base)
        status, twiml2 = await env.callback(path, {"CallSid": call_sid, "DialCallStatus": "busy"})
        assert status == 200
        action2, number2, cbs2 = dial_of(twiml2)
        assert number2 == TARGET_B and "<Say>" not in twiml2
        # the backup answers
        status, _ = await env.callback(cbs2["leg"].removeprefix(env.gw.settings.public_base), {
            "CallSid": "CA" + "b" * 32, "ParentCallSid": call_sid, "CallStatus": "in-progress"})
        assert status == 200
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["is_call_transfer"] and row["transfer_target"] == TARGET_B
        assert row["transfer_outcome"] == "completed" and row["hangup_reason"] == "transferred"
        assert row["extra"]["transfer_attempts"] == [{"number": TARGET_A, "status": "busy"}]
        # the bridged call ends later: the Dial action gets a hangup and the log keeps its verdict
        status, twiml3 = await env.callback(action2.removeprefix(env.gw.settings.public_base),
                                            {"CallSid": call_sid, "DialCallStatus": "completed"})
        assert status == 200 and "<Hangup />" in twiml3
    finally:
        await client.__aexit__()


async def test_transfer_nobody_answers_returns_caller_to_the_agent(twilio_env):
    env, engine = await transfer_env(twilio_env)
    call_id, call_sid, client = await open_call(env)
    try:
        _, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        action, _, _ = dial_of(rec.one("Twiml"))
        await client.stop(call_sid)
        await asyncio.wait_for(client.closed.wait(), 3)
    finally:
        await client.__aexit__()
    base = env.gw.settings.public_base
    _, twiml2 = await env.callback(action.removeprefix(base), {"CallSid": call_sid, "DialCallStatus": "no-answer"})
    action2, _, _ = dial_of(twiml2)
    status, twiml3 = await env.callback(action2.removeprefix(base), {"CallSid": call_sid, "DialCallStatus": "busy"})
    assert status == 200 and f'<Parameter name="call_id" value="{call_id}" />' in twiml3
    await engine.wait(lambda: engine.of(TransferResult))
    assert engine.of(TransferResult) == [TransferResult(TARGET_B, "busy")]
    row = await env.row(call_id)
    assert row["transfer_outcome"] == "busy" and row["ended_at"] is None
    # the new stream re-attaches to the same call and the conversation goes on
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)
        await client.stop(call_sid)
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["hangup_source"] == "user"


async def test_api_hangup_while_ringing_cancels_the_twilio_call(twilio_env):
    env = await twilio_env()
    _, body = await dispatch(env)
    call_id = body["call_id"]
    call_sid = next(iter(env.rest.calls))
    status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")
    assert status == 200
    sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
    assert sid == call_sid and rec.one("Status") == "completed"
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["hangup_source"] == "system" and row["hangup_reason"] == "api_hangup"


async def test_api_hangup_mid_call_completes_at_once(twilio_env):
    env = await twilio_env()
    call_id, call_sid, client = await open_call(env)
    try:
        status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")
        assert status == 200
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid and rec.one("Status") == "completed"
        await asyncio.wait_for(client.closed.wait(), 3)
        assert client.close_code == 1000
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["hangup_source"] == "system"
    finally:
        await client.__aexit__()
