"""AMD on a live call: a real Gateway (SQLite file, call manager, engine task) and an in-test carrier leg.

The leg plays the callee: it feeds greeting audio into the call and drains what the gateway sends back, as a carrier
socket would. Frequencies tell the audio apart: the engine's opening line is 300 Hz, the voicemail WAV 700 Hz, the
engine's spoken (text) voicemail 500 Hz.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from amd_signals import silence, sit, tone, words, write_wav  # noqa: E402
from gateway.amd import AmdDetector, AmdParams, controller_for, maybe_start_amd, report_amd  # noqa: E402
from gateway.engine.base import VoiceEngine  # noqa: E402
from gateway.frames import AmdResult, AnsweredBy, AudioFrame, Hangup, HangupSource, Mark  # noqa: E402

WAIT = 10.0


class Talker(VoiceEngine):
    """Speaks an opening line at once (held by AMD), records the AmdResult events, speaks a text voicemail."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.amd: list[AmdResult] = []
        self.got_amd = asyncio.Event()

    async def handle_call(self, session) -> None:
        await session.play(tone(300, 400, 16000), end_of_utterance=True)
        while (item := await session.receive()) is not None:
            if isinstance(item, AmdResult):
                self.amd.append(item)
                self.got_amd.set()
                if item.voicemail_message:
                    await session.play(tone(500, 300, 16000), end_of_utterance=True)
            elif isinstance(item, Hangup):
                return


def _freqs_of(pcm: bytes) -> list[int]:
    """The dominant frequency (to 100 Hz) of one frame, or nothing if it is quiet."""
    x = np.frombuffer(pcm, "<i2").astype(float)
    if np.abs(x).mean() < 500:
        return []
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1600))
    return [int(round(spec.argmax() * 8000 / 1600 / 100) * 100)]


class FakeLeg:
    def __init__(self) -> None:
        self.hangups: list[str] = []
        self.frames: list[tuple[float, bytes]] = []

    async def hangup(self, call, reason: str) -> None:
        self.hangups.append(reason)

    async def transfer(self, call, request) -> None:
        raise AssertionError("no transfer expected")

    async def pump(self, call) -> None:
        """The carrier's sender: drain the outbound side like a websocket writer."""
        while call.is_active:
            item = await call.next_outbound()
            if isinstance(item, AudioFrame):
                self.frames.append((time.monotonic(), item.pcm))
            elif isinstance(item, Mark):
                call.feed_event(item)

    def freqs(self) -> list[int]:
        """Dominant frequency (rounded to 100 Hz) of each non-silent frame sent to the callee."""
        return [f for _, pcm in self.frames for f in _freqs_of(pcm)]


async def _call(gw, settings: dict, engine: Talker, direction: str = "outbound", carrier: str = "fake"):
    gw.engines.register("talker", engine)
    agent = await gw.store.create_agent({"name": "a", "engine": "talker", "settings": settings})
    call = await gw.calls.create(carrier=carrier, direction=direction, from_number="+15550000001",
                                 to_number="+15550000002", agent=agent)
    return call


def _voicemail(tmp_path, provider: str | None = None, ms: int = 300) -> dict:
    """Agent settings: AMD on (the carrier's own with `provider`) and a voicemail drop of a 700 Hz tone file."""
    wav = tmp_path / "vm.wav"
    write_wav(wav, tone(700, ms))
    return {"amd": {"enabled": True, **({"provider": provider} if provider else {})},
            "voicemail": {"enabled": True, "message": str(wav)}}


async def _started(gw, settings: dict, engine: Talker):
    """An outbound call with AMD started and attached to a FakeLeg whose sender runs: (call, leg, controller, pump)."""
    call = await _call(gw, settings, engine)
    leg = FakeLeg()
    ctl = maybe_start_amd(call)
    assert ctl is not None
    await call.attach(leg, 8000)
    return call, leg, ctl, asyncio.create_task(leg.pump(call))


async def _feed(call, pcm: bytes, chunk: int = 320) -> None:
    for i in range(0, len(pcm), chunk):
        call.feed_audio(pcm[i:i + chunk])
        await asyncio.sleep(0)


