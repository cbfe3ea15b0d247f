"""AmdDetector on synthesized signals (tones, speech-like bursts, silence) and a few espeak-ng clips."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from amd_signals import espeak, noise, silence, tone, word, words  # noqa: E402
from gateway.amd import AmdDetector, AmdParams  # noqa: E402
from gateway.amd.tones import tone_score  # noqa: E402
from gateway.frames import AnsweredBy  # noqa: E402
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402

H, MS, MEB, MES, MEO, FAX, UNK = (AnsweredBy.HUMAN, AnsweredBy.MACHINE_START, AnsweredBy.MACHINE_END_BEEP,
                                  AnsweredBy.MACHINE_END_SILENCE, AnsweredBy.MACHINE_END_OTHER, AnsweredBy.FAX,
                                  AnsweredBy.UNKNOWN)


def run(pcm: bytes, params: AmdParams | None = None, sr: int = 8000, message_end: bool = False, chunk: int = 0):
    d = AmdDetector(params, sr, detect_message_end=message_end)
    out = [x for i in range(0, len(pcm), chunk) for x in d.feed(pcm[i:i + chunk])] if chunk else d.feed(pcm)
    return [(x.answered_by, x.at_ms) for x in out]


def telephone(pcm: bytes) -> bytes:
    """Through μ-law and back, as a carrier delivers it."""
    return ulaw_to_pcm16(pcm16_to_ulaw(pcm))


def frame_aligned(pcm: bytes) -> bytes:
    """Pad to a whole number of 20 ms frames (8 kHz), so what follows starts on a frame (and packet) edge."""
    return pcm + bytes(-len(pcm) % 320)


# --- tones ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("freq", [440, 620, 1000, 1400, 1950])
def test_tone_score_finds_beep_frequency_and_purity(freq):
    x = np.frombuffer(tone(freq, 20), "<i2").astype(np.float32)
    f, purity = tone_score(x, 8000)
    assert abs(f - freq) <= 25 and purity > 0.9


def test_speech_and_noise_are_not_pure():
    for sig in (word(20, seed=3), noise(20, amp=3000)):
        _, purity = tone_score(np.frombuffer(sig, "<i2").astype(np.float32), 8000)
        assert purity < 0.5


@pytest.mark.parametrize("freq", [450, 850, 1000, 1400, 2000])
def test_beep_after_greeting_is_machine_end_beep_decided_when_tone_stops(freq):
    pcm = silence(300) + words([250] * 5) + silence(300) + tone(freq, 500) + silence(500)
    beep_end = (len(pcm) - len(silence(500))) // 16
    (ab0, _), (ab, at) = run(telephone(pcm), message_end=True)
    assert ab0 is MS and ab is MEB
    confirm = AmdParams().beep_confirm_ms
    assert beep_end + confirm - 20 <= at <= beep_end + confirm + 60     # after the tone and the quiet confirming it


def test_100ms_beep_across_frame_edges_is_found():
    """A 100 ms beep that starts mid-frame fills only four 20 ms frames: still a beep."""
    pcm = silence(300) + words([250] * 5) + silence(310) + tone(1400, 100) + silence(600)
    assert [a for a, _ in run(telephone(pcm), message_end=True)] == [MS, MEB]


@pytest.mark.parametrize("offset_ms", [5, 10, 15])
def test_80ms_beep_across_frame_edges_is_found_and_a_60ms_blip_is_not(offset_ms):
    """An 80 ms beep that starts mid-frame fills only three whole 20 ms frames; the partial frames at its edges hold
    the rest (tones.Tone.edge_ms). A 60 ms blip, edges included, stays too short."""
    before = frame_aligned(silence(300) + words([250] * 5) + silence(300)) + silence(offset_ms)
    assert [a for a, _ in run(telephone(before + tone(1430, 80) + silence(600)), message_end=True)] == [MS, MEB]
    assert MEB not in [a for a, _ in run(telephone(before + tone(1430, 60) + silence(600)), message_end=True)]


def test_a_70ms_glide_is_not_a_beep_though_its_edges_make_it_long_enough():
    """Three whole frames and a partial one: the pitch drift of so short a tone is taken over all its frames (with
    one inner frame there would be none), so a voice's harmonic gliding 6 Hz in 70 ms stays a voice."""
    t = np.arange(560) / 8000
    before = frame_aligned(silence(300) + words([250] * 5) + silence(300)) + silence(10)
    for glide_hz_per_s2, beep in ((0, True), (40, False)):
        sound = (6000 * np.sin(2 * np.pi * (700 * t + glide_hz_per_s2 * t * t))).astype("<i2").tobytes()
        assert (MEB in [a for a, _ in run(telephone(before + sound + silence(600)), message_end=True)]) is beep


