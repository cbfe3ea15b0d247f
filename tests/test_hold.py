"""Hold, music on hold and mute: through the API (and the control bus), the engine protocol, SIP re-INVITEs both
ways against SIPp, and music on hold over a Twilio Media Stream."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import numpy as np

from conftest import API_KEY
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AudioFrame, CallStarted, Hangup, HoldState, MuteState
from gateway.hold import default_music
from sipp import free_port, sip_gateway, sip_number, sipp_uac, wait_for
from test_engine_ws import Engine, recv_json, start_call
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16

AUTH = {"Authorization": f"Bearer {API_KEY}"}
T = 10.0


def rms(pcm: bytes) -> float:
    a = np.frombuffer(pcm, "<i2").astype(float)
    return float(np.sqrt(np.mean(a ** 2))) if len(a) else 0.0


def tone(seconds: float, rate: int = 8000, freq: float = 440.0) -> bytes:
    n = int(seconds * rate)
    return (np.sin(2 * np.pi * freq * np.arange(n) / rate) * 8000).astype("<i2").tobytes()


async def post(gw, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=AUTH) as s, s.post(gw.url(f"/api/v1{path}")) as r:
        return r.status, await r.json()


class Listener(VoiceEngine):
    """Echoes the caller and keeps every event and the caller audio it received (with the time)."""

    sample_rate = 8000

    def __init__(self) -> None:
        self.events: list = []
        self.audio: list[tuple[float, bytes]] = []

    async def handle_call(self, session: EngineSession) -> None:
        async for item in session:
            if isinstance(item, AudioFrame):
                self.audio.append((time.monotonic(), item.pcm))
                await session.play(item.pcm)
            elif not isinstance(item, (CallStarted, Hangup)):
                self.events.append(item)

    def states(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


async def next_audio(ws) -> bytes:
    """The next binary (caller audio) frame the gateway sends the engine."""
    while not isinstance(data := await asyncio.wait_for(ws.recv(), T), bytes):
        pass
    return data


# -- engine protocol ----------------------------------------------------------------------------------------------
async def test_engine_hold_comes_after_its_audio_then_music_and_the_engine_hears_nothing(make_gateway):
    seen: dict = {}

    async def script(ws, engine):
        await recv_json(ws, "start")
        await ws.send(b"\x10\x00" * 160 * 5)              # "please hold": 100 ms
        await ws.send(json.dumps({"type": "hold"}))
        seen["hold"] = await recv_json(ws, "hold")
        seen["ready"].set()
        await asyncio.wait_for(seen["unheld"].wait(), T)
        await ws.send(json.dumps({"type": "unhold"}))
        seen["resumed"] = await recv_json(ws, "hold")
        seen["first_audio"] = await next_audio(ws)        # the first caller audio after the hold
        await ws.send(json.dumps({"type": "mute"}))
        seen["muted"] = await recv_json(ws, "mute")
        seen["mute_ready"].set()
        await asyncio.wait_for(seen["unmute"].wait(), T)
        await ws.send(json.dumps({"type": "unmute"}))
        seen["unmuted"] = await recv_json(ws, "mute")
        seen["after_mute"] = await next_audio(ws)
        await ws.send(json.dumps({"type": "hangup"}))
        await recv_json(ws, "hangup")

    seen.update(ready=asyncio.Event(), unheld=asyncio.Event(), mute_ready=asyncio.Event(), unmute=asyncio.Event())
    async with Engine(script) as engine:
        gw, call, leg = await start_call(make_gateway, engine.url("?sample_rate=8000"))
        frames = [await asyncio.wait_for(call.next_outbound(), T) for _ in range(5)]
        assert all(f.pcm == b"\x10\x00" * 160 for f in frames)       # the engine's audio before its hold
        music = default_music(8000)
        held = [await asyncio.wait_for(call.next_outbound(), T) for _ in range(10)]
        assert b"".join(f.pcm for f in held) == music[:3200]         # then music on hold, from its start
        await asyncio.wait_for(seen["ready"].wait(), T)
        assert seen["hold"] == {"type": "hold", "held": True, "source": "engine"} and call.held
        call.feed_audio(b"\x01\x00" * 160 * 10)                      # the caller while held: not for the engine
        seen["unheld"].set()
        await wait_for(lambda: not call.held, what="unhold")
        call.feed_audio(b"\x02\x00" * 160)
        await wait_for(lambda: "first_audio" in seen, what="audio after the hold")
        assert seen["resumed"] == {"type": "hold", "held": False, "source": "engine"}
        assert seen["first_audio"] == b"\x02\x00" * 160
        await asyncio.wait_for(seen["mute_ready"].wait(), T)
        assert seen["muted"] == {"type": "mute", "muted": True, "source": "engine"} and call.muted
        call.feed_audio(b"\x03\x00" * 160 * 5)
        seen["unmute"].set()
        await wait_for(lambda: not call.muted, what="unmute")
        call.feed_audio(b"\x04\x00" * 160)
        await wait_for(lambda: "after_mute" in seen, what="audio after unmute")
        assert seen["after_mute"] == b"\x04\x00" * 160
        events = [e["kind"] for e in await gw.store.list_call_events(call.log_id)]
        assert [k for k in events if k in ("call:hold", "call:resumed", "call:muted", "call:unmuted")] == [
            "call:hold", "call:resumed", "call:muted", "call:unmuted"]


# -- API over a Twilio Media Stream: music on hold from the gateway -------------------------------------------------
async def test_api_hold_plays_music_over_twilio_and_the_engine_hears_nothing(twilio_env):
    engine = Listener()
    env = await twilio_env(engine="listener")
    env.gw.engines.register("listener", engine)
    call_id, call_sid, _ = await env.inbound()
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        await client.play(pcm16_to_ulaw(tone(0.3)))                     # 15 frames: all of them heard and echoed,
        await wait_for(lambda: len(engine.audio) >= 15, what="the caller's audio")   # so none is on its way still
        await client.wait_for(lambda: len(client.got.media) >= 15, timeout=T)
        row = await env.row(call_id)

        # the music starts when the gateway takes the hold, before its answer is back: counted from before asking
        start, before = time.monotonic(), len(client.got.media)
        status, body = await post(env.gw, f"/calls/{row['id']}/hold")
        assert status == 200 and body["status"] == "held" and body["held"] is True
        heard = len(engine.audio)
        await client.play(pcm16_to_ulaw(tone(0.5, freq=900)))          # the caller talks while held
        await client.wait_for(lambda: len(client.got.media) >= before + 40, timeout=T)
        elapsed = time.monotonic() - start
        music = [ulaw_to_pcm16(p) for _, p in client.got.media[before + 5:]]
        assert min(rms(m) for m in music[:30]) > 100                   # the gateway's music, not silence or echo
        assert len(client.got.media) - before <= elapsed / 0.02 + 10     # paced at real time, not a burst
        assert len(engine.audio) == heard                               # the engine heard nothing
        assert engine.states(HoldState) == [HoldState(True, "api")]

        status, body = await post(env.gw, f"/calls/{call_id}/unhold")
        assert status == 200 and body["status"] == "resumed" and body["held"] is False
        await client.play(pcm16_to_ulaw(tone(0.3)))
        # every frame of it, so that none is still on its way to the engine when the mute below is taken
        await wait_for(lambda: len(engine.audio) >= heard + 15, what="caller audio after unhold")
        assert engine.states(HoldState) == [HoldState(True, "api"), HoldState(False, "api")]

        status, body = await post(env.gw, f"/calls/{row['id']}/mute")
        assert status == 200 and body["muted"] is True
        heard = len(engine.audio)
        await client.play(pcm16_to_ulaw(tone(0.3)))
        status, body = await post(env.gw, f"/calls/{row['id']}/unmute")
        assert status == 200 and body["muted"] is False
        assert len(engine.audio) == heard
        assert engine.states(MuteState) == [MuteState(True, "api"), MuteState(False, "api")]
        status, body = await post(env.gw, f"/calls/{row['id']}/mute")
        async with aiohttp.ClientSession(headers=AUTH) as s, s.get(env.gw.url("/api/v1/calls/live")) as r:
            live = (await r.json())["calls"][0]
        assert live["muted"] is True and live["held"] is False
        await client.stop(call_sid=call_sid, account_sid=env.account.sid)
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    status, body = await post(env.gw, f"/calls/{row['id']}/hold")
    assert status == 404 and body["field"] == "id"
    status, body = await post(env.gw, "/calls/999999/mute")
    assert status == 404


# -- SIP: the gateway holds the caller (re-INVITE a=sendonly), music goes out as RTP ---------------------------------
class RtpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets.append((time.monotonic(), data[12:]))      # our gateway sends 12-byte headers


async def test_sip_hold_by_api_reinvites_sendonly_and_sends_music(make_gateway):
    engine = Listener()
    gw = await sip_gateway(make_gateway)
    gw.engines.register("listener", engine)
    await sip_number(gw, engine="listener")
    rtp_port = free_port(even=True)
    transport, sink = await asyncio.get_running_loop().create_datagram_endpoint(
        RtpSink, local_addr=("127.0.0.1", rtp_port), family=socket.AF_INET)
    try:
        sipp = asyncio.create_task(sipp_uac("uac_held_by_gateway.xml", gw.carriers["sip"].port,
                                            service="15550001111", timeout_s=20,
                                            extra=["-key", "rtp_port", str(rtp_port)]))
        await wait_for(lambda: any(c.bus is not None for c in gw.calls.active.values()) or sipp.done(),
                    what="the SIP call")
        call = next(iter(gw.calls.active.values()))
        await wait_for(lambda: len(sink.packets) >= 10, what="RTP before the hold")
        assert max(rms(ulaw_to_pcm16(p)) for _, p in sink.packets) < 50    # the echo engine had nothing to say
        status, body = await post(gw, f"/calls/{call.log_id}/hold")
        assert status == 200 and body["held"] is True, body
        assert call.leg.rtp.direction == "sendonly"
        mark = len(sink.packets)
        await wait_for(lambda: len(sink.packets) >= mark + 30, what="music on hold over RTP")
        assert min(rms(ulaw_to_pcm16(p)) for _, p in sink.packets[mark + 2: mark + 30]) > 100
        status, body = await post(gw, f"/calls/{call.log_id}/unhold")
        assert status == 200 and body["held"] is False, body
        assert call.leg.rtp.direction == "sendrecv"
        res = await asyncio.wait_for(sipp, 40)
        res.assert_calls(successful=1)       # SIPp saw a=sendonly, then a=sendrecv, in the gateway's re-INVITEs
    finally:
        transport.close()
    assert engine.states(HoldState) == [HoldState(True, "api"), HoldState(False, "api")]
    rows = await gw.store.list_calls()
    events = await gw.store.list_call_events(rows[0][0]["id"])
    holds = [(e["kind"], e["data"]) for e in events if e["kind"] in ("call:hold", "call:resumed")]
    assert holds == [("call:hold", {"source": "api"}), ("call:resumed", {"source": "api"})]


# -- SIP: the far end holds us (re-INVITE a=sendonly → we answer recvonly) -------------------------------------------
async def test_sip_far_end_hold_tells_the_engine_and_resumes(make_gateway):
    engine = Listener()
    gw = await sip_gateway(make_gateway)
    gw.engines.register("listener", engine)
    await sip_number(gw, engine="listener")
    res = await sipp_uac("uac_hold_timer.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=15)
    res.assert_calls(successful=1)           # SIPp checked our a=recvonly answer to its hold, a=sendrecv to resume
    await wait_for(lambda: not gw.calls.active, what="the call to end")
    assert engine.states(HoldState) == [HoldState(True, "remote"), HoldState(False, "remote")]


async def test_cli_hold_unhold_mute_unmute(make_gateway, monkeypatch, capsys):
    from gateway.cli import main
    gw, call, _ = await start_call(make_gateway, "echo")
    monkeypatch.setenv("GATEWAY_URL", gw.url())
    monkeypatch.setenv("GATEWAY_API_KEY", API_KEY)

    async def cli(*argv: str) -> dict:
        code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 30)
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    assert (await cli("calls", "hold", str(call.log_id)))["held"] is True and call.held
    assert (await cli("calls", "mute", call.id))["muted"] is True and call.muted
    assert (await cli("calls", "unhold", call.id))["held"] is False and not call.held
    assert (await cli("calls", "unmute", str(call.log_id)))["muted"] is False and not call.muted
    code = await asyncio.wait_for(asyncio.to_thread(main, ["calls", "hold", "424242"]), 30)
    assert code == 1 and "not found" in capsys.readouterr().err


# -- music on hold over a Vonage websocket (L16 16 kHz: the music arrives bit-exact) --------------------------------
async def test_music_on_hold_over_vonage_is_the_music_at_16k(make_gateway):
    from carriers.vonage import VonageCarrier
    from exotel_helpers import CallWatch
    from vonage_helpers import VONAGE_NUMBER, FakeVonageSocket, add_vonage_number, signed_headers

    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw, rate=16000)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.get(gw.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                            "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
                                                            "conversation_uuid": "CON-1"}) as r:
            ncco = await r.json()
        call = await watch.next_call()
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        await wait_for(lambda: call.bus is not None, what="the stream to attach")
        status, body = await post(gw, f"/calls/{call.log_id}/hold")
        assert status == 200 and body["held"] is True
        await v.wait_for(lambda rx: default_music(16000)[:640 * 25] in rx.audio, timeout=T)
        status, _ = await post(gw, f"/calls/{call.log_id}/unhold")
        assert status == 200
        await v.close()
        await watch.wait_ended(call)