async def _until(pred, timeout: float = WAIT) -> None:
    async def loop():
        while not pred():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), timeout)


GREETING = silence(300) + words([260] * 16, gap_ms=90)   # ≈ 5.6 s of continuous greeting
ANSWER = silence(300) + words([260] * 8, gap_ms=90)      # ≈ 2.8 s: longer than the greeting rule, short for a greeting
BEEP = tone(1000, 400)


async def test_machine_with_beep_plays_wav_after_beep_and_hangs_up_voicemail(make_gateway, tmp_path):
    gw = await make_gateway()
    engine = Talker()
    call, leg, ctl, pump = await _started(gw, _voicemail(tmp_path, ms=600), engine)
    try:
        await _feed(call, GREETING + silence(300))
        await _until(lambda: bool(ctl.results))
        assert ctl.results[0].answered_by is AnsweredBy.MACHINE_START
        assert ctl.results[0].duration_ms <= 3000
        await asyncio.sleep(0.1)
        assert 700 not in leg.freqs(), "message must not start before the beep"
        beep_end_ms = (len(GREETING) + len(silence(300)) + len(BEEP)) // 16
        await _feed(call, BEEP + silence(200))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    freqs = leg.freqs()
    assert freqs.count(700) >= 20                     # ≈ 600 ms of message reached the carrier …
    assert 300 not in freqs                           # … and not the engine's opening line
    assert leg.hangups == ["voicemail"]
    assert [r.answered_by for r in engine.amd] == [AnsweredBy.MACHINE_START, AnsweredBy.MACHINE_END_BEEP]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_detected"] and row["is_voicemail"] and not row["is_fax"]
    assert row["amd_answered_by"] == "machine_end_beep"
    assert row["amd_duration"] * 1000 >= beep_end_ms - 40
    assert row["voicemail_type"] == "audio"
    assert row["hangup_reason"] == "voicemail" and row["hangup_source"] == "system"


async def test_human_answer_starts_conversation_with_held_opening_line(make_gateway):
    gw = await make_gateway()
    engine = Talker()
    call = await _call(gw, {"amd": {"enabled": True}, "voicemail": {"enabled": True, "message": "Call us back"}},
                       engine)
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await _feed(call, silence(400) + words([380]))
        await asyncio.sleep(0.2)
        assert 300 not in leg.freqs(), "engine audio is held while AMD decides"
        await _feed(call, silence(1500))
        await asyncio.wait_for(engine.got_amd.wait(), WAIT)
        await _until(lambda: leg.freqs().count(300) >= 15)
    finally:
        pump.cancel()
    assert engine.amd[0].answered_by is AnsweredBy.HUMAN and engine.amd[0].voicemail_message is None
    assert call.is_active and leg.hangups == []
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "human" and row["amd_detected"] and not row["is_voicemail"]
    assert 1500 <= row["amd_duration"] * 1000 <= 2500     # "Hello" ends at 780 ms + 1.3 s of after-greeting silence
    await call.request_hangup(HangupSource.SYSTEM, "test")


async def test_long_answer_then_a_wait_turns_machine_start_into_human(make_gateway):
    """A business answer ("Acme support, Tom speaking, how can I help?") runs past the greeting limit, so
    machine_start comes first; the engine stays held, not muted, and when the person waits for a reply the verdict
    becomes human and the held opening line plays."""
    gw = await make_gateway()
    engine = Talker()
    call, leg, ctl, pump = await _started(
        gw, {"amd": {"enabled": True}, "voicemail": {"enabled": True, "message": "Call us back"}}, engine)
    try:
        await _feed(call, ANSWER)
        await _until(lambda: bool(ctl.results))
        assert ctl.results[0].answered_by is AnsweredBy.MACHINE_START
        assert ctl.gate.mode == "hold"
        await _feed(call, silence(AmdParams().answer_wait_ms + 200))
        await _until(lambda: leg.freqs().count(300) >= 15)
    finally:
        pump.cancel()
    assert [r.answered_by for r in engine.amd] == [AnsweredBy.MACHINE_START, AnsweredBy.HUMAN]
    assert call.is_active and leg.hangups == []
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "human" and not row["is_voicemail"] and row["voicemail_type"] is None
    events = await gw.store.list_call_events(row["id"])
    assert [e["data"]["answered_by"] for e in events if e["kind"] == "call:amd_result"] == ["machine_start", "human"]
    await call.request_hangup(HangupSource.SYSTEM, "test")


