"""Telnyx Call Control v2 against a local stand-in of its REST API, with Ed25519-signed webhooks and a websocket
client speaking Telnyx's media-streaming protocol: inbound echo and hangup, outbound dispatch with Telnyx AMD,
transfer with a backup number, forged or stale webhooks refused, import."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carriers.telnyx import TelnyxCarrier, decode_state
from carriers.twilio_media import CloseCode
from direct_path import on_direct_path
from fakes.telnyx_rest import FakeTelnyxRest
from fakes.twilio_env import recording
from gateway.frames import AudioFrame, Hangup
from gateway.runtime import Gateway
from gateway.simulate.telnyx_stream import TelnyxStreamClient, post_webhook, public_key_b64
from test_twilio_media import ScriptEngine, transferring_env
from test_twilio_rest import TARGET_A, TARGET_B, TRANSFER, api
from voicecodecs import alaw_to_pcm16, pcm16_to_alaw

NUMBER = "+15005550006"
CALLER = "+14155550100"


@dataclass
class TelnyxEnv:
    gw: Gateway
    rest: FakeTelnyxRest
    key: Ed25519PrivateKey
    agent: dict[str, Any]
    number: dict[str, Any]

    def http(self, path: str) -> str:
        return self.gw.url(path)

    async def webhook(self, event: str, payload: dict[str, Any], **kw: Any) -> tuple[int, Any]:
        return await post_webhook(self.gw.url("/telnyx/webhook"), event, payload, kw.pop("key", self.key), **kw)

    async def inbound(self) -> tuple[str, str, dict[str, Any]]:
        """call.initiated for a new inbound call; returns (call id, call_control_id, the answer command's body)."""
        ccid = self.rest.add_call()
        status, body = await self.webhook("call.initiated", {
            "call_control_id": ccid, "call_leg_id": "leg", "call_session_id": "sess", "direction": "incoming",
            "from": CALLER, "to": NUMBER, "state": "parked"})
        assert status == 200, body
        got, action, answer = await asyncio.wait_for(self.rest.commands.get(), 5)
        assert (got, action) == (ccid, "answer")
        return decode_state(answer["client_state"]), ccid, answer

    def stream(self, stream_url: str) -> TelnyxStreamClient:
        u = urlparse(stream_url)
        return TelnyxStreamClient(f"ws://127.0.0.1:{self.gw.http_port}{u.path}?{u.query}")

    async def row(self, call_id: str) -> dict[str, Any]:
        return await self.gw.store.find_call(call_uuid=call_id)

    async def wait_row(self, call_id: str, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while not pred(r := await self.row(call_id) or {}):
                await asyncio.sleep(0.02)
            return r
        return await asyncio.wait_for(loop(), timeout)


@pytest_asyncio.fixture
async def telnyx_env(make_gateway):
    made: list[tuple[Gateway, FakeTelnyxRest]] = []

    async def factory(*, engine: str = "echo", settings: dict[str, Any] | None = None) -> TelnyxEnv:
        rest = await FakeTelnyxRest().start()
        rest.add_number(NUMBER)
        gw = await make_gateway(carriers={"telnyx": TelnyxCarrier}, engine="echo")
        made.append((gw, rest))
        gw.carriers["telnyx"].api_base = rest.url
        key = Ed25519PrivateKey.generate()
        agent = await gw.store.create_agent({"name": "telnyx agent", "engine": engine, "settings": settings or {}})
        number = await gw.store.create_number(
            {"phone_number": NUMBER, "provider": "telnyx", "agent_id": agent["id"],
             "config": {"public_key": public_key_b64(key), "connection_id": "1684641123236054244"}},
            {"api_key": rest.api_key})
        return TelnyxEnv(gw, rest, key, agent, number)

    yield factory
    for gw, rest in made:
        if gw.started:
            await gw.stop()
        await rest.stop()


async def test_inbound_call_answers_with_stream_echoes_audio_and_api_hangup_uses_call_control(telnyx_env):
    env = await telnyx_env()
    call_id, ccid, answer = await env.inbound()
    assert answer["stream_bidirectional_mode"] == "rtp" and answer["stream_bidirectional_codec"] == "PCMU"
    assert answer["stream_url"].startswith(env.gw.settings.public_ws_base + "/telnyx/media?call_id=" + call_id)
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid)
        await client.play(recording()[:8000])
        await client.wait_for(lambda: len(client.got.media) >= 45)
        assert on_direct_path(env.gw.carriers["telnyx"].legs[call_id].stream.ws)   # (carriers/wsdirect.py)
        assert all(len(p) == 160 for _, p in client.got.media)
        assert all("streamSid" not in e for e in client.got.events)     # Telnyx's output has no stream id
        status, _ = await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")
        assert status == 200
        got, action, _ = await asyncio.wait_for(env.rest.commands.get(), 5)
        assert (got, action) == (ccid, "hangup")
        await asyncio.wait_for(client.closed.wait(), 3)
    row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
    assert row["channel_type"] == "telnyx" and row["carrier_sid"] == ccid and row["hangup_source"] == "system"


async def test_caller_hangup_webhook_ends_the_call(telnyx_env):
    env = await telnyx_env()
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid)
        status, _ = await env.webhook("call.hangup", {"call_control_id": ccid, "hangup_cause": "normal_clearing",
                                                      "hangup_source": "caller",
                                                      "client_state": answer["client_state"]})
        assert status == 200
        row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
        assert row["hangup_source"] == "user" and row["extra"]["telnyx_hangup_cause"] == "normal_clearing"


