"""gateway/turns.py: the turn timeline's rules on synthetic timelines, and the /metrics histograms."""
from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import CollectorRegistry

from fakes.twilio_env import recording, twilio_env  # noqa: F401  (fixture)
from gateway.metrics import TimingMetrics
from gateway.turns import Timeline, analyze, percentile

LOUD = (np.ones(160) * 3000).astype("<i2").tobytes()
QUIET = bytes(320)


def play(tl: Timeline, at: float, seconds: float, pcm: bytes = LOUD) -> None:
    """Hand `seconds` of frames to the carrier at once at `at` (a websocket carrier: they queue and play out)."""
    for _ in range(round(seconds / 0.02)):
        tl.agent_frame(pcm, at)


def test_response_latency_is_caller_end_to_first_agent_audio():
    tl = Timeline(100.0)
    tl.caller_started(101.0)
    tl.caller_ended(102.0)
    play(tl, 102.35, 1.0)
    tl.caller_started(104.0)
    tl.caller_ended(104.5)
    play(tl, 105.2, 0.4)
    out = analyze(tl, 110.0)
    t1, t2 = out["turns"]
    assert (t1["caller_start_ms"], t1["caller_end_ms"], t1["agent_start_ms"], t1["agent_end_ms"]) == \
        (1000, 2000, 2350, 3350)
    assert t1["latency_ms"] == 350 and t2["latency_ms"] == 700
    s = out["summary"]
    assert s["turns"] == 2 and s["agent_utterances"] == 2 and s["latency_max_ms"] == 700
    assert s["latency_p50_ms"] == 525 and s["barge_ins"] == 0 and s["talk_over_ms"] == 0
    # 104.5 → 105.2 is short; 105.6 → 110 (hangup) is a long silence
    assert out["long_silences"] == [{"start_ms": 5600, "duration_ms": 4400}]


def test_frames_handed_over_in_a_burst_play_out_one_after_another():
    tl = Timeline(0.0)
    play(tl, 1.0, 3.0)            # three seconds queued at once
    play(tl, 1.5, 0.2)            # more queued half a second later: plays after the three seconds
    assert np.allclose(tl.agent, [[1.0, 4.2]])
    play(tl, 5.0, 0.2, QUIET)     # silence is not agent audio, but it takes playout time
    play(tl, 5.0, 0.2)
    assert np.allclose(tl.agent[-1], [5.2, 5.4])


def test_barge_in_reaction_ends_at_the_clear():
    tl = Timeline(0.0)
    play(tl, 1.0, 5.0)            # agent talks 1 → 6 s
    tl.caller_started(2.0)
    tl.agent_clear(2.25)          # engine clears a quarter second after the caller started
    tl.caller_ended(3.0)
    play(tl, 3.5, 1.0)
    out = analyze(tl, 10.0)
    (turn,) = out["turns"]
    assert turn["barge_in"] == {"reaction_ms": 250, "cleared": True}
    assert turn["talk_over_ms"] == 250 and turn["latency_ms"] == 500
    assert out["summary"]["barge_ins"] == 1 and out["summary"]["clear_reaction_avg_ms"] == 250


def test_barge_in_without_clear_lasts_until_the_agent_finishes():
    tl = Timeline(0.0)
    play(tl, 1.0, 2.0)
    tl.caller_started(2.5)
    tl.caller_ended(4.0)
    (turn,) = analyze(tl, 5.0)["turns"]
    assert turn["barge_in"] == {"reaction_ms": 500, "cleared": False}
    assert turn["latency_ms"] is None and turn["talk_over_ms"] == 500


def test_an_agent_talking_over_the_caller_has_no_latency():
    tl = Timeline(0.0)
    tl.caller_started(1.0)
    play(tl, 1.04, 1.0)           # an echo: starts while the caller speaks, ends just after
    tl.caller_ended(2.0)
    (turn,) = analyze(tl, 3.0)["turns"]
    assert "barge_in" not in turn and turn["latency_ms"] is None and turn["talk_over_ms"] == 960


def test_open_utterances_close_at_the_end_and_a_short_pause_does_not_split_agent_audio():
    tl = Timeline(0.0)
    play(tl, 0.5, 1.0)
    play(tl, 1.7, 1.0)            # 200 ms pause < AGENT_GAP_S: one utterance
    tl.caller_started(4.0)
    out = analyze(tl, 5.0)
    assert out["summary"]["agent_utterances"] == 1 and out["summary"]["first_agent_audio_ms"] == 500
    assert out["turns"][0]["caller_end_ms"] == 5000 and out["turns"][0]["latency_ms"] is None


def test_percentile_interpolates_like_numpy():
    vals = [120.0, 300.0, 310.0, 900.0, 50.0]
    for q in (0, 50, 95, 100):
        assert abs(percentile(vals, q) - float(np.percentile(vals, q))) < 1e-9


def test_timing_metrics_observe_turns():
    registry = CollectorRegistry()
    m = TimingMetrics(registry)
    m.observe({"turns": [{"latency_ms": 400}, {"latency_ms": None, "barge_in": {"reaction_ms": 200}}]})
    value = registry.get_sample_value
    assert value("gateway_turns_total") == 2 and value("gateway_response_latency_seconds_count") == 1
    assert value("gateway_barge_in_clear_seconds_count") == 1
    assert abs(value("gateway_response_latency_seconds_sum") - 0.4) < 1e-9
    assert value("gateway_response_latency_seconds_bucket", {"le": "0.4"}) == 1   # le: a bound counts in it
    assert value("gateway_response_latency_seconds_bucket", {"le": "0.3"}) == 0


async def test_twilio_call_reports_its_turns_in_the_log_webhook_event_and_metrics(twilio_env):
    """A real Media Streams call on the greeting engine: the prompt is the agent's opening, the caller's recording
    one or more turns, echoed back while they speak (so no response latency), all in the call log and events."""
    env = await twilio_env(engine="greeting")
    call_id, call_sid, _ = await env.inbound()
    client = env.stream()
    await client.__aenter__()
    try:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid)
        call = env.gw.calls.get(call_id)
        await client.play(b"\xff" * 8000)                                  # a second of silence
        await client.wait_for(lambda: len(client.got.media) > 100, timeout=10)   # the prompt is playing
        async with asyncio.timeout(10):                                  # Twilio has played the whole prompt
            while "greeting-played" not in client.echoed:
                await asyncio.sleep(0.02)
        await client.play(recording())
        await client.play(b"\xff" * 8000)
        live = call.describe()["timing"]
        assert live["turns"] >= 1 and live["first_agent_audio_ms"] < 500
        await client.stop(call_sid, env.account.sid)
        row = await env.wait_row(call_id, lambda r: r["timing"] is not None, timeout=10)
    finally:
        await client.__aexit__()
    t = row["timing"]
    assert t["turns"] >= 1 and t["agent_utterances"] >= 2 and t["first_agent_audio_ms"] < 500
    events = await env.gw.store.list_call_events(row["id"])
    ended = next(e for e in events if e["kind"] == "conversation:ended")
    assert ended["data"]["timing"] == t and len(ended["data"]["turns"]) == t["turns"]
    assert env.gw.metrics.registry.get_sample_value("gateway_turns_total") == t["turns"]