async def test_a_beep_after_the_human_verdict_cuts_the_engine_off_and_leaves_the_message(make_gateway, tmp_path):
    """A short greeting whose pause before the beep outlasts a person's wait: human first (the held opening line
    plays), then the beep → machine_end_beep, the engine is cut off, the WAV plays after the beep, hang-up
    `voicemail`; the call log keeps the last verdict."""
    gw = await make_gateway()
    engine = Talker()
    call, leg, ctl, pump = await _started(gw, _voicemail(tmp_path, ms=600), engine)
    try:
        await _feed(call, ANSWER + silence(AmdParams().answer_wait_ms + 100))
        await _until(lambda: [r.answered_by for r in ctl.results] == [AnsweredBy.MACHINE_START, AnsweredBy.HUMAN])
        assert not ctl.done.is_set(), "the detector still listens for a beep"
        beep_at = time.monotonic()
        await _feed(call, BEEP + silence(300))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert [r.answered_by for r in engine.amd] == [AnsweredBy.MACHINE_START, AnsweredBy.HUMAN,
                                                   AnsweredBy.MACHINE_END_BEEP]
    message = [t for t, pcm in leg.frames if 700 in _freqs_of(pcm)]
    assert len(message) >= 20 and message[0] >= beep_at   # the message went out after the beep was fed
    assert leg.hangups == ["voicemail"]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_end_beep" and row["is_voicemail"] and row["voicemail_type"] == "audio"


async def test_no_beep_after_the_human_verdict_ends_the_watch(make_gateway):
    gw = await make_gateway()
    engine = Talker()
    call, leg, ctl, pump = await _started(
        gw, {"amd": {"enabled": True}, "voicemail": {"enabled": True, "message": "Call us back"}}, engine)
    try:
        await _feed(call, ANSWER + silence(AmdParams().message_end_silence + 200))
        await asyncio.wait_for(ctl.done.wait(), WAIT)
    finally:
        pump.cancel()
    assert [r.answered_by for r in ctl.results] == [AnsweredBy.MACHINE_START, AnsweredBy.HUMAN]
    assert call.is_active and leg.hangups == []
    await call.request_hangup(HangupSource.SYSTEM, "test")


async def test_machine_text_message_is_handed_to_engine(make_gateway):
    gw = await make_gateway()
    engine = Talker()
    call = await _call(gw, {"amd": {"enabled": True},
                            "voicemail": {"enabled": True, "message": "Hi, this is Acme, call us back."}}, engine)
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        # no beep: the greeting ends in silence long enough that no beep is still likely to come
        await _feed(call, GREETING + silence(AmdParams().message_end_silence + 100))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    final = engine.amd[-1]
    assert final.answered_by is AnsweredBy.MACHINE_END_SILENCE
    assert final.voicemail_message == "Hi, this is Acme, call us back."
    freqs = leg.freqs()
    assert freqs.count(500) >= 10 and 300 not in freqs
    row = await gw.store.get_call(call.log_id)
    assert row["voicemail_type"] == "text" and row["hangup_reason"] == "voicemail"


async def test_fax_hangs_up(make_gateway):
    gw = await make_gateway()
    call = await _call(gw, {"amd": {"enabled": True}}, Talker())
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    await _feed(call, silence(600) + tone(1100, 500) + silence(3000))
    await asyncio.wait_for(call.ended.wait(), WAIT)
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "fax" and row["is_fax"] and not row["is_voicemail"]
    assert row["hangup_reason"] == "fax" and leg.hangups == ["fax"]


