"""`gateway simulate` end to end: scripted callers over SIP (our UA + RTP) and Twilio Media Streams (signed voice
webhook + websocket) against a gateway on loopback, with the echo and greeting engines and an engine that answers
a known time after the caller stops; the caller's figures and the gateway's own must agree."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys

import pytest

from carriers.exotel import ExotelCarrier
from carriers.sip import SipCarrier
from carriers.vonage import VonageCarrier
from exotel_helpers import ACCOUNT_SID, EXOPHONE, add_exophone, tone
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AudioFrame, Hangup, SpeechActivity
from gateway.simulate.lines import ExotelLine, SipLine, TwilioLine, VonageLine
from gateway.simulate.runner import AGREEMENT_MS, api_timing, run_calls
from gateway.simulate.script import ScriptError, parse_script
from sipp import rtp_range, sip_number
from voicecodecs._audioop import audioop
from vonage_helpers import VONAGE_NUMBER, add_vonage_number

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng not installed")]

API_KEY = "test-api-key"
DELAY_MS = 300
TWO_TURNS = parse_script({"steps": [
    {"say": "Hello there how are you today"}, {"wait_reply": {"timeout_ms": 5000, "quiet_ms": 700}},
    {"say": "I would like a table for two"}, {"wait_reply": {"timeout_ms": 5000, "quiet_ms": 700}}, "hangup"]})
AFTER_GREETING = parse_script({"steps": [
    {"wait_reply": {"timeout_ms": 5000, "quiet_ms": 700}}, {"say": "Hello there how are you today"},
    {"wait_reply": {"timeout_ms": 5000, "quiet_ms": 700}}, "hangup"]})


class DelayedReply(VoiceEngine):
    """Answers each caller utterance with 0.6 s of tone DELAY_MS (by the clock) after the caller's last loud frame
    reached it: a timer restarted by every loud frame."""

    sample_rate = 8000

    async def handle_call(self, session: EngineSession) -> None:
        loop = asyncio.get_running_loop()
        loud = 0
        timer: asyncio.TimerHandle | None = None
        reply = asyncio.Queue()
        player = asyncio.create_task(self._player(session, reply))
        try:
            while (item := await session.receive()) is not None:
                if isinstance(item, Hangup):
                    return
                if isinstance(item, AudioFrame) and audioop.rms(item.pcm, 2) >= 150:
                    loud += 1
                    if timer is not None:
                        timer.cancel()
                    if loud >= 10:
                        timer = loop.call_later(DELAY_MS / 1000, reply.put_nowait, None)
                elif timer is not None and timer.when() <= loop.time():
                    loud, timer = 0, None
        finally:
            if timer is not None:
                timer.cancel()
            player.cancel()

    @staticmethod
    async def _player(session: EngineSession, reply: asyncio.Queue) -> None:
        while True:
            await reply.get()
            await session.play(tone(0.6, 8000), end_of_utterance=True)


class Interruptible(VoiceEngine):
    """Talks for 8 s from the answer and stops (clear) as soon as the gateway's VAD says the caller speaks."""

    sample_rate = 8000

    async def handle_call(self, session: EngineSession) -> None:
        await session.play(tone(8.0, 8000), end_of_utterance=True)
        while (item := await session.receive()) is not None:
            if isinstance(item, Hangup):
                return
            if isinstance(item, SpeechActivity) and item.speaking:
                session.clear()


BARGE_IN = parse_script({"steps": [{"say": {"text": "Hello there how are you today", "barge_in_after_ms": 500}},
                                   {"silence": 500}, "hangup"]})


def register_engines(gw) -> None:
    gw.engines.register("delayed", DelayedReply())
    gw.engines.register("interruptible", Interruptible())


async def sip_setup(make_gateway, engine: str):
    gw = await make_gateway(carriers={"sip": SipCarrier}, **rtp_range())
    register_engines(gw)
    num = await sip_number(gw, engine=engine)
    ports = rtp_range()
    line = SipLine("127.0.0.1", gw.carriers["sip"].port, rtp_ports=(ports["rtp_port_min"], ports["rtp_port_max"]))
    await line.start()
    return gw, line, num["phone_number"]


