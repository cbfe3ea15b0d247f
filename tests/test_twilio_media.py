"""/twilio/media over a real websocket, with a client that plays Twilio's side of Media Streams."""
from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from fakes.twilio_env import recording, twilio_env  # noqa: F401  (fixture)
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AudioFrame, CallStarted, Dtmf, Hangup, Mark
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> bytes:
    n = int(seconds * rate)
    return (np.sin(2 * np.pi * freq * np.arange(n) / rate) * 8000).astype("<i2").tobytes()


class ScriptEngine(VoiceEngine):
    """Runs `script(session)` once the call starts and records every inbound event with its arrival time."""

    sample_rate = 16000

    def __init__(self, script=None, echo: bool = False) -> None:
        self.script = script
        self.echo = echo
        self.events: list[tuple[float, object]] = []
        self.got = asyncio.Event()

    async def handle_call(self, session: EngineSession) -> None:
        task = None
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                if self.echo:
                    await session.play(item.pcm)
            else:
                self.events.append((time.monotonic(), item))
                self.got.set()
            if isinstance(item, CallStarted) and self.script is not None:
                task = asyncio.create_task(self.script(session))
            if isinstance(item, Hangup):
                break
        if task is not None:
            task.cancel()

    def of(self, kind: type) -> list:
        return [e for _, e in self.events if isinstance(e, kind)]

    async def wait(self, pred, timeout: float = 5.0) -> None:
        async def loop():
            while not pred():
                self.got.clear()
                await self.got.wait()
        await asyncio.wait_for(loop(), timeout)


async def transferring_env(make_env, settings: dict):
    """A carrier's test environment (`make_env(engine=…, settings=…)`: twilio_env, telnyx_env…) whose agent
    engine asks for a transfer as soon as the call starts and echoes the caller otherwise; (env, engine)."""
    async def script(session: EngineSession) -> None:
        await session.transfer()

    engine = ScriptEngine(script, echo=True)
    env = await make_env(engine="xfer", settings=settings)
    env.gw.engines.register("xfer", engine)
    return env, engine


async def open_call(env, **client_kw):
    call_id, call_sid, _ = await env.inbound()
    client = env.stream(**client_kw)
    await client.__aenter__()
    await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
    return call_id, call_sid, client


async def test_echo_comes_back_as_160_byte_ulaw_frames_with_stream_sid(twilio_env):
    env = await twilio_env()
    call_id, call_sid, client = await open_call(env)
    try:
        audio = recording()
        n = len(audio) // 160
        await client.play(audio)
        await client.wait_for(lambda: len(client.got.media) >= n - 2, timeout=5)
        assert all(len(p) == 160 for _, p in client.got.media)
        assert client.got.stream_sids == {client.stream_sid}
        # the echo is the recording: same length (± a frame of resampler state) and highly correlated
        sent = np.frombuffer(ulaw_to_pcm16(audio[: n * 160]), "<i2").astype(float)
        back = np.frombuffer(ulaw_to_pcm16(b"".join(p for _, p in client.got.media)), "<i2").astype(float)
        m = min(len(sent), len(back))
        best = max(np.corrcoef(sent[: m - lag], back[lag:m])[0, 1] for lag in range(0, 40))
        assert best > 0.9, best
        call = env.gw.calls.get(call_id)
        assert call.bus.counters.frames_in >= n - 1 and call.bus.counters.dropped_in == 0
    finally:
        await client.__aexit__()


async def test_marks_are_reported_after_twilio_played_the_audio(twilio_env):
    async def script(session):
        await session.play(tone(1.0), end_of_utterance=True)
        await session.mark("m1")

    engine = ScriptEngine(script)
    env = await twilio_env(engine="marks")
    env.gw.engines.register("marks", engine)
    call_id, _, client = await open_call(env)
    try:
        await engine.wait(lambda: engine.of(Mark), timeout=5)
        got_at = next(t for t, e in engine.events if isinstance(e, Mark))
        # the gateway sent 50 frames (1 s) and then the mark, in that order
        mark_index = next(i for i, e in enumerate(client.got.events) if e["event"] == "mark")
        assert sum(1 for e in client.got.events[:mark_index] if e["event"] == "media") == 50
        assert client.echoed == ["m1"] and engine.of(Mark) == [Mark("m1")]
        first_media = client.got.media[0][0]
        assert got_at - first_media >= 0.95   # not reported before the second of audio had played
    finally:
        await client.__aexit__()