async def test_sit_intercept_gets_no_voicemail_and_is_logged_as_sit(make_gateway, tmp_path):
    """SIT tones then a "not in service" announcement: its own outcome; the voicemail WAV is never played."""
    gw = await make_gateway()
    call = await _call(gw, _voicemail(tmp_path, ms=600), Talker())
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await _feed(call, silence(300) + sit() + words([260] * 16, gap_ms=90) + silence(2000))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert 700 not in leg.freqs() and leg.hangups == ["sit"]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "sit" and not row["is_voicemail"] and not row["is_fax"]
    assert row["voicemail_type"] is None and (row["hangup_source"], row["hangup_reason"]) == ("system", "sit")
    # decided on the SIT segments (2nd ends at 848 ms), not the words
    assert 840 <= row["amd_duration"] * 1000 <= 1300
    events = await gw.store.list_call_events(row["id"])
    assert [e["data"]["answered_by"] for e in events if e["kind"] == "call:amd_result"] == ["sit"]
    assert "call:voicemail_started" not in {e["kind"] for e in events}


async def test_machine_without_voicemail_hangs_up_at_once(make_gateway):
    gw = await make_gateway()
    call = await _call(gw, {"amd": {"enabled": True}}, Talker())
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    await _feed(call, GREETING)
    await asyncio.wait_for(call.ended.wait(), WAIT)
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_start" and row["voicemail_type"] == "none"
    assert row["hangup_reason"] == "voicemail"


async def test_a_beep_after_the_human_verdict_without_voicemail_hangs_up(make_gateway):
    """Voicemail off: "Hi, it's Chris." then a pause longer than after_greeting_silence gives human, and the beep
    that follows shows the recorder: the call is hung up (hangup_reason voicemail, no message)."""
    gw = await make_gateway()
    engine = Talker()
    call, leg, ctl, pump = await _started(gw, {"amd": {"enabled": True}}, engine)
    try:
        await _feed(call, silence(300) + words([400]) + silence(AmdParams().after_greeting_silence + 200))
        await _until(lambda: bool(ctl.results))
        assert ctl.results[0].answered_by is AnsweredBy.HUMAN and call.is_active
        await _feed(call, BEEP + silence(300))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert [r.answered_by for r in engine.amd] == [AnsweredBy.HUMAN, AnsweredBy.MACHINE_END_BEEP]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_end_beep" and row["voicemail_type"] == "none"
    assert row["hangup_reason"] == "voicemail" and leg.hangups == ["voicemail"]


async def test_disabled_or_inbound_is_a_no_op(make_gateway):
    gw = await make_gateway()
    off = await _call(gw, {"amd": {"enabled": False}}, Talker())
    assert maybe_start_amd(off) is None and off.output_gate is None
    inbound = await _call(gw, {"amd": {"enabled": True}}, Talker(), direction="inbound")
    assert maybe_start_amd(inbound) is None


async def test_carrier_amd_verdict_runs_the_same_behaviour(make_gateway, tmp_path):
    """provider twilio on a twilio call: no local detector; the carrier's AnsweredBy drives the voicemail drop."""
    gw = await make_gateway()
    call = await _call(gw, _voicemail(tmp_path, "twilio"), Talker(), carrier="twilio")
    leg = FakeLeg()
    ctl = maybe_start_amd(call)
    assert ctl.external and controller_for(call) is ctl
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await report_amd(call, AmdResult(AnsweredBy.MACHINE_END_BEEP, 4100, source="twilio"))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert leg.freqs().count(700) >= 10
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_end_beep" and row["amd_duration"] == 4.1
    assert row["hangup_reason"] == "voicemail" and row["voicemail_type"] == "audio"


async def test_greeting_heard_in_early_media_is_a_machine_at_answer(make_gateway, tmp_path):
    """SIP 183: the greeting played before the answer; after it, the beep ends it and the message follows."""
    gw = await make_gateway()
    call = await _call(gw, _voicemail(tmp_path), Talker())
    early = AmdDetector(early_media=True)
    early.feed(GREETING)                                    # what the carrier's RTP reader fed during 183
    leg = FakeLeg()
    ctl = maybe_start_amd(call, detector=early)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await _until(lambda: bool(ctl.results))
        assert ctl.results[0].answered_by is AnsweredBy.MACHINE_START and ctl.results[0].duration_ms == 0
        await _feed(call, words([260] * 3) + silence(200) + BEEP + silence(200))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert leg.freqs().count(700) >= 10 and leg.hangups == ["voicemail"]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_end_beep"