async def twilio_setup(twilio_env, engine: str):
    env = await twilio_env(engine=engine)
    register_engines(env.gw)
    line = TwilioLine(f"http://127.0.0.1:{env.gw.http_port}", env.account.sid, env.account.token)
    return env.gw, line, "+15005550006"


async def ws_setup(make_gateway, via: str, engine: str):
    """Exotel or Vonage: the carrier, an agent on `engine`, its number."""
    carrier = {"exotel": ExotelCarrier, "vonage": VonageCarrier}[via]
    gw = await make_gateway(carriers={via: carrier})
    register_engines(gw)
    agent = await gw.store.create_agent({"name": f"{via} agent", "engine": engine, "settings": {}})
    url = gw.url("").rstrip("/")
    # the synthetic lines carry no carrier credentials: their numbers use the explicit opt-outs (docs/security.md)
    if via == "exotel":
        await add_exophone(gw, agent_id=agent["id"], allow_unauthenticated=True)
        return gw, ExotelLine(url, ACCOUNT_SID), EXOPHONE
    await add_vonage_number(gw, agent_id=agent["id"], signature_secret=None, allow_unsigned=True)
    return gw, VonageLine(url, 16000), VONAGE_NUMBER


async def simulate(make_gateway, twilio_env, via: str, engine: str, script, calls: int = 1):
    if via == "sip":
        gw, line, number = await sip_setup(make_gateway, engine)
    elif via == "twilio":
        gw, line, number = await twilio_setup(twilio_env, engine)
    else:
        gw, line, number = await ws_setup(make_gateway, via, engine)
    try:
        return await run_calls(line, script, number, calls=calls, concurrency=calls,
                               gateway_timing=api_timing(gw.url(""), API_KEY))
    finally:
        await line.stop()


@pytest.mark.parametrize("via", ["sip", "twilio"])
async def test_echo_two_turns(make_gateway, twilio_env, via):
    (rep,) = await simulate(make_gateway, twilio_env, via, "echo", TWO_TURNS)
    assert rep.error is None and rep.hangup == "caller", rep
    assert rep.timing["summary"]["turns"] == 2, rep.timing
    assert rep.gateway["summary"]["turns"] == 2, rep.gateway
    # an echo talks over the caller: no response latency on either side
    assert rep.timing["summary"]["latency_p50_ms"] is None and rep.gateway["summary"]["latency_p50_ms"] is None


@pytest.mark.parametrize("via", ["sip", "twilio"])
async def test_greeting_then_one_turn(make_gateway, twilio_env, via):
    (rep,) = await simulate(make_gateway, twilio_env, via, "greeting", AFTER_GREETING)
    assert rep.ok and rep.hangup == "caller", (rep.failures, rep.timing)
    assert rep.timing["summary"]["turns"] == 1 and rep.gateway["summary"]["turns"] == 1
    assert rep.timing["summary"]["first_agent_audio_ms"] < 500
    assert rep.gateway["summary"]["first_agent_audio_ms"] < 500


