"""The App Builder flow end to end: Voicebot stream → Passthru (200/302) → Connect dynamic URL → omni_status."""
from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp
import pytest

from carriers.exotel import CloseCode, ExotelCarrier
from exotel_helpers import EXOPHONE, CallWatch, FakeExotel, add_exophone, call_coming_token, tone, ws_url
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import CallStarted, Hangup, HangupSource

PRIMARY, BACKUP1, BACKUP2 = "+919000000001", "+919000000002", "+919000000003"


class ActThenStop(VoiceEngine):
    """Says a short line, then asks for a transfer or a hangup, then waits for the end."""

    sample_rate = 16000

    def __init__(self, action: str, seconds: float = 0.6) -> None:
        self.action = action
        self.seconds = seconds

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, CallStarted):
                await session.play(tone(self.seconds, 16000), end_of_utterance=True)
                if self.action == "transfer":
                    await session.transfer()
                else:
                    await session.hangup("goodbye")
            elif isinstance(item, Hangup):
                return


async def _gateway(make_gateway, action: str):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.engines.register(action, ActThenStop(action))
    agent = await gw.store.create_agent({"name": "a", "engine": action, "settings": {
        "transfer": {"number": PRIMARY, "backup_numbers": [BACKUP1, BACKUP2], "ring_timeout": 25}}})
    await add_exophone(gw, agent_id=agent["id"])
    return gw


async def _stream_until_closed(gw, call_sid: str):
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start(call_sid)
        call = await watch.next_call()
        code = await exo.wait_closed(timeout=10)
        await exo.close()
    return watch, call, exo, code


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def _get(gw, path: str, **params) -> Reply:
    """A GET as Exotel's applets make it (query parameters, no redirect following)."""
    async with aiohttp.ClientSession() as s, s.get(gw.url(path), params=params, allow_redirects=False,
                     headers={"Exotel-Version": "1.0"}) as r:
        return Reply(r.status, await r.read())


async def test_transfer_flow_302_then_connect_numbers_then_call_end(make_gateway):
    gw = await _gateway(make_gateway, "transfer")
    watch, call, exo, code = await _stream_until_closed(gw, "CA-xfer")
    assert code == CloseCode.NORMAL
    # the line before the transfer was played out (≥ 0.6 s of 8 kHz PCM16) and flushed in Exotel-sized chunks
    assert len(exo.rx.audio) >= 9600 and all(len(c) % 320 == 0 and len(c) >= 3200 for c in exo.rx.chunks)
    assert call.is_active                              # the phone call goes on: Exotel's Connect takes over

    r = await _get(gw, "/exotel/should_end_the_call", CallSid="CA-xfer", From="09876543210", To="08047491899",
                   CallStatus="in-progress", Direction="incoming")
    assert r.status == 302

    r = await _get(gw, "/exotel/call_transfer", CallSid="CA-xfer", CallFrom="09876543210", CallTo="08047491899")
    assert r.status == 200
    body = r.json()
    assert body["destination"]["numbers"] == [PRIMARY, BACKUP1, BACKUP2]
    assert body["outgoing_phone_number"] == "08047491899"
    assert body["max_ringing_duration"] == 25 and body["parallel_ringing"]["activate"] is False
    row = await gw.store.get_call(call.log_id)
    assert row["is_call_transfer"] is True and row["transfer_target"] == PRIMARY and row["ended_at"] is None

    r = await _get(gw, "/exotel/should_end_the_call", CallSid="CA-xfer", omni_status="call_end",
                   DialWhomNumber="09000000002", DialCallDuration="42")
    assert r.status == 200
    row = await watch.wait_ended(call)
    assert row["hangup_reason"] == "call_end" and row["ended_at"] is not None
    assert row["transfer_outcome"] == "completed" and row["transfer_target"] == BACKUP1
    assert row["extra"]["exotel_dial_call_duration"] == "42"


async def test_hangup_flow_closes_stream_after_goodbye_then_200(make_gateway):
    gw = await _gateway(make_gateway, "hangup")
    watch, call, exo, code = await _stream_until_closed(gw, "CA-bye")
    assert code == CloseCode.NORMAL
    assert len(exo.rx.audio) >= 9600                  # the goodbye was sent before the stream closed
    drain = [n for n, _ in exo.rx.marks if n.startswith("gw-exo-")]
    assert drain, "the gateway waited for Exotel to play the goodbye (its own mark) before closing"
    row = await watch.wait_ended(call)
    assert row["hangup_source"] == "agent" and row["hangup_reason"] == "goodbye"
    r = await _get(gw, "/exotel/should_end_the_call", CallSid="CA-bye", CallStatus="in-progress")
    assert r.status == 200


@pytest.mark.parametrize("omni,outcome,target", [("call_end", "completed", PRIMARY),
                                                 ("nobody_ans", "no-answer", PRIMARY),
                                                 ("didnt_dial_anyone", "failed", None)])