async def test_clear_drops_queued_audio_and_forgets_pending_marks(twilio_env):
    barge = asyncio.Event()

    async def script(session):
        await session.play(tone(3.0), end_of_utterance=True)
        session.clear()                         # nothing of these 3 s has left the gateway yet
        await session.play(tone(0.2, freq=880), end_of_utterance=True)
        await session.mark("short")
        await session.play(tone(2.0), end_of_utterance=True)
        await session.mark("long")              # Twilio holds 2 s when the caller barges in
        await barge.wait()
        session.clear()
        await session.play(tone(0.1), end_of_utterance=True)
        await session.mark("after")

    engine = ScriptEngine(script)
    env = await twilio_env(engine="clears")
    env.gw.engines.register("clears", engine)
    _, _, client = await open_call(env)
    try:
        await engine.wait(lambda: Mark("short") in engine.of(Mark), timeout=5)
        events = [e["event"] for e in client.got.events]
        assert events[0] == "clear"
        assert events[1:11] == ["media"] * 10 and events[11] == "mark"   # only the 0.2 s after the first clear
        barge.set()
        await engine.wait(lambda: Mark("after") in engine.of(Mark), timeout=5)
        assert client.got.clears == 2
        assert all(e["streamSid"] == client.stream_sid for e in client.got.events)
        # Twilio echoed "long" when it dropped its audio, but that audio never played: not reported
        assert "long" in client.echoed
        assert engine.of(Mark) == [Mark("short"), Mark("after")]
    finally:
        await client.__aexit__()


async def test_dtmf_reaches_the_engine_and_outbound_dtmf_is_played_in_band(twilio_env):
    async def script(session):
        await session.send_dtmf("1")

    engine = ScriptEngine(script)
    env = await twilio_env(engine="dtmf")
    env.gw.engines.register("dtmf", engine)
    _, _, client = await open_call(env)
    try:
        for d in "5#":
            await client.dtmf(d)
        await engine.wait(lambda: len(engine.of(Dtmf)) == 2)
        assert [d.digit for d in engine.of(Dtmf)] == ["5", "#"]
        await client.wait_for(lambda: len(client.got.media) >= 8)
        pcm = np.frombuffer(ulaw_to_pcm16(b"".join(p for _, p in client.got.media[:5])), "<i2").astype(float)
        spectrum = np.abs(np.fft.rfft(pcm))
        freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
        top = sorted(freqs[np.argsort(spectrum)[-2:]])
        assert math.isclose(top[0], 697, abs_tol=15) and math.isclose(top[1], 1209, abs_tol=15)  # digit 1
    finally:
        await client.__aexit__()


async def test_stop_ends_the_call_with_source_user(twilio_env):
    env = await twilio_env()
    call_id, call_sid, client = await open_call(env)
    try:
        await client.media(pcm16_to_ulaw(b"\x00" * 320))
        await client.stop(call_sid, env.account.sid)
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["hangup_source"] == "user" and row["call_status"] == "completed"
        await asyncio.wait_for(client.closed.wait(), 3)
        assert client.close_code == 1000
    finally:
        await client.__aexit__()


async def test_engine_hangup_waits_for_playout_then_completes_call_over_rest(twilio_env):
    async def script(session):
        await session.play(tone(0.6), end_of_utterance=True)
        await session.hangup("goodbye")

    engine = ScriptEngine(script)
    env = await twilio_env(engine="bye")
    env.gw.engines.register("bye", engine)
    call_id, call_sid, client = await open_call(env)
    try:
        sid, rec = await asyncio.wait_for(env.rest.updates.get(), 5)
        assert sid == call_sid and rec.one("Status") == "completed"
        # the REST hangup came after Twilio had played the 0.6 s goodbye (our drain mark was echoed first)
        assert any(name.startswith("gw-drain-") for name in client.echoed)
        assert time.monotonic() - client.got.media[0][0] >= 0.55
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["hangup_source"] == "agent" and row["hangup_reason"] == "goodbye"
    finally:
        await client.__aexit__()