async def test_forged_stale_or_unsigned_webhooks_are_refused_and_the_stream_token_is_checked(telnyx_env):
    env = await telnyx_env()
    payload = {"call_control_id": env.rest.add_call(), "direction": "incoming", "from": CALLER, "to": NUMBER}
    assert (await env.webhook("call.initiated", payload, key=None))[0] == 403
    assert (await env.webhook("call.initiated", payload, key=Ed25519PrivateKey.generate()))[0] == 403
    assert (await env.webhook("call.initiated", payload, timestamp=int(time.time()) - 3600))[0] == 403
    assert (await env.webhook("call.initiated", payload, tamper=True))[0] == 403
    assert not env.gw.calls.active and env.rest.commands.empty()
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"].replace("token=", "token=x")) as client:
        await client.start(ccid)
        await asyncio.wait_for(client.closed.wait(), 3)
        assert client.close_code == 4006
    async with env.stream(answer["stream_url"]) as client:     # the right token still works, once
        await client.start(ccid)
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)


async def test_outbound_dial_with_stream_and_telnyx_amd(telnyx_env):
    env = await telnyx_env(settings={"amd": {"enabled": True, "provider": "telnyx"}})
    status, body = await api(env, "POST", "/api/v1/calls/dispatch", {
        "agent_id": env.agent["id"], "to_number": "+14155550199", "from_number_id": env.number["id"]})
    assert status == 200, body
    call_id = body["call_id"]
    _, _, dial = next(r for r in env.rest.requests if r[1] == "/v2/calls")
    assert dial["to"] == "+14155550199" and dial["from"] == NUMBER and dial["connection_id"] == "1684641123236054244"
    assert dial["answering_machine_detection"] == "detect_beep"
    assert dial["webhook_url"] == env.gw.settings.public_base + "/telnyx/webhook"
    ccid = next(iter(env.rest.calls))
    async with env.stream(dial["stream_url"]) as client:
        await client.start(ccid)
        await env.webhook("call.answered", {"call_control_id": ccid, "client_state": dial["client_state"]})
        status, _ = await env.webhook("call.machine.detection.ended", {
            "call_control_id": ccid, "client_state": dial["client_state"], "result": "human"})
        assert status == 200
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)
    row = await env.wait_row(call_id, lambda r: r.get("amd_detected"))
    assert row["amd_answered_by"] == "human" and row["answered_at"] is not None


async def test_dispatch_refused_by_telnyx_maps_like_every_carrier(telnyx_env):
    env = await telnyx_env()
    env.rest.faults.add("POST", "/v2/calls", 429, retry_after=7)
    status, body = await api(env, "POST", "/api/v1/calls/dispatch", {
        "agent_id": env.agent["id"], "to_number": "+14155550199", "from_number_id": env.number["id"]})
    assert status == 503 and "Telnyx rate limit" in body["error"], body


async def test_transfer_busy_target_then_backup_answers(telnyx_env):
    env, engine = await transferring_env(telnyx_env, TRANSFER)
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid)
        _, action, xfer = await asyncio.wait_for(env.rest.commands.get(), 5)
        assert action == "transfer" and xfer["to"] == TARGET_A and xfer["from"] == NUMBER
        assert decode_state(xfer["target_leg_client_state"]) == f"xfer:{call_id}:0"
        status, _ = await env.webhook("call.hangup", {"call_control_id": "v3:leg-b",
                                                      "client_state": xfer["target_leg_client_state"],
                                                      "hangup_cause": "user_busy"})
        assert status == 200
        _, action, xfer2 = await asyncio.wait_for(env.rest.commands.get(), 5)
        assert action == "transfer" and xfer2["to"] == TARGET_B
        await env.webhook("call.answered", {"call_control_id": "v3:leg-c",
                                            "client_state": xfer2["target_leg_client_state"]})
        row = await env.wait_row(call_id, lambda r: r.get("ended_at") is not None)
        assert row["transfer_outcome"] == "completed" and row["transfer_target"] == TARGET_B
        assert row["hangup_reason"] == "transferred"
        assert row["extra"]["transfer_attempts"][0] == {"number": TARGET_A, "status": "busy"}


async def test_import_checks_key_number_and_public_key(telnyx_env):
    env = await telnyx_env()
    other = "+15005550007"
    env.rest.add_number(other, connection_id="777")
    good = {"phone_number": other, "api_key": env.rest.api_key, "public_key": public_key_b64(env.key)}
    status, body = await api(env, "POST", "/api/v1/phone_number/import/telnyx", {**good, "public_key": "nope"})
    assert status == 422 and body["field"] == "public_key", body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/telnyx", {**good, "api_key": "wrong"})
    assert status == 422 and body["field"] == "api_key" and "Telnyx rejected" in body["error"], body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/telnyx",
                             {**good, "phone_number": "+15005550099"})
    assert status == 422 and "not on this Telnyx account" in body["error"], body
    status, body = await api(env, "POST", "/api/v1/phone_number/import/telnyx", good)
    assert status == 201, body
    assert body["phone_number"]["config"]["connection_id"] == "777"
    assert env.rest.api_key not in str(body)


