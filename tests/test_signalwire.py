"""SignalWire through its LaML (Twilio-compatible) API: the Twilio carrier's flows against a SignalWire-shaped
stand-in (project id + API token, REST under /api/laml, X-SignalWire-Signature keyed by the Signing Key), with a
websocket client speaking the compatible Media Streams protocol."""
from __future__ import annotations

import asyncio

import numpy as np

from fakes.signalwire_env import signalwire_env  # noqa: F401  (fixture)
from fakes.twilio_env import CALLER, NUMBER, recording
from gateway.simulate.twilio_stream import post_signed
from test_twilio_media import transferring_env
from test_twilio_rest import TARGET_A, TRANSFER, api, dial_of, dispatch
from voicecodecs import ulaw_to_pcm16

OTHER = "+15005550007"


async def open_call(env):
    call_id, call_sid, twiml = await env.inbound()
    assert f'<Connect><Stream url="{env.gw.settings.public_ws_base}/signalwire/media">' in twiml
    client = env.stream()
    await client.__aenter__()
    await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid)
    return call_id, call_sid, client


async def test_inbound_call_echoes_audio_and_api_hangup_completes_it_over_laml_rest(signalwire_env):
    env = await signalwire_env()
    call_id, call_sid, client = await open_call(env)
    try:
        audio = recording()[:8000]     # one second of μ-law
        await client.play(audio)
        await client.wait_for(lambda: len(client.got.media) >= 45)
        assert all(len(p) == 160 for _, p in client.got.media)
        sent = np.frombuffer(ulaw_to_pcm16(audio), "<i2").astype(float)
        back = np.frombuffer(ulaw_to_pcm16(b"".join(p for _, p in client.got.media)), "<i2").astype(float)
        assert np.sqrt(np.mean(back ** 2)) > 0.3 * np.sqrt(np.mean(sent ** 2))   # the echo is audible
        status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")
        assert status == 200
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid and rec.one("Status") == "completed"
        assert rec.path == f"/api/laml/2010-04-01/Accounts/{env.account.sid}/Calls/{call_sid}.json"
        await asyncio.wait_for(client.closed.wait(), 3)
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["channel_type"] == "signalwire" and row["hangup_source"] == "system"
    finally:
        await client.__aexit__()


async def test_webhook_signature_is_required_and_keyed_by_the_signing_key(signalwire_env):
    env = await signalwire_env(signing_key="PSK_" + "k" * 28)
    params = {"CallSid": env.rest.add_call(env.account), "AccountSid": env.account.sid, "From": CALLER,
              "To": NUMBER}
    url = env.http("/signalwire/voice")
    for token, header in ((None, "X-SignalWire-Signature"),                # unsigned
                          (env.account.token, "X-SignalWire-Signature"),   # the API token, not the signing key
                          ("forged", "X-SignalWire-Signature")):
        status, _ = await post_signed(url, params, token, header=header)
        assert status == 403
    status, _ = await post_signed(url, params, env.key, header="X-SignalWire-Signature", tamper=True)
    assert status == 403
    assert not env.gw.calls.active
    # the Twilio-named header is SignalWire's compatibility alias: accepted with the right key
    status, body = await post_signed(url, params, env.key, header="X-Twilio-Signature")
    assert status == 200 and "/signalwire/media" in body


async def test_outbound_dispatch_posts_laml_calls_with_project_auth_and_stream(signalwire_env):
    env = await signalwire_env(settings={"amd": {"enabled": True, "provider": "signalwire"}})
    status, body = await dispatch(env)
    assert status == 200, body
    call_id = body["call_id"]
    create = env.rest.of("POST", "/Calls.json")[-1]
    assert create.path == f"/api/laml/2010-04-01/Accounts/{env.account.sid}/Calls.json"
    assert create.one("From") == NUMBER and create.one("To") == "+14155550199"
    assert f'<Stream url="{env.gw.settings.public_ws_base}/signalwire/media">' in create.one("Twiml")
    assert create.one("StatusCallback") == env.gw.settings.public_base + f"/signalwire/status?call_id={call_id}"
    assert create.one("MachineDetection") == "DetectMessageEnd"     # SignalWire's compatible AMD asked for
    call_sid = next(iter(env.rest.calls))
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid)
        status, _ = await env.callback(f"/signalwire/amd?call_id={call_id}",
                                       {"CallSid": call_sid, "AnsweredBy": "human"})
        assert status == 200
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)
    row = await env.wait_row(call_id, lambda r: r["amd_detected"])
    assert row["amd_answered_by"] == "human"


async def test_transfer_updates_the_call_with_a_dial(signalwire_env):
    env, engine = await transferring_env(signalwire_env, TRANSFER)
    call_id, call_sid, client = await open_call(env)
    try:
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid and rec.path.startswith("/api/laml/2010-04-01/")
        action, number, cbs = dial_of(rec.one("Twiml"))
        assert number == TARGET_A and action.startswith(env.gw.settings.public_base + "/signalwire/transfer_status")
        await client.stop(call_sid)
        await asyncio.wait_for(client.closed.wait(), 3)
        status, _ = await env.callback(cbs["leg"].removeprefix(env.gw.settings.public_base), {
            "CallSid": "c0ffee00-0000-4000-8000-000000000001", "CallStatus": "in-progress"})
        assert status == 200
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["transfer_outcome"] == "completed" and row["hangup_reason"] == "transferred"
    finally:
        await client.__aexit__()


async def test_import_checks_project_and_number_and_normalises_the_space(signalwire_env):
    env = await signalwire_env()
    env.account.numbers[OTHER] = {"sid": "PN" + "7" * 32, "phone_number": OTHER, "voice_url": None,
                                  "status_callback": None}
    base = {"phone_number": OTHER, "project_id": env.account.sid, "api_token": env.account.token}
    status, body = await api(env, "POST", "/api/v1/phone_number/import/signalwire",
                             {**base, "space_url": "not a host"})
    assert status == 422 and body["field"] == "space_url", body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/signalwire",
                             {**base, "api_token": "wrong", "space_url": "example.signalwire.com"})
    assert status == 422 and body["field"] == "api_token" and "SignalWire rejected" in body["error"], body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/signalwire", {
        **base, "space_url": "https://Example.signalwire.com/", "signing_key": "PSK_secret",
        "configure_webhooks": True, "force_webhooks": True})
    assert status == 201, body
    stored = body["phone_number"]
    assert stored["config"]["space_url"] == "example.signalwire.com"
    assert env.account.token not in str(body) and "PSK_secret" not in str(body)
    assert env.account.numbers[OTHER]["voice_url"] == env.gw.settings.public_base + "/signalwire/voice"