async def test_omni_status_variants_land_in_call_log(make_gateway, omni, outcome, target):
    gw = await _gateway(make_gateway, "transfer")
    watch, call, _exo, _code = await _stream_until_closed(gw, f"CA-{omni}")
    assert (await _get(gw, "/exotel/should_end_the_call", CallSid=f"CA-{omni}")).status == 302
    assert (await _get(gw, "/exotel/call_transfer", CallSid=f"CA-{omni}")).status == 200
    r = await _get(gw, "/exotel/should_end_the_call", CallSid=f"CA-{omni}", omni_status=omni)
    assert r.status == 200
    row = await watch.wait_ended(call)
    assert row["hangup_reason"] == omni and row["ended_at"] is not None
    assert row["transfer_outcome"] == outcome and row["transfer_target"] == target
    assert row["hangup_source"] == ("user" if omni == "call_end" else "carrier")


async def test_omni_status_after_the_call_already_closed_updates_the_log(make_gateway):
    gw = await _gateway(make_gateway, "hangup")
    watch, call, _exo, _ = await _stream_until_closed(gw, "CA-late")
    await watch.wait_ended(call)
    r = await _get(gw, "/exotel/should_end_the_call", CallSid="CA-late", omni_status="didnt_dial_anyone")
    assert r.status == 200
    row = await gw.store.get_call(call.log_id)
    assert row["hangup_reason"] == "didnt_dial_anyone"


async def test_unknown_callsid_is_200_never_5xx(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    assert (await _get(gw, "/exotel/should_end_the_call", CallSid="nope")).status == 200
    assert (await _get(gw, "/exotel/should_end_the_call")).status == 200
    assert (await _get(gw, "/exotel/should_end_the_call", CallSid="nope", omni_status="call_end")).status == 200
    assert (await _get(gw, "/exotel/should_end_the_call", CallSid="x" * 5000)).status == 200
    r = await _get(gw, "/exotel/call_transfer", CallSid="nope")
    assert r.status == 200 and r.json()["destination"]["numbers"] == []
    assert (await _get(gw, "/exotel/call_coming", CallSid="nope", CallTo="08000000009")).status == 200


async def test_call_coming_opens_the_log_and_the_stream_joins_it(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    r = await _get(gw, "/exotel/call_coming", gw_token=call_coming_token(), CallSid="CA-cc", CallFrom="09876543210",
                   CallTo="08047491899", Direction="incoming", Created="2026-11-23 10:00:00")
    assert r.status == 200
    call = await watch.next_call()
    row = await gw.store.get_call(call.log_id)
    assert row["call_status"] == "ringing" and row["carrier_sid"] == "CA-cc" and row["to_number"] == EXOPHONE
    assert row["extra"]["exotel_call_coming"]["Created"] == "2026-11-23 10:00:00"
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-cc")
        await exo.play(tone(0.5))
        await exo.wait_for(lambda rx: rx.chunks)
        assert watch.started.empty()                       # no second call: the stream joined the announced one
        await exo.stop()
        row = await watch.wait_ended(call)
        await exo.close()
    events = [e["kind"] for e in await gw.store.list_call_events(call.log_id)]
    assert events.index("phone_call:connection_requested") < events.index("phone_call:accepted")
    assert row["answered_at"] is not None and row["hangup_source"] == "user"


async def test_announced_call_whose_stream_never_comes_is_closed_by_passthru(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    await _get(gw, "/exotel/call_coming", gw_token=call_coming_token(), CallSid="CA-nostream", CallFrom="09876543210",
               CallTo="08047491899")
    call = await watch.next_call()
    r = await _get(gw, "/exotel/should_end_the_call", CallSid="CA-nostream", **{"Stream[Status]": "failed",
                                                                               "Stream[DisconnectedBy]": "system"})
    assert r.status == 200
    row = await watch.wait_ended(call)
    assert row["hangup_reason"] == "stream_never_started" and row["call_status"] == "canceled"
    assert row["extra"]["exotel_stream"]["Status"] == "failed"


async def test_announced_call_whose_stream_never_comes_is_closed_by_watchdog(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.carriers["exotel"].attach_timeout = 0.2
    await add_exophone(gw)
    watch = CallWatch(gw)
    await _get(gw, "/exotel/call_coming", gw_token=call_coming_token(), CallSid="CA-wd", CallFrom="09876543210",
               CallTo="08047491899")
    call = await watch.next_call()
    row = await watch.wait_ended(call)
    assert row["hangup_reason"] == "stream_never_started" and not gw.calls.active


async def test_api_hangup_closes_the_stream(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-api")
        call = await watch.next_call()
        await exo.play(tone(0.3))
        await call.request_hangup(HangupSource.SYSTEM, "api_hangup")
        code = await exo.wait_closed()
        row = await watch.wait_ended(call)
        await exo.close()
    assert code == CloseCode.NORMAL and row["hangup_source"] == "system"
    assert (await _get(gw, "/exotel/should_end_the_call", CallSid="CA-api")).status == 200