async def test_every_transfer_target_fails_then_streaming_start_returns_the_caller_to_the_agent(telnyx_env):
    env, engine = await transferring_env(telnyx_env, TRANSFER)
    call_id, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid)
        _, _, xfer = await asyncio.wait_for(env.rest.commands.get(), 5)
        await client.stop(ccid)        # Telnyx moved the caller: our stream ends
        await asyncio.wait_for(client.closed.wait(), 3)
    for state in (xfer["target_leg_client_state"], None):
        if state is None:
            _, _, nxt = await asyncio.wait_for(env.rest.commands.get(), 5)
            state = nxt["target_leg_client_state"]
        await env.webhook("call.hangup", {"call_control_id": "v3:leg", "client_state": state,
                                          "hangup_cause": "timeout"})
    _, action, restream = await asyncio.wait_for(env.rest.commands.get(), 5)
    assert action == "streaming_start" and restream["stream_url"] != answer["stream_url"]
    row = await env.wait_row(call_id, lambda r: r.get("transfer_outcome") is not None)
    assert row["transfer_outcome"] == "no-answer" and row["ended_at"] is None
    async with env.stream(restream["stream_url"]) as client:    # the same call, back with the agent
        await client.start(ccid)
        await client.play(b"\xff" * 1600)
        await client.wait_for(lambda: len(client.got.media) >= 8)


class ToneEngine(ScriptEngine):
    """Keeps the caller's audio (at 16 kHz) and plays a 1 kHz tone back."""

    def __init__(self) -> None:
        super().__init__(self._speak)
        self.heard = bytearray()

    async def _speak(self, session) -> None:
        await session.play(tone_pcm(1000, 16000, 1.0))

    async def handle_call(self, session) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                self.heard += item.pcm
            elif self.script is not None and not self.events:
                self.events.append((time.monotonic(), item))
                asyncio.create_task(self.script(session))
            if isinstance(item, Hangup):
                break


def tone_pcm(freq: float, rate: int, seconds: float) -> bytes:
    n = int(rate * seconds)
    return (np.sin(2 * np.pi * freq * np.arange(n) / rate) * 8000).astype("<i2").tobytes()


def peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * rate / len(x))


#: the wire formats as Telnyx sends them, written independently of the carrier's table: A-law, and L16 in network
#: byte order (big-endian, RFC 3551 §4.5.11)
WIRE = {"PCMA": (pcm16_to_alaw, alaw_to_pcm16),
        "L16": (lambda pcm: np.frombuffer(pcm, "<i2").astype(">i2").tobytes(),
                lambda data: np.frombuffer(data, ">i2").astype("<i2").tobytes())}


@pytest.mark.parametrize("fmt", ["PCMA/8000", "L16/8000", "L16/16000"])
async def test_stream_formats_telnyx_documents_besides_pcmu(telnyx_env, fmt):
    """PCMA and L16 (network byte order, RFC 3551) both ways: the engine hears the caller's 440 Hz tone and the
    caller hears the engine's 1 kHz tone, so decode and encode are each right (not just mirror images)."""
    codec, rate = fmt.split("/")[0], int(fmt.split("/")[1])
    encode, decode = WIRE[codec]
    engine = ToneEngine()
    env = await telnyx_env(engine="tones")
    env.gw.engines.register("tones", engine)
    await env.gw.store.update_number(env.number["id"], config={**env.number["config"], "audio_format": fmt})
    call_id, ccid, answer = await env.inbound()
    assert (answer["stream_codec"], answer["stream_bidirectional_codec"]) == (codec, codec)
    assert answer["stream_bidirectional_sampling_rate"] == rate
    frame = rate // 50 * (2 if codec == "L16" else 1)
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid, media_format={"encoding": codec, "sample_rate": rate, "channels": 1})
        await client.play(encode(tone_pcm(440, rate, 1.0)), chunk=frame)
        await client.wait_for(lambda: len(client.got.media) >= 40)
        assert all(len(p) == frame for _, p in client.got.media)
        heard_back = decode(b"".join(p for _, p in client.got.media[5:40]))
        assert abs(peak_hz(heard_back, rate) - 1000) < 30
        assert abs(peak_hz(bytes(engine.heard[16000:32000]), 16000) - 440) < 30
        await api(env, "POST", f"/api/v1/calls/{call_id}/hangup")


async def test_a_stream_format_we_cannot_decode_is_refused(telnyx_env):
    env = await telnyx_env()
    _, ccid, answer = await env.inbound()
    async with env.stream(answer["stream_url"]) as client:
        await client.start(ccid, media_format={"encoding": "OPUS", "sample_rate": 16000, "channels": 1})
        await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == CloseCode.BAD_MEDIA_FORMAT
