"""Detector parameters: Asterisk app_amd's nine, Twilio's end-of-message timers, and our additions.

Why two presets: `AmdParams.app_amd()` is the anchor users know (Asterisk amd.conf defaults, energy silence
detector, no tone detectors, initial silence → machine). `AmdParams()` is what the gateway runs by default: the same
state machine with thresholds re-tuned on the dev split of bench/amd (see docs/amd.md and BENCHMARKS.md), a VAD
chosen by measurement, and the beep / fax detectors switched on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class AmdParams:
    # --- greeting analysis (app_amd names and meaning; all durations in ms) ------------------------------------
    #: silence before any speech after which the answer is classified (`initial_silence_result`).
    initial_silence: int = 2500
    #: total speech (voiced ms since answer) in the greeting at or above which the answer is a machine. Below
    #: app_amd's 1500: the verdict is provisional on little talk, so this sets how early machine_start goes out.
    greeting: int = 1300
    #: silence after the greeting at or above which the answer is a human (they said "hello?" and wait).
    after_greeting_silence: int = 1300
    #: give up (unknown) when no verdict after this long.
    total_analysis_time: int = 6000
    #: no verdict by total_analysis_time after this much talk (but less than answer_max_ms): a provisional machine
    #: verdict (a person's wait then turns it into human, more talk confirms it) instead of unknown; 0 = unknown.
    toolong_min_talk_ms: int = 1000
    #: consecutive voiced ms that make a word.
    min_word_length: int = 100
    #: silence that separates two words.
    between_words_silence: int = 50
    #: more words than this → machine (0 disables the rule; Asterisk's 2 calls "Hi, this is Dana" a machine).
    maximum_number_of_words: int = 0
    #: one word longer than this → machine.
    maximum_word_length: int = 5000
    #: a gap shorter than this between voiced frames counts as speech time (greeting, utterance): a quieter
    #: syllable or a stop consonant is part of the speech, not a pause; 0 = count voiced frames only (app_amd).
    speech_bridge_ms: int = 200
    #: one utterance (speech whose pauses are all shorter than utterance_gap) this long → machine; 0 = off.
    #: People answer in short bursts ("Hello? … Hello? Who's calling?"); a greeting is read in long sentences.
    max_utterance: int = 1800
    #: with this > 0, the greeting rule needs speech that went on after a pause this long (a greeting is several
    #: sentences; a business answer, "Acme support, Tom speaking, how can I help?", is one phrase, then a wait).
    greeting_pause_ms: int = 0
    #: an utterance shorter than this, followed by a pause of utterance_gap, does not count toward the greeting:
    #: "Hello? … Hello? Who's calling?" is a person asking twice; 0 = off.
    short_utterance_ms: int = 800
    #: a pause at least this long ends an utterance.
    utterance_gap: int = 400
    #: a machine verdict reached on less speech than this is provisional (0 = every verdict is final): a person's
    #: answer can run 2.5–4.5 s ("Good morning, Acme support, Tom speaking, how can I help?") and looks like a
    #: greeting until it stops — then the person waits for a reply, while a greeting goes on or beeps.
    answer_max_ms: int = 4500
    #: silence after a provisional machine verdict (no beep) that shows a person waiting for a reply → human.
    answer_wait_ms: int = 2400
    #: a short call after a wait this long, once the talk has outlasted an answer ("Acme support, Tom speaking, how
    #: can I help?" … "Hello?"), is a person asking again: the wait after it (answer_wait_ms, no beep) → human; 0 = off.
    reask_wait_ms: int = 1500
    #: talk in that call at most this long (a greeting's next sentence is longer).
    reask_max_ms: int = 1600
    #: "Hi! … <the rest>": a first call shorter than short_utterance_ms, a pause of at least hi_pause_ms, then a
    #: phrase (pauses < talk_bridge_ms) of hi_rest_ms or more is a greeting, however short the talk; 0 = off.
    hi_pause_ms: int = 700
    hi_rest_ms: int = 3000
    #: a voiced run counts as talk only once it lasts this long (background talk or music lets single frames through).
    talk_min_run_ms: int = 80
    #: while a machine verdict is provisional, a steady pure tone of a beep's length at least this loud relative to
    #: the callee's speech confirms the machine (a person waiting for a reply plays no tone); 0 = off.
    confirm_tone_rel_level: float = 1.0
    #: after a human verdict reached on a wait, a beep within this long of it (and before message_end_silence of
    #: silence since the last talk) turns it into machine_end_beep: a recording whose pause before its beep (or
    #: before the rest of its greeting) outlasted the person's wait; 0 = off.
    beep_watch_ms: int = 5000
    #: pauses shorter than this count as talk time (between a greeting's sentences); longer ones do not.
    talk_bridge_ms: int = 1000
    #: mean |sample| (PCM16) under which a frame is silence, for the energy VAD and the tone gate.
    silence_threshold: int = 256
    #: verdict when the callee stays silent for `initial_silence`: Twilio says unknown, app_amd says machine.
    initial_silence_result: str = "unknown"

    # --- voice activity -----------------------------------------------------------------------------------------
    #: "webrtc" (webrtcvad-wheels GMM, robust to noise) or "energy" (app_amd's mean-|sample| threshold).
    vad: str = "webrtc"
    #: webrtcvad aggressiveness 0..3.
    vad_mode: int = 3
    #: a frame is voice only if it is this many times louder (mean |sample|) than the tracked noise floor, so
    #: background talk, music or road noise under the callee is not their speech; 0 = off.
    vad_floor_ratio: float = 2.5
    #: a frame is voice only if at least this fraction of the loudest voice heard so far (fading ~1 dB/s): the
    #: callee is the loudest talker on their line, background talk is 10 dB or more below them; 0 = off.
    vad_rel_level: float = 0.2

    # --- tones ----------------------------------------------------------------------------------------------------
    #: detect an answering-machine beep (sustained narrow-band tone in beep_min_hz..beep_max_hz).
    beep: bool = True
    beep_min_hz: int = 400
    beep_max_hz: int = 2000
    #: a tone must hold this long (steady pitch) to be a beep.
    beep_min_ms: int = 80
    #: after the tone stops, this long of quiet confirms a beep (a vowel or a note is followed by more sound).
    beep_confirm_ms: int = 200
    #: mean purity over the tone's frames for a beep (a voice's strongest harmonic, even through the phone band's
    #: 300 Hz high-pass, keeps more of its energy elsewhere than a beep in 10 dB of noise does).
    beep_purity: float = 0.9
    #: a beep's pitch stays within this many Hz over its length (a voice's harmonics and sung notes glide).
    beep_max_drift_hz: float = 12.0
    #: the same for a tone shorter than 120 ms, whose few frames show a voice's glide as only a few Hz.
    beep_short_drift_hz: float = 2.0
    #: a beep holds its loudness: (max − min) / mean of its inner frames' level at most this. A voice's harmonic
    #: near 400–450 Hz (the phone band's high-pass leaves it the strongest peak) swells and fades with its syllable;
    #: on dev, beeps in 10–40 dB of noise spread ≤ 0.18, the vowels and notes that passed the other checks 0.06–1.9.
    beep_max_level_spread: float = 0.25
    #: the sound just before a beep is at most this fraction of the beep's level (it starts out of quiet).
    beep_onset_ratio: float = 0.5
    #: the sound after a beep must stay under this fraction of its level (quiet follows it).
    beep_offset_ratio: float = 0.4
    #: speech heard before a tone can count as a beep (a melody before any greeting is not the beep).
    beep_min_voice_ms: int = 300
    #: a beep is at least this fraction of the level of the speech heard (background music is quieter).
    beep_min_rel_level: float = 0.4
    #: fraction of the frame's energy in the peak (1.0 = pure tone) for a frame to count as tonal.
    tone_purity: float = 0.80
    #: detect fax: CNG (1100 Hz, 0.5 s bursts) and CED (2100 Hz answer tone).
    fax: bool = True
    fax_cng_min_ms: int = 400
    fax_ced_min_ms: int = 700
    #: CNG counts as fax only while less speech than this was heard (an 1100 Hz beep after a greeting is a beep).
    fax_cng_max_voice_ms: int = 700
    #: detect special information tones (ITU-T E.180: three rising tones before a "not in service" announcement)
    #: → answered_by `sit`: no voicemail drop.
    sit: bool = True

    # --- end of message (Twilio DetectMessageEnd) --------------------------------------------------------------
    #: silence after machine speech that ends the greeting (machine_end_silence); Twilio's SpeechEndThreshold.
    message_end_silence: int = 3000
    #: no beep / silence by then (from answer) → machine_end_other; Twilio's MachineDetectionTimeout.
    message_end_timeout: int = 30000

    @classmethod
    def app_amd(cls) -> AmdParams:
        """Asterisk app_amd's documented defaults, run through the same state machine (the benchmark anchor)."""
        return cls(initial_silence=2500, greeting=1500, after_greeting_silence=800, total_analysis_time=5000,
                   min_word_length=100, between_words_silence=50, maximum_number_of_words=2,
                   maximum_word_length=5000, silence_threshold=256, initial_silence_result="machine",
                   vad="energy", vad_floor_ratio=0.0, vad_rel_level=0.0, max_utterance=0, answer_max_ms=0,
                   reask_wait_ms=0, hi_rest_ms=0, talk_min_run_ms=20, confirm_tone_rel_level=0.0, toolong_min_talk_ms=0,
                   beep_watch_ms=0,
                   beep=False, fax=False,
                   sit=False)

    def with_overrides(self, overrides: dict[str, Any] | None) -> AmdParams:
        """Apply agent settings (`amd.params`); unknown keys raise ValueError with the list of valid ones."""
        if not overrides:
            return self
        names = {f.name: f for f in fields(self)}
        bad = sorted(set(overrides) - set(names))
        if bad:
            raise ValueError(f"unknown AMD parameter(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
        typed = {}
        for k, v in overrides.items():
            kind = type(getattr(self, k))
            if kind is bool and not isinstance(v, bool):
                raise ValueError(f"AMD parameter {k} must be true or false")
            try:
                typed[k] = kind(v)
            except (TypeError, ValueError):
                what = {int: "an integer", float: "a number"}.get(kind, "a string")
                raise ValueError(f"AMD parameter {k} must be {what}") from None
        p = replace(self, **typed)
        p.validate()
        return p

    def validate(self) -> None:
        if self.vad not in ("webrtc", "energy"):
            raise ValueError("vad must be 'webrtc' or 'energy'")
        if self.initial_silence_result not in ("unknown", "machine", "human"):
            raise ValueError("initial_silence_result must be unknown, machine or human")
        if not 0 <= self.vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")
        if not 0 < self.beep_min_hz < self.beep_max_hz <= 3400:
            raise ValueError("beep_min_hz < beep_max_hz <= 3400 required")
        if self.answer_max_ms and not 0 < self.answer_wait_ms < self.message_end_silence:
            raise ValueError("answer_wait_ms must be > 0 and shorter than message_end_silence")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