@pytest.mark.parametrize("via", ["sip", "twilio", "exotel", "vonage"])
async def test_known_delay_is_reported_by_both_sides(make_gateway, twilio_env, via):
    reps = await simulate(make_gateway, twilio_env, via, "delayed", TWO_TURNS, calls=2)
    diffs = []
    for rep in reps:
        assert rep.ok, rep
        caller, gateway = rep.timing["turns"], rep.gateway["turns"]
        assert len(caller) == len(gateway) == 2, (caller, gateway)
        for c, g in zip(caller, gateway, strict=True):
            # the engine answers DELAY_MS after its own last loud frame; the VAD's last voiced frame can be a
            # frame or two earlier, and a busy box adds scheduling delay
            assert DELAY_MS - 60 <= g["latency_ms"] <= DELAY_MS + 250, gateway
            diffs.append(abs(c["latency_ms"] - g["latency_ms"]))
        assert rep.disagreement_ms == max(diffs[-2:])
    # caller and gateway agree within AGREEMENT_MS on a quiet machine (two processes: the CLI); here both run in
    # this one event loop on a busy test box, where a stall moves one side's timestamps and not the other's, so
    # the lower median is held to twice the bar, and every turn only to being the same turn (a CPU-starved caller
    # hears late: measured up to ~110 ms with two spinning processes on this 2-core box)
    assert sorted(diffs)[len(diffs) // 2 - 1] <= 2 * AGREEMENT_MS and max(diffs) <= 10 * AGREEMENT_MS, diffs


@pytest.mark.parametrize("via", ["sip", "twilio"])
async def test_barge_in_and_clear_reaction_seen_by_both_sides(make_gateway, twilio_env, via):
    (rep,) = await simulate(make_gateway, twilio_env, via, "interruptible", BARGE_IN)
    assert rep.ok, (rep.failures, rep.error)
    (c,), (g,) = rep.timing["turns"], rep.gateway["turns"]
    # the gateway saw its clear; a SIP caller only hears the audio stop (RTP carries no clear), a Twilio one gets it
    assert g["barge_in"]["cleared"] and c["barge_in"]["cleared"] is (via == "twilio"), (c, g)
    # the clear follows the VAD's start decision (≥ 140 ms of speech) plus the trip through the engine
    assert 100 <= g["barge_in"]["reaction_ms"] <= 800, g
    assert abs(c["barge_in"]["reaction_ms"] - g["barge_in"]["reaction_ms"]) <= 10 * AGREEMENT_MS, (c, g)
    assert rep.gateway["summary"]["barge_ins"] == rep.timing["summary"]["barge_ins"] == 1


async def test_cli_writes_json_html_and_recordings(make_gateway, tmp_path):
    """`gateway simulate` as a user runs it: its own process, the agent's number found through the API, the report
    as JSON and as an HTML page with one inline-SVG timeline per call."""
    gw = await make_gateway(carriers={"sip": SipCarrier}, **rtp_range())
    num = await sip_number(gw, engine="greeting")
    script = tmp_path / "call.yaml"
    script.write_text("steps:\n  - wait_reply: {timeout_ms: 5000, quiet_ms: 600}\n"
                      "  - say: Hello there how are you today\n  - hangup\n")
    ports = rtp_range()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "simulate", "--agent", str(num["agent_id"]), "--via", "sip",
        "--script", str(script), "--calls", "2", "--concurrency", "2", "--url", gw.url(""),
        "--sip-target", f"127.0.0.1:{gw.carriers['sip'].port}", "--api-key", API_KEY,
        "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "--record-dir", str(tmp_path / "rec"),
        env={**os.environ, "GATEWAY_SIMULATE_RTP_PORTS": f"{ports['rtp_port_min']}-{ports['rtp_port_max']}"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, (out.decode(), err.decode())
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overall"]["calls"] == 2 and report["overall"]["ok"] == 2
    assert all(c["timing"]["summary"]["turns"] == 1 for c in report["calls"])
    assert all(c["gateway"]["summary"]["turns"] == 1 for c in report["calls"])
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 2 and not re.search(r"(src|href)=", page)   # self-contained: no assets
    assert "overall" in out.decode() and len(list((tmp_path / "rec").glob("call-*.wav"))) == 2


async def test_cli_refuses_a_gateway_off_loopback(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text("- hangup\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "simulate", "--agent", "1", "--via", "sip", "--script", str(script),
        "--url", "http://203.0.113.5:8080", "--api-key", "k", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"127.0.0.0/8" in err


@pytest.mark.parametrize("doc, message", [
    ([], "steps must be a non-empty list"),
    (["dance"], "step 1: unknown step 'dance'"),
    ([{"say": {"text": "hi", "wav": "x.wav"}}], "step 1 (say): give exactly one of text and wav"),
    ([{"say": {"text": "hi", "loud": 1}}], "unknown field 'loud'"),
    ([{"dtmf": "12x"}], "step 1 (dtmf): digits must be"),
    (["hangup", {"silence": -5}], "step 2 (silence): ms: must be an integer"),
    ([{"wait_reply": {"timeout_ms": "soon"}}], "timeout_ms: must be an integer"),
])
def test_script_errors_name_the_step_and_field(doc, message):
    with pytest.raises(ScriptError, match=re.escape(message)):
        parse_script(doc)
