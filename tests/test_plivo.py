"""Plivo against a local stand-in of its REST API, V3-signed webhooks, and a websocket client speaking Plivo's
Audio Streams protocol: inbound echo with checkpoints and hangup, outbound dispatch, transfer through <Dial>,
forged webhooks refused, import."""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest_asyncio

from carriers.plivo import PlivoCarrier
from direct_path import on_direct_path
from fakes.plivo_rest import FakePlivoRest
from fakes.twilio_env import recording
from gateway.runtime import Gateway
from gateway.simulate.plivo_stream import PlivoStreamClient, post_signed
from test_twilio_media import transferring_env
from test_twilio_rest import TARGET_A, TARGET_B, TRANSFER, api

NUMBER = "+15005550006"
CALLER = "+14155550100"


@dataclass
class PlivoEnv:
    gw: Gateway
    rest: FakePlivoRest
    agent: dict[str, Any]
    number: dict[str, Any]

    def http(self, path: str) -> str:
        return self.gw.url(path)

    async def post(self, path: str, params: dict[str, str], **kw: Any) -> tuple[int, str]:
        token = kw.pop("token", self.rest.auth_token)
        return await post_signed(self.http(path), params, token, **kw)

    async def inbound(self) -> tuple[str, str, str]:
        """Plivo's answer webhook for a new inbound call: (call id, CallUUID, the stream URL we answered)."""
        call_uuid = self.rest.add_call()
        status, body = await self.post("/plivo/answer", {"CallUUID": call_uuid, "From": CALLER.lstrip("+"),
                                                         "To": NUMBER.lstrip("+"), "Direction": "inbound",
                                                         "CallStatus": "ringing", "Event": "StartApp"})
        assert status == 200, body
        url = stream_url(body)
        return re.search(r"call_id=([0-9a-f]+)", url).group(1), call_uuid, url

    def stream(self, url: str) -> PlivoStreamClient:
        u = urlparse(url)
        return PlivoStreamClient(f"ws://127.0.0.1:{self.gw.http_port}{u.path}?{u.query}")

    async def wait_row(self, call_id: str, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while not pred(r := await self.gw.store.find_call(call_uuid=call_id) or {}):
                await asyncio.sleep(0.02)
            return r
        return await asyncio.wait_for(loop(), timeout)


def stream_url(xml: str) -> str:
    m = re.search(r'<Stream bidirectional="true"[^>]*>([^<]+)</Stream>', xml)
    assert m, xml
    assert 'contentType="audio/x-mulaw;rate=8000"' in xml and 'keepCallAlive="true"' in xml
    return unescape(m.group(1))


@pytest_asyncio.fixture
async def plivo_env(make_gateway):
    made: list[tuple[Gateway, FakePlivoRest]] = []

    async def factory(*, engine: str = "echo", settings: dict[str, Any] | None = None) -> PlivoEnv:
        rest = await FakePlivoRest().start()
        rest.numbers.add(NUMBER.lstrip("+"))
        gw = await make_gateway(carriers={"plivo": PlivoCarrier}, engine="echo")
        made.append((gw, rest))
        gw.carriers["plivo"].api_base = rest.url
        agent = await gw.store.create_agent({"name": "plivo agent", "engine": engine, "settings": settings or {}})
        number = await gw.store.create_number(
            {"phone_number": NUMBER, "provider": "plivo", "agent_id": agent["id"],
             "config": {"auth_id": rest.auth_id}}, {"auth_token": rest.auth_token})
        return PlivoEnv(gw, rest, agent, number)

    yield factory
    for gw, rest in made:
        if gw.started:
            await gw.stop()
        await rest.stop()


async def test_inbound_stream_echoes_with_checkpoints_and_api_hangup_deletes_the_call(plivo_env):
    env = await plivo_env()
    call_id, call_uuid, url = await env.inbound()
    assert url.startswith(env.gw.settings.public_ws_base + "/plivo/media?call_id=")
    async with env.stream(url) as client:
        await client.start(call_uuid)
        await client.play(recording()[:8000])
        await client.wait_for(lambda: len(client.got.media) >= 45)
        assert on_direct_path(env.gw.carriers["plivo"].legs[call_id].stream.ws)    # (carriers/wsdirect.py)
        assert all(len(p) == 160 for _, p in client.got.media)
        plays = [e for e in client.got.events if e["event"] == "playAudio"]
        assert plays[0]["media"]["contentType"] == "audio/x-mulaw" and plays[0]["media"]["sampleRate"] == 8000
        status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")
        assert status == 200
        kind, got, _ = await asyncio.wait_for(env.rest.actions.get(), 5)
        assert (kind, got) == ("hangup", call_uuid)
    row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
    assert row["channel_type"] == "plivo" and row["carrier_sid"] == call_uuid and row["hangup_source"] == "system"


async def test_l16_16k_stream_when_the_number_asks_for_it(plivo_env):
    env = await plivo_env()
    await env.gw.store.update_number(env.number["id"], config={"auth_id": env.rest.auth_id,
                                                               "audio_format": "audio/x-l16;rate=16000"})
    call_uuid = env.rest.add_call()
    status, xml = await env.post("/plivo/answer", {"CallUUID": call_uuid, "From": CALLER[1:], "To": NUMBER[1:]})
    assert status == 200 and 'contentType="audio/x-l16;rate=16000"' in xml, xml
    url = unescape(re.search(r"<Stream[^>]*>([^<]+)</Stream>", xml).group(1))
    tone = (np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 8000).astype("<i2").tobytes()
    async with env.stream(url) as client:
        await client.start(call_uuid, media_format={"encoding": "audio/x-l16", "sampleRate": 16000})
        for i in range(0, len(tone), 640):                                  # 20 ms of L16 at 16 kHz
            await client.media(tone[i:i + 640])
        await client.wait_for(lambda: len(client.got.media) >= 30)
        plays = [e for e in client.got.events if e["event"] == "playAudio"]
        assert plays[0]["media"]["contentType"] == "audio/x-l16" and plays[0]["media"]["sampleRate"] == 16000
        assert all(len(p) == 640 for _, p in client.got.media)
        back = np.frombuffer(b"".join(p for _, p in client.got.media), "<i2").astype(float)
        assert np.sqrt(np.mean(back ** 2)) > 2000        # the tone came back as little-endian PCM, not noise


async def test_caller_hangup_closes_the_socket_and_ends_the_call(plivo_env):
    env = await plivo_env()
    call_id, call_uuid, url = await env.inbound()
    async with env.stream(url) as client:
        await client.start(call_uuid)
        await client.play(b"\xff" * 800)
        await client.wait_for(lambda: len(client.got.media) >= 3)
    row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
    assert row["hangup_source"] == "user" and row["hangup_reason"] == "caller_hangup"


async def test_unsigned_or_forged_webhooks_are_refused(plivo_env):
    env = await plivo_env()
    params = {"CallUUID": env.rest.add_call(), "From": CALLER.lstrip("+"), "To": NUMBER.lstrip("+")}
    assert (await env.post("/plivo/answer", params, token=None))[0] == 403
    assert (await env.post("/plivo/answer", params, token="not-the-token"))[0] == 403
    assert (await env.post("/plivo/answer", params, tamper=True))[0] == 403
    rows, total = await env.gw.store.list_calls()
    assert total == 0 and not env.gw.calls.active
    call_id, call_uuid, url = await env.inbound()
    assert (await env.post(f"/plivo/hangup?call_id={call_id}", {"CallUUID": call_uuid}, token="x"))[0] == 403
    assert env.gw.calls.get(call_id) is not None


async def test_outbound_dispatch_then_answer_url_gets_the_stream(plivo_env):
    env = await plivo_env()
    status, body = await api(env, "POST", "/api/v1/calls/dispatch", {
        "agent_id": env.agent["id"], "to_number": "+14155550199", "from_number_id": env.number["id"]})
    assert status == 200, body
    call_id = body["call_id"]
    kind, request_uuid, made = await asyncio.wait_for(env.rest.actions.get(), 5)
    assert kind == "call" and made["to"] == "14155550199" and made["from"] == NUMBER.lstrip("+")
    assert made["answer_url"] == env.gw.settings.public_base + f"/plivo/answer?call_id={call_id}"
    call_uuid = env.rest.add_call()
    status, xml = await post_signed(made["answer_url"], {"CallUUID": call_uuid, "From": NUMBER.lstrip("+"),
                                                         "To": "14155550199", "Direction": "outbound"},
                                    env.rest.auth_token)
    assert status == 200, xml
    async with env.stream(stream_url(xml)) as client:
        await client.start(call_uuid)
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)
        status, _ = await post_signed(made["hangup_url"], {"CallUUID": call_uuid, "HangupCause": "NORMAL_CLEARING",
                                                           "HangupCauseName": "Normal Hangup"}, env.rest.auth_token)
        assert status == 200
    row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
    assert row["carrier_sid"] == call_uuid and row["answered_at"] and row["hangup_source"] == "user"


