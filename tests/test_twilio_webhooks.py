"""Twilio voice and status webhooks: signatures (direct and behind a proxy), routing, rejection, call-log updates."""
from __future__ import annotations

import re

from fakes.twilio_env import CALLER, NUMBER, twilio_env  # noqa: F401  (fixture)
from gateway.simulate.twilio_stream import post_signed


async def test_voice_webhook_answers_connect_stream_with_call_and_agent(twilio_env):
    env = await twilio_env()
    call_id, call_sid, twiml = await env.inbound()
    ws_base = env.gw.settings.public_ws_base
    assert f'<Connect><Stream url="{ws_base}/twilio/media">' in twiml
    assert f'<Parameter name="agent_id" value="{env.agent["id"]}" />' in twiml
    call = env.gw.calls.get(call_id)
    assert call is not None and call.carrier_sid == call_sid and call.agent["id"] == env.agent["id"]
    row = await env.row(call_id)
    assert row["carrier_sid"] == call_sid and row["call_direction"] == "inbound"
    assert row["from_number"] == CALLER and row["to_number"] == NUMBER and row["call_status"] == "ringing"


async def test_tampered_or_missing_signature_is_403_and_nothing_stored(twilio_env):
    env = await twilio_env()
    params = {"CallSid": "CA" + "1" * 32, "AccountSid": env.account.sid, "From": CALLER, "To": NUMBER}
    status, _ = await post_signed(env.http("/twilio/voice"), params, env.account.token, tamper=True)
    assert status == 403
    status, _ = await post_signed(env.http("/twilio/voice"), params, None)
    assert status == 403
    status, _ = await post_signed(env.http("/twilio/voice"), params, "not-the-token")
    assert status == 403
    rows, total = await env.gw.store.list_calls()
    assert total == 0 and not env.gw.calls.active


async def test_signature_checked_against_public_url_behind_proxy(twilio_env):
    """Twilio signs the public https URL; the gateway sees plain http on its own port and must rebuild it."""
    env = await twilio_env(public_url="https://voice.example.com")
    params = {"CallSid": env.rest.add_call(env.account), "AccountSid": env.account.sid, "From": CALLER, "To": NUMBER}
    status, body = await post_signed(env.http("/twilio/voice"), params, env.account.token,
                                     signed_url="https://voice.example.com/twilio/voice")
    assert status == 200, body
    assert '<Stream url="wss://voice.example.com/twilio/media">' in body
    # signed for the local URL instead: not what Twilio would have signed → refused
    status, _ = await post_signed(env.http("/twilio/voice"), params, env.account.token)
    assert status == 403


async def test_unknown_number_is_rejected_with_event(twilio_env):
    env = await twilio_env()
    status, body = await env.callback("/twilio/voice", {"CallSid": "CA" + "2" * 32, "From": CALLER,
                                                        "To": "+15005559999"})
    assert status == 200 and "<Reject />" in body
    rows, _ = await env.gw.store.list_calls()
    assert len(rows) == 1 and rows[0]["call_status"] == "rejected"
    kinds = [e["kind"] for e in await env.gw.store.list_call_events(rows[0]["id"])]
    assert "phone_call:rejected" in kinds
    assert not env.gw.calls.active


async def test_status_callbacks_drive_the_call_log(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    status, _ = await env.callback("/twilio/status", {"CallSid": call_sid, "CallStatus": "in-progress"})
    assert status == 200
    row = await env.row(call_id)
    assert row["call_status"] == "in-progress" and row["answered_at"] is not None
    status, _ = await env.callback("/twilio/status", {"CallSid": call_sid, "CallStatus": "completed",
                                                      "CallDuration": "7"})
    assert status == 200
    row = await env.row(call_id)
    assert row["call_status"] == "completed" and row["hangup_source"] == "user" and row["ended_at"]
    assert row["extra"]["twilio_call_duration"] == 7
    assert env.gw.calls.get(call_id) is None


async def test_status_callback_busy_and_bad_signature(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    status, _ = await env.callback("/twilio/status", {"CallSid": call_sid, "CallStatus": "busy"}, tamper=True)
    assert status == 403
    assert (await env.row(call_id))["call_status"] == "ringing"
    status, _ = await env.callback(f"/twilio/status?call_id={call_id}", {"CallSid": call_sid, "CallStatus": "busy"})
    assert status == 200
    row = await env.row(call_id)
    assert row["call_status"] == "busy" and row["hangup_source"] == "user" and row["hangup_reason"] == "busy"


async def test_stream_that_never_connects_is_ended_by_watchdog(twilio_env):
    env = await twilio_env()
    env.carrier.connect_timeout = 0.3
    call_id, call_sid, _ = await env.inbound()
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["call_status"] == "failed" and row["hangup_source"] == "carrier"
    assert row["hangup_reason"] == "stream_not_connected"
    # and the call was hung up at Twilio so it cannot linger there
    assert any(r.one("Status") == "completed" for r in env.rest.of("POST", f"/Calls/{call_sid}.json"))


async def test_voice_webhook_params_are_form_encoded_like_twilio(twilio_env):
    """Extra Twilio parameters (CallerName, FromCountry…) take part in the signature and reach the call."""
    env = await twilio_env()
    sid = env.rest.add_call(env.account)
    status, body = await env.callback("/twilio/voice", {"CallSid": sid, "From": CALLER, "To": NUMBER,
                                                        "CallerName": "Dana", "FromCountry": "US"})
    assert status == 200
    call_id = re.search(r'name="call_id" value="([0-9a-f]+)"', body).group(1)
    assert env.gw.calls.get(call_id).metadata["caller_name"] == "Dana"


async def test_retried_voice_webhook_answers_the_same_call(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    again, _, _ = await env.inbound(call_sid=call_sid)
    assert again == call_id
    rows, total = await env.gw.store.list_calls()
    assert total == 1