def test_beep_in_line_noise_is_found():
    """White noise under the beep takes purity from every frame (a pure tone over noise of power ratio r² keeps
    1 / (1 + r²) of the energy in its peak): the purity a beep needs is lowered by the noise heard before it."""
    clip = frame_aligned(silence(300) + words([250] * 5) + silence(300)) + tone(1100, 300, amp=3000) + silence(600)
    hiss = np.frombuffer(noise(len(clip) // 16, amp=900, seed=3), "<i2")
    pcm = np.clip(np.frombuffer(clip, "<i2") + hiss, -32768, 32767).astype("<i2").tobytes()
    assert [a for a, _ in run(telephone(pcm), message_end=True)] == [MS, MEB]


def test_2000hz_beep_at_the_band_edge_is_found():
    pcm = silence(300) + words([250] * 5) + silence(300) + tone(2003, 300) + silence(600)
    assert [a for a, _ in run(telephone(pcm), message_end=True)] == [MS, MEB]


def test_short_gliding_tone_is_not_a_beep():
    """The end of a word: a voice's lone harmonic near 400–450 Hz, pure for 80–100 ms but gliding a few Hz."""
    t = np.arange(800) / 8000
    glide = (6000 * np.sin(2 * np.pi * (440 * t + 60 * t * t))).astype("<i2").tobytes()   # 440 → 452 Hz
    pcm = silence(300) + words([250] * 5) + silence(300) + glide + silence(600)
    assert MEB not in [a for a, _ in run(pcm, message_end=True)]


def test_tone_that_swells_and_fades_is_not_a_beep_and_a_steady_one_is():
    """A voice's harmonic near 420 Hz through the phone band: pure and steady in pitch, but its loudness follows the
    syllable (here it doubles and falls back within 240 ms); a beep of the same pitch and length holds its level."""
    t = np.arange(1920) / 8000
    envelope = 3000 + 3000 * np.sin(np.pi * t / t[-1])
    vowel = (envelope * np.sin(2 * np.pi * 421 * t)).astype("<i2").tobytes()
    before = silence(300) + words([250] * 5) + silence(300)
    assert MEB not in [a for a, _ in run(telephone(before + vowel + silence(600)), message_end=True)]
    assert [a for a, _ in run(telephone(before + tone(421, 240, amp=5000) + silence(600)), message_end=True)] == \
        [MS, MEB]
    swell = AmdParams(beep_max_level_spread=10.0)             # the check off: the same vowel passes for a beep
    assert MEB in [a for a, _ in run(telephone(before + vowel + silence(600)), swell, message_end=True)]


def test_a_vowel_left_as_one_harmonic_by_the_phone_band_is_talk_once_it_is_no_beep():
    """Through the phone band (the fundamental cut below 300 Hz) a vowel can be one dominant harmonic: pure enough to
    be followed as a tone. Once it ends without being a beep (it swells and fades), its frames count as talk."""
    t = np.arange(960) / 8000                               # 120 ms
    vowel = ((3000 + 3000 * np.sin(np.pi * t / t[-1])) * np.sin(2 * np.pi * 421 * t)).astype("<i2").tobytes()
    d = AmdDetector(AmdParams(), 8000)
    d.feed(telephone(silence(300) + words([250]) + silence(300) + vowel + silence(100)))
    with_vowel = d.heard_ms
    d = AmdDetector(AmdParams(), 8000)
    d.feed(telephone(silence(300) + words([250]) + silence(300) + silence(300)))
    assert with_vowel - d.heard_ms >= 80


def test_multi_tone_beep_is_one_beep_decided_after_its_last_note():
    """Three rising notes with hardly a gap (some voicemail systems): one beep, from its first note to its last."""
    notes = tone(720, 160, amp=5000) + silence(10) + tone(900, 110, amp=5000) + silence(30) + tone(1080, 120, amp=5000)
    pcm = silence(300) + words([250] * 5) + silence(300) + notes + silence(600)
    beep_end = (len(pcm) - len(silence(600))) // 16
    out = run(telephone(pcm), message_end=True)
    assert [a for a, _ in out] == [MS, MEB] and out[1][1] >= beep_end + AmdParams().beep_confirm_ms - 20
    # the same notes with speech straight after are a melody under the greeting, not its beep
    pcm = silence(300) + words([250] * 5) + silence(300) + notes + words([250] * 8) + silence(2000)
    assert MEB not in [a for a, _ in run(telephone(pcm), message_end=True)]


def test_steady_tone_inside_speech_is_not_a_beep():
    """A long sung vowel looks like a tone; speech right after it shows it was not the beep."""
    pcm = silence(300) + words([250] * 3) + tone(600, 200, amp=6000) + words([250] * 10) + silence(2000)
    out = run(pcm, message_end=True)
    assert out[0][0] is MS and MEB not in [a for a, _ in out]


def test_beep_broken_by_a_noise_burst_is_one_beep_ending_at_its_real_end():
    pcm = silence(300) + words([250] * 4) + silence(300) + tone(800, 300) + noise(60, amp=4000) + tone(800, 300) \
        + silence(600)
    beep_end = (len(pcm) - len(silence(600))) // 16
    (ab, at), = run(pcm)
    assert ab is MEB and at >= beep_end + 40


def test_long_beep_with_a_concealed_lost_packet_is_still_a_beep():
    """Packet loss inside a 1 s beep: G.711 Appendix I concealment repeats the tone and fades it, so one frame dips
    to about half its level. A device's beep is still steady in loudness; a voice's swell is not (test above)."""
    before = frame_aligned(silence(300) + words([250] * 5) + silence(300))
    beep = bytearray(tone(1690, 1000, amp=6000))
    for k in (12, 37):                                      # two lost packets, concealed with a fade
        a = k * 320
        faded = np.frombuffer(bytes(beep[a:a + 320]), "<i2") * np.linspace(1.0, 0.4, 160)
        beep[a:a + 320] = faded.astype("<i2").tobytes()
    assert [a for a, _ in run(telephone(before + bytes(beep) + silence(600)), message_end=True)] == [MS, MEB]


def test_lost_packets_on_a_noisy_line_do_not_let_background_talk_through():
    """Background talk under hiss is not the callee (the noise-floor gate). A lost packet left as zeros is quieter
    than that line ever is: it must not become the noise floor, or the background passes for speech for 2 s."""
    bg = np.frombuffer(words([250] * 20, gap_ms=60), "<i2") * 0.2
    hiss = np.frombuffer(noise(len(bg) // 8, amp=300), "<i2")
    line = bytearray(np.clip(bg + hiss[:len(bg)], -32768, 32767).astype("<i2").tobytes())
    clean = run(bytes(line) + silence(3000))
    for k in range(1, 12):                                  # a zero-filled lost packet every 400 ms
        line[k * 6400:k * 6400 + 320] = bytes(320)
    lossy = run(bytes(line) + silence(3000))
    assert clean[0][0] is UNK and lossy[0][0] is UNK


def test_a_pure_looking_blip_of_background_sound_after_a_beep_does_not_cancel_it():
    """In office or babble noise one frame now and then looks like a pure tone; in the quiet after a beep it is
    neither the next note of a melody nor of a multi-tone beep (those last ≥ 80 ms). A real next note still is."""
    before = frame_aligned(silence(300) + words([250] * 5) + silence(300))
    blip = frame_aligned(tone(1000, 300) + silence(60)) + tone(1500, 20, amp=3000)
    assert [a for a, _ in run(telephone(before + blip + silence(600)), message_end=True)] == [MS, MEB]
    melody = frame_aligned(tone(1000, 300) + silence(20)) + tone(1500, 200, amp=3000) + words([250] * 6)
    assert MEB not in [a for a, _ in run(telephone(before + melody + silence(2000)), message_end=True)]


def test_short_blip_is_not_a_beep():
    pcm = silence(300) + words([250] * 3) + tone(1000, 60) + silence(2000)
    assert run(pcm)[0][0] is H


def test_beep_detector_off_in_app_amd_anchor():
    pcm = silence(300) + words([250]) + silence(300) + tone(1000, 500) + silence(2000)
    assert MEB not in [a for a, _ in run(pcm, AmdParams.app_amd())]


def test_fax_cng_and_ced():
    assert run(silence(800) + tone(1100, 500, amp=5000) + silence(3000)) == [(FAX, 1200)]
    assert run(silence(300) + tone(2100, 3000, amp=5000))[0][0] is FAX


def test_1100hz_beep_after_a_greeting_is_a_beep_not_fax():
    pcm = silence(300) + words([250] * 4) + silence(200) + tone(1100, 500) + silence(400)
    assert run(pcm)[0][0] is MEB


# --- greeting analysis ----------------------------------------------------------------------------------------------
def test_short_hello_then_silence_is_human_after_after_greeting_silence():
    pcm = silence(500) + words([400]) + silence(2000)
    (ab, at), = run(telephone(pcm))
    speech_end, wait = 500 + 400, AmdParams().after_greeting_silence
    assert ab is H and speech_end + wait - 60 <= at <= speech_end + wait + 40


def test_four_word_human_answer_is_human_but_app_amd_calls_it_machine():
    pcm = silence(400) + words([220, 160, 180, 300], gap_ms=110) + silence(2000)
    assert run(pcm)[0][0] is H
    assert run(pcm, AmdParams.app_amd())[0][0] is MS      # app_amd's known weakness: 3+ words → MACHINE


def test_long_greeting_is_machine_start_then_end_by_silence():
    pcm = silence(300) + words([260] * 14, gap_ms=90) + silence(3000)
    out = run(pcm, message_end=True)
    assert [a for a, _ in out] == [MS, MES]
    assert out[0][1] <= 2600
    last_voice = len(pcm) // 16 - 3000 - 90
    assert abs(out[1][1] - (last_voice + AmdParams().message_end_silence)) <= 60


def test_message_end_timeout_is_machine_end_other():
    p = AmdParams(message_end_timeout=6000)
    pcm = silence(300) + words([260] * 40, gap_ms=90)
    assert [a for a, _ in run(pcm, p, message_end=True)] == [MS, MEO]


ANSWER = silence(300) + words([260] * 8, gap_ms=90)       # ≈ 2.8 s: past the greeting rule, short for a greeting


def test_long_answer_then_a_wait_is_machine_start_then_human():
    """A business answer looks like a greeting until it stops: machine_start, then the person's wait → human."""
    p = AmdParams()
    out = run(ANSWER + silence(p.answer_wait_ms + 500), message_end=True)
    assert [a for a, _ in out] == [MS, H]
    speech_end = len(ANSWER) // 16 - 90
    assert abs(out[1][1] - (speech_end + p.answer_wait_ms)) <= 60


def test_long_answer_without_voicemail_is_one_human_verdict():
    """Without the end-of-message step the one verdict waits: the answer's wait gives human, never machine."""
    assert [a for a, _ in run(ANSWER + silence(AmdParams().answer_wait_ms + 500))] == [H]


def test_hello_again_after_the_wait_does_not_make_an_answer_a_greeting():
    """A 4.2 s answer, no reply for 1.6 s, then "Hello?": the second call is the person asking again."""
    pcm = silence(300) + words([260] * 12, gap_ms=90) + silence(1600) + words([300, 300], gap_ms=90) + silence(3000)
    assert [a for a, _ in run(pcm, message_end=True)] == [MS, H]
    # counted as talk, the "Hello?" would take the answer past answer_max_ms: the greeting's silence ends it, unless
    # the call after the wait is taken as the person asking again (reask_wait_ms, below)
    assert [a for a, _ in run(pcm, AmdParams(short_utterance_ms=0, reask_wait_ms=0), message_end=True)] == [MS, MES]


def test_a_long_answer_a_wait_and_hello_again_is_a_person():
    """A 5.6 s answer (past answer_max_ms: machine confirmed by its talk), no reply for 1.8 s, "Hello?", then a wait:
    the turn of a person asking again. A greeting's next sentence after a pause is longer and ends the greeting."""
    answer = silence(300) + words([260] * 16, gap_ms=90)
    pcm = answer + silence(1800) + words([300, 300], gap_ms=90) + silence(3500)
    assert [a for a, _ in run(pcm, message_end=True)] == [MS, H]
    assert [a for a, _ in run(pcm, AmdParams(reask_wait_ms=0), message_end=True)] == [MS, MES]
    greeting = answer + silence(1800) + words([260] * 6, gap_ms=90) + silence(3500)     # a 2.1 s last sentence
    assert [a for a, _ in run(greeting, message_end=True)] == [MS, MES]
    blip = answer + silence(1800) + words([120]) + silence(3500)                        # a click, not a call
    assert [a for a, _ in run(blip, message_end=True)] == [MS, MES]


def test_hi_a_pause_then_a_long_sentence_is_a_greeting():
    """"Hi!" … (1 s) … then a 3.5 s sentence and no beep: 3.8 s of talk, short enough for a person's answer, but a
    person who called "Hello?" and got no reply does not go on with a long sentence. Their short second call does."""
    hi = silence(300) + words([300]) + silence(1000)
    assert [a for a, _ in run(hi + words([260] * 10, gap_ms=90) + silence(3500), message_end=True)] == [MS, MES]
    assert [a for a, _ in run(hi + words([260] * 10, gap_ms=90) + silence(3500), AmdParams(hi_rest_ms=0),
                              message_end=True)] == [MS, H]
    out = run(hi + words([260] * 10, gap_ms=90) + silence(3500))                       # voicemail off: one verdict
    assert [a for a, _ in out] == [MS]
    person = hi + words([300, 300, 300], gap_ms=90) + silence(3500)                    # "Hello? Who's calling?"
    assert [a for a, _ in run(person, message_end=True)][-1] is H


def test_odd_voiced_frames_of_background_sound_are_not_talk():
    """A 2.8 s answer, then 2.5 s of background talk the gates let through only as 40 ms snatches, then quiet: the
    snatches do not stretch the answer past answer_max_ms (counted, they and the pauses between them would)."""
    snatches = b"".join(word(40, seed=k) + silence(460) for k in range(5))
    pcm = ANSWER + silence(500) + snatches + silence(3500)
    assert [a for a, _ in run(pcm, message_end=True)] == [MS, H]
    assert [a for a, _ in run(pcm, AmdParams(talk_min_run_ms=20), message_end=True)] == [MS, MES]


def test_speech_past_an_answers_length_confirms_the_machine():
    p = AmdParams()
    greeting = silence(300) + words([260] * 20, gap_ms=90)   # 7 s
    (ab, at), = run(greeting + silence(500))
    assert ab is MS and at >= 300 + p.answer_max_ms          # without voicemail: decided once confirmed
    out = run(greeting + silence(p.message_end_silence + 200), message_end=True)
    assert [a for a, _ in out] == [MS, MES] and out[0][1] < 300 + p.answer_max_ms


def test_short_greeting_then_beep_is_still_a_machine_with_a_beep():
    pcm = ANSWER + silence(400) + tone(1000, 300) + silence(600)
    assert [a for a, _ in run(pcm, message_end=True)] == [MS, MEB]


def test_a_beep_after_the_wait_turns_the_human_verdict_into_machine_end_beep():
    """A short greeting whose beep comes after a pause longer than a person's wait: human at the wait, then the beep
    (within message_end_silence of the last talk) → machine_end_beep, decided after the beep. "Hi!" … then the rest
    of the greeting after the human verdict, then a beep: the same, within beep_watch_ms of the verdict. A beep
    after the end-of-message silence, or later than beep_watch_ms after the verdict, leaves the human verdict alone."""
    p = AmdParams()
    late = p.answer_wait_ms + 300                             # the beep starts 2.7 s after the talk
    pcm = ANSWER + silence(late) + tone(1000, 200) + silence(600)
    out = run(pcm, message_end=True)
    assert [a for a, _ in out] == [MS, H, MEB]
    assert out[2][1] >= (len(ANSWER) + len(silence(late)) + len(tone(1000, 200))) // 16
    assert [a for a, _ in run(pcm, AmdParams(beep_watch_ms=0), message_end=True)] == [MS, H]
    assert [a for a, _ in run(pcm)] == [H, MEB]               # voicemail off: the beep still shows a machine
    too_late = ANSWER + silence(p.message_end_silence + 100) + tone(1000, 200) + silence(600)
    assert [a for a, _ in run(too_late, message_end=True)] == [MS, H]
    hi = silence(300) + words([400]) + silence(p.after_greeting_silence + 200)       # "Hi!" … human
    rest = words([260] * 6, gap_ms=90) + silence(400) + tone(1000, 200) + silence(600)   # … the rest, a beep
    assert [a for a, _ in run(hi + rest, message_end=True)] == [H, MEB]
    talked_on = hi + words([260] * 14, gap_ms=90) + silence(400) + tone(1000, 200) + silence(600)
    assert len(talked_on) // 16 - 800 > 900 + p.after_greeting_silence + p.beep_watch_ms
    assert [a for a, _ in run(talked_on, message_end=True)] == [H]


def test_a_loud_pure_tone_in_the_wait_is_no_person_even_when_it_is_no_beep():
    """A short greeting, then a beep-like tone with a burst of sound straight after it (no beep verdict: a beep is
    followed by quiet), then quiet: a person waiting for a reply plays no tone, so the wait does not make it human.
    Notes of background music far quieter than the callee's voice leave the person's wait alone."""
    beep_then_note = ANSWER + silence(400) + tone(1000, 150) + noise(200, amp=4000) + silence(3500)
    assert [a for a, _ in run(beep_then_note, message_end=True)] == [MS, MES]
    assert [a for a, _ in run(beep_then_note, AmdParams(confirm_tone_rel_level=0), message_end=True)] == [MS, H]
    music = ANSWER + silence(400) + tone(1000, 300, amp=1000) + tone(1320, 300, amp=1000) + silence(3500)
    assert [a for a, _ in run(music, message_end=True)] == [MS, H]
    assert [a for a, _ in run(beep_then_note)] == [MES]     # voicemail off: the one verdict, a machine


def test_no_verdict_by_the_analysis_time_after_talk_is_decided_by_what_follows():
    """"Hello?" (1.1 s) "Hello?" (1.1 s) …: each call too short for the greeting rule, each pause too short for a
    person's wait, so no verdict by total_analysis_time. With talk heard, the verdict is a provisional machine: the
    person's wait then makes it human, a greeting's next long sentence confirms the machine."""
    p = AmdParams()
    calls = silence(300) + (words([300, 300], gap_ms=90) + silence(1100)) * 4
    assert len(calls) // 16 > p.total_analysis_time
    person = calls + silence(p.answer_wait_ms + 500)
    assert [a for a, _ in run(person, message_end=True)] == [MS, H]
    assert [a for a, _ in run(person, AmdParams(toolong_min_talk_ms=0), message_end=True)] == [UNK]
    assert [a for a, _ in run(person)] == [H]                                       # voicemail off: one verdict
    greeting = calls + words([260] * 14, gap_ms=90) + silence(p.message_end_silence + 200)
    assert [a for a, _ in run(greeting, message_end=True)] == [MS, MES]


def test_provisional_verdicts_off_gives_app_amd_timing():
    p = AmdParams(answer_max_ms=0)
    assert [a for a, _ in run(ANSWER + silence(3000), p)] == [MS]


def test_initial_silence_unknown_for_us_machine_for_app_amd():
    assert run(silence(3000)) == [(UNK, 2500)]
    assert run(silence(3000), AmdParams.app_amd()) == [(MS, 2500)]


def uk_ringback(ms: int, amp: float = 3000.0) -> bytes:
    """UK ring-back: 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off (two tones that beat: not pure)."""
    t = np.arange(8 * ms) / 8000
    on = (t * 1000 % 3000 < 400) | ((t * 1000 % 3000 >= 600) & (t * 1000 % 3000 < 1000))
    return (amp / 2 * (np.sin(2 * np.pi * 400 * t) + np.sin(2 * np.pi * 450 * t)) * on).astype("<i2").tobytes()


def test_a_ring_back_tail_before_the_answer_is_not_talk():
    """Some carriers pass the end of the ring-back cadence after the answer. It is not the callee: a person's
    "Hello?" after it is still a short answer followed by a wait."""
    line = uk_ringback(1000, amp=8000) + silence(400) + words([250]) + silence(3000)
    hiss = np.frombuffer(noise(len(line) // 16, amp=400), "<i2")     # white noise: the ring's frames are not pure
    pcm = np.clip(np.frombuffer(line, "<i2") + hiss, -32768, 32767).astype("<i2").tobytes()
    d = AmdDetector(AmdParams(), 8000)
    out = d.feed(telephone(pcm))
    assert [x.answered_by for x in out] == [H]
    assert d.heard_ms <= 400                              # the word, not the ring


def test_noise_only_line_is_not_speech_with_webrtc_vad():
    assert run(noise(3000, amp=200))[0][0] is UNK


def test_total_analysis_time_gives_unknown():
    p = AmdParams(greeting=10000, after_greeting_silence=5000, max_utterance=0)
    assert run(silence(300) + words([200] * 30, gap_ms=200), p)[-1][0] is UNK


def test_chunking_and_rate_do_not_change_the_verdict():
    pcm = silence(300) + words([260] * 14, gap_ms=90) + silence(2000)
    whole = run(pcm)
    assert run(pcm, chunk=37 * 2) == whole            # odd-sized chunks, as a jittery carrier delivers them
    wide = np.repeat(np.frombuffer(pcm, "<i2"), 2).astype("<i2").tobytes()   # crude 16 kHz version
    assert [a for a, _ in run(wide, sr=16000)] == [a for a, _ in whole]


def test_feed_silence_advances_the_clock():
    d = AmdDetector()
    d.feed(silence(400) + words([300]))
    out = d.feed_silence(1500)
    assert out and out[0].answered_by is H


def test_rejects_other_rates():
    with pytest.raises(ValueError):
        AmdDetector(sample_rate=44100)


def test_params_overrides_validate():
    assert AmdParams().with_overrides({"greeting": "2000"}).greeting == 2000
    with pytest.raises(ValueError, match="unknown AMD parameter"):
        AmdParams().with_overrides({"greting": 2000})


# --- real (TTS) speech ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tts():
    if espeak("test") is None:
        pytest.skip("espeak-ng and sox are needed for the TTS clips")
    return espeak


def test_tts_human_hello(tts):
    pcm = silence(500) + tts("Hello?") + silence(3000)
    assert run(telephone(pcm))[0][0] is H


def test_tts_human_with_second_utterance(tts):
    pcm = silence(400) + tts("Hello, yes?", voice="en-gb") + silence(1500) + tts("Hello? Who is this?") + silence(2000)
    assert run(telephone(pcm))[0][0] is H


def test_tts_machine_greeting_with_beep(tts):
    greeting = tts("Hi, you have reached the Miller family. We can't come to the phone right now. "
                   "Please leave your name and number after the tone and we will call you back.", speed=165)
    pcm = silence(400) + greeting + silence(400) + tone(850, 600) + silence(1500)
    out = run(telephone(pcm), message_end=True)
    assert out[0][0] is MS and out[0][1] <= 3000
    assert out[-1][0] is MEB and out[-1][1] >= (len(pcm) - len(silence(1500))) // 16 - 20


def test_tts_machine_greeting_at_16khz(tts):
    """A short greeting (under 4.5 s of talk) is a machine by its beep: without one it would pass for a person's
    long answer followed by a wait (docs/amd.md, known limits)."""
    greeting = tts("You have reached the voicemail of Jordan Lee. Please leave a message.", sr=16000)
    pcm = silence(300, 16000) + greeting + silence(500, 16000) + tone(1000, 300, 16000) + silence(800, 16000)
    assert [a for a, _ in run(pcm, sr=16000, message_end=True)] == [MS, MEB]


# --- early media (SIP 183, before the answer) ----------------------------------------------------------------------
def test_early_media_ringback_and_silence_reach_no_verdict():
    d = AmdDetector(early_media=True)
    ringback = (tone(425, 1000, amp=4000) + silence(4000)) * 2      # European ringback cadence
    assert d.feed(telephone(ringback + words([300]) + silence(3000))) == []
    assert not d.machine_by_speech


def test_early_media_greeting_is_machine_by_speech():
    d = AmdDetector(early_media=True)
    out = d.feed(tone(425, 1000, amp=4000) + silence(2000) + words([260] * 10, gap_ms=90))
    assert [x.answered_by for x in out] == [MS] and d.machine_by_speech