async def test_ringback_in_early_media_does_not_decide(make_gateway):
    gw = await make_gateway()
    engine = Talker()
    call = await _call(gw, {"amd": {"enabled": True}}, engine)
    early = AmdDetector()                                   # even without early_media=True: a tone verdict is dropped
    early.feed(silence(200) + tone(425, 1000, amp=4000) + silence(300))
    assert early.first is None                              # ringback before any speech is no beep …
    early.feed(words([250] * 2) + silence(300) + tone(425, 1000, amp=4000) + silence(300))
    assert early.first is not None and early.first.answered_by is AnsweredBy.MACHINE_END_BEEP   # … this one is
    leg = FakeLeg()
    maybe_start_amd(call, detector=early)
    await call.attach(leg, 8000)
    await _feed(call, silence(300) + words([380]) + silence(1500))
    await asyncio.wait_for(engine.got_amd.wait(), WAIT)
    assert engine.amd[0].answered_by is AnsweredBy.HUMAN
    await call.request_hangup(HangupSource.SYSTEM, "test")


def test_websocket_engines_get_the_voicemail_text():
    from gateway.engine.ws_bridge import event_message
    msg = event_message(AmdResult(AnsweredBy.MACHINE_END_SILENCE, 5200, voicemail_message="Call us back"))
    assert msg == {"type": "amd", "answered_by": "machine_end_silence", "duration_ms": 5200,
                   "voicemail_message": "Call us back"}
    assert "voicemail_message" not in event_message(AmdResult(AnsweredBy.HUMAN, 1800))


async def test_carrier_machine_start_then_gateway_follows_the_greeting_to_the_beep(make_gateway, tmp_path):
    """Twilio AMD with MachineDetection=Enable stops at machine_start: the gateway's detector finds the beep."""
    gw = await make_gateway()
    call = await _call(gw, _voicemail(tmp_path, "twilio"), Talker(), carrier="twilio")
    leg = FakeLeg()
    ctl = maybe_start_amd(call)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await _feed(call, words([260] * 6, gap_ms=90))            # greeting audio before Twilio's verdict: ignored
        await report_amd(call, AmdResult(AnsweredBy.MACHINE_START, 3000, source="twilio"))
        await _until(lambda: ctl._tapping)
        await _feed(call, words([260] * 6, gap_ms=90) + silence(300) + BEEP + silence(300))
        await asyncio.wait_for(call.ended.wait(), WAIT)
    finally:
        pump.cancel()
    assert leg.freqs().count(700) >= 10 and leg.hangups == ["voicemail"]
    row = await gw.store.get_call(call.log_id)
    assert row["amd_answered_by"] == "machine_end_beep"
    # Twilio's 3 s plus the audio after its verdict: ≈ 6 words (2.1 s) + 0.3 s + 0.4 s beep + confirmation
    assert 3000 + 2600 <= row["amd_duration"] * 1000 <= 3000 + 3200


async def test_no_audio_at_all_counts_as_silence(make_gateway):
    """A carrier that sends nothing (DTX, a dead stream): the watchdog feeds silence, initial silence → unknown."""
    gw = await make_gateway()
    engine = Talker()
    call = await _call(gw, {"amd": {"enabled": True, "params": {"initial_silence": 600}}}, engine)
    leg = FakeLeg()
    maybe_start_amd(call)
    await call.attach(leg, 8000)
    pump = asyncio.create_task(leg.pump(call))
    try:
        await asyncio.wait_for(engine.got_amd.wait(), WAIT)
        await _until(lambda: leg.freqs().count(300) >= 15)     # unknown: the conversation starts
    finally:
        pump.cancel()
    assert engine.amd[0].answered_by is AnsweredBy.UNKNOWN
    await call.request_hangup(HangupSource.SYSTEM, "test")