async def test_api_hangup_before_answer_cancels_the_request(plivo_env):
    env = await plivo_env()
    _, body = await api(env, "POST", "/api/v1/calls/dispatch", {
        "agent_id": env.agent["id"], "to_number": "+14155550199", "from_number_id": env.number["id"]})
    _, request_uuid, _ = await asyncio.wait_for(env.rest.actions.get(), 5)
    status, _ = await api(env, "POST", f"/api/v1/calls/{body['call_id']}/hangup")
    assert status == 200
    assert await asyncio.wait_for(env.rest.actions.get(), 5) == ("cancel", request_uuid, None)


async def test_transfer_dials_through_xml_busy_then_backup_answers(plivo_env):
    env, engine = await transferring_env(plivo_env, TRANSFER)
    call_id, call_uuid, url = await env.inbound()
    base = env.gw.settings.public_base
    async with env.stream(url) as client:
        await client.start(call_uuid)
        kind, got, body = await asyncio.wait_for(env.rest.actions.get(), 5)
        assert (kind, got, body["legs"]) == ("transfer", call_uuid, "aleg")
    # Plivo left our stream and fetches the transfer XML
    status, xml = await post_signed(body["aleg_url"], {"CallUUID": call_uuid}, env.rest.auth_token)
    assert status == 200 and f"<Number>{TARGET_A}</Number>" in xml and "<Speak>Transferring you now.</Speak>" in xml
    assert env.gw.calls.get(call_id) is not None
    action = unescape(re.search(r'<Dial action="([^"]+)"', xml).group(1))
    status, xml2 = await post_signed(action, {"CallUUID": call_uuid, "DialStatus": "busy"}, env.rest.auth_token)
    assert status == 200 and f"<Number>{TARGET_B}</Number>" in xml2
    callback = unescape(re.search(r'callbackUrl="([^"]+)"', xml2).group(1))
    status, _ = await post_signed(callback, {"CallUUID": call_uuid, "DialAction": "answer"}, env.rest.auth_token)
    assert status == 200
    row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
    assert row["transfer_outcome"] == "completed" and row["transfer_target"] == TARGET_B
    assert row["extra"]["transfer_attempts"][0] == {"number": TARGET_A, "status": "busy"}
    assert action.startswith(base)


async def test_import_checks_credentials_and_number(plivo_env):
    env = await plivo_env()
    other = "+15005550007"
    env.rest.numbers.add(other.lstrip("+"))
    good = {"phone_number": other, "auth_id": env.rest.auth_id, "auth_token": env.rest.auth_token}
    status, body = await api(env, "POST", "/api/v1/phone_number/import/plivo", {**good, "auth_token": "wrong"})
    assert status == 422 and body["field"] == "auth_token" and "Plivo rejected" in body["error"], body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/plivo", {**good, "phone_number": "+15005550099"})
    assert status == 422 and "not on Plivo account" in body["error"], body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/plivo", good)
    assert status == 201, body
    assert env.rest.auth_token not in str(body)