async def test_engine_hangup_after_caller_left_treats_404_as_success(twilio_env):
    async def script(session):
        await session.hangup("done")

    env = await twilio_env(engine="quick")
    env.gw.engines.register("quick", ScriptEngine(script))
    call_id, call_sid, _, = await env.inbound(call_sid="CA" + "9" * 32)   # unknown to the fake REST → 404
    client = env.stream()
    async with client:
        await client.start(call_id, call_sid=call_sid)
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["hangup_source"] == "agent" and row["call_status"] == "completed"
        assert env.rest.of("POST", f"/Calls/{call_sid}.json")
        await asyncio.wait_for(client.closed.wait(), 3)


# -- protocol errors: each closes with its code, is logged, and the gateway carries on ------------------------

async def _closed_with(client) -> tuple[int, str]:
    await asyncio.wait_for(client.closed.wait(), 5)
    return client.close_code, client.close_reason


async def test_never_sending_start_is_closed_4001(twilio_env, caplog):
    env = await twilio_env()
    # short here only: every other test keeps the carrier's 5 s, as a busy box can stall a client that long
    # between its websocket handshake and its start message (the environment once set 0.5 s for all of them)
    env.carrier.start_timeout = 0.5
    async with env.stream() as client:
        await client.connected()
        code, reason = await _closed_with(client)
    assert code == 4001 and "start" in reason
    assert any("no start message" in r.getMessage() for r in caplog.records)


async def test_garbage_json_is_closed_4002(twilio_env):
    env = await twilio_env()
    async with env.stream() as client:
        await client.ws.send("{not json")
        assert (await _closed_with(client))[0] == 4002
    async with env.stream() as client:
        await client.ws.send("[1, 2, 3]")
        assert (await _closed_with(client))[0] == 4002


async def test_binary_frame_is_closed_4004(twilio_env):
    env = await twilio_env()
    async with env.stream() as client:
        await client.ws.send(b"\x00\x01\x02")
        assert (await _closed_with(client))[0] == 4004


async def test_unknown_event_mid_call_closes_4003_and_ends_the_call(twilio_env):
    env = await twilio_env()
    call_id, _, client = await open_call(env)
    try:
        await client.send({"event": "dance", "streamSid": client.stream_sid})
        assert (await _closed_with(client))[0] == 4003
        row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
        assert row["hangup_source"] == "carrier"
    finally:
        await client.__aexit__()
    # the gateway still takes calls
    call_id, _, client = await open_call(env)
    try:
        await client.play(recording()[:1600])
        await client.wait_for(lambda: len(client.got.media) >= 8)
    finally:
        await client.__aexit__()


@pytest.mark.parametrize("payload", ["@@not-b64@@", "AAA", "\u00e9\u00e9\u00e9\u00e9", 1234])
async def test_bad_media_payload_is_closed_4002(twilio_env, payload):
    """Not base64, bad padding, non-ASCII text, not a string: each a protocol error, never a traceback."""
    env = await twilio_env()
    _, _, client = await open_call(env)
    try:
        await client.send({"event": "media", "streamSid": client.stream_sid, "media": {"payload": payload}})
        assert (await _closed_with(client))[0] == 4002
    finally:
        await client.__aexit__()


async def test_start_for_unknown_or_taken_call_is_closed_4005(twilio_env):
    env = await twilio_env()
    async with env.stream() as client:
        await client.start("0" * 32)
        assert (await _closed_with(client))[0] == 4005
    call_id, call_sid, first = await open_call(env)
    try:
        async with env.stream() as second:
            await second.start(call_id, call_sid=call_sid)
            assert (await _closed_with(second))[0] == 4005
    finally:
        await first.__aexit__()


async def test_wrong_upgrade_signature_is_closed_4006(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    async with env.stream(headers={"X-Twilio-Signature": "bm90LXRoZS1zaWduYXR1cmU="}) as client:
        await client.start(call_id, call_sid=call_sid)
        assert (await _closed_with(client))[0] == 4006
    from gateway.simulate.twilio_stream import sign
    good = sign(env.account.token, env.gw.settings.public_ws_base + "/twilio/media")
    async with env.stream(headers={"X-Twilio-Signature": good}) as client:
        await client.start(call_id, call_sid=call_sid)
        await client.play(recording()[:1600])
        await client.wait_for(lambda: len(client.got.media) >= 8)


async def test_unsupported_media_format_is_closed_4007(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid,
                           media_format={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        assert (await _closed_with(client))[0] == 4007
