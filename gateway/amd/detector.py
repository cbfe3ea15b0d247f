"""Streaming answering-machine detector: PCM16 chunks in, Twilio-vocabulary verdicts out.

It is a plain object with no event loop, no call and no clock of its own: time is the audio fed to it (20 ms per
frame), so the same code runs on a live call (through `AmdController`), on SIP early media before the call is
attached, and in the benchmark on files.

Phase 1, greeting analysis, is Asterisk app_amd's state machine (initial silence, greeting length, after-greeting
silence, words, total analysis time; the parameters are in `AmdParams`) with these additions, each driven by the
dev split of bench/amd (docs/amd.md): a voice-activity detector other than app_amd's energy threshold, gated by an
adaptive noise floor so background talk or road noise is not the callee's speech; an *utterance* rule (one
stretch of speech too long for a person's answer → machine) next to the total-speech rule, so "Hello? … Hello?
Who's calling?" is a person; and pure tones are not speech — a beep, fax tone or SIT is recognised as such.
Tones: a beep must be a steady pure tone (pitch drift of a few Hz) that starts out of quiet, stands alone (no
other tone right before or after: melodies, SIT), is about as loud as the speech heard, and is followed by quiet;
three rising SIT segments (ITU-T E.180) give their own outcome, `sit`, never a voicemail drop.
Phase 2, only with `detect_message_end`, follows a machine greeting to its end as Twilio's DetectMessageEnd does:
a beep (machine_end_beep, decided once the tone has stopped and `beep_confirm_ms` of quiet followed it, so the
message starts after it), silence long enough that a beep is no longer likely (machine_end_silence), or a timeout
(machine_end_other).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import AnsweredBy
from .params import AmdParams
from .tones import CED_HZ, CNG_HZ, FREQ_TOLERANCE_HZ, Tone, ToneTracker, ringback_fraction, tone_score
from .vad import NoiseFloor, SpeechVad, is_dropout, make_vad

FRAME_MS = 20
#: SIT segment bands (Hz): ITU-T E.180 950/1400/1800 ± 50 Hz, widened to hold the North-American variants
#: (913.8 or 985.2, 1370.6 or 1428.5, 1776.7 Hz) and our frequency estimate's error
SIT_BANDS = ((880.0, 1020.0), (1330.0, 1470.0), (1730.0, 1850.0))
SIT_SEGMENT_MS = (180, 480)      # E.180: 330 ± 70 ms; NANP 274 or 380 ms (20 ms frames blur the edges)
#: per-frame fade of the callee's peak level (≈ 1 dB/s)
PEAK_FADE = 10 ** (-1 / 20 / 50)
#: a beep may be broken by a noise burst this long and still be one beep
BEEP_BREAK_MS = 80
#: tones shorter than this (at most four inner frames to measure drift on) must hold their pitch to
#: beep_short_drift_hz: a voice's harmonic at the end of a word glides only a few Hz in 80 ms, a beep not at all
SHORT_BEEP_MS = 120
#: the refined frequency of a steady tone is a few Hz accurate: band edges are widened by this much
BEEP_BAND_SLACK_HZ = 10.0
#: a call ("Hi!", "Hello?") holds at least this much talk: shorter is a click or a burst of noise
MIN_CALL_MS = 160
SIT_MAX_GAP_MS = 120             # E.180: up to 30 ms between segments; codec noise may cut a frame off each side
#: before the callee's first word, a frame with this share of its energy in 350–550 Hz may be ring-back (tones.py)
RINGBACK_FRACTION = 0.85
#: ring-back is looked for from this mean |sample| on (quieter is silence anyway)
RINGBACK_MIN_LEVEL = 32
#: a ring-back run holds its level within this fraction of its first frame (a vowel swells, a tone does not)
RINGBACK_LEVEL_SPREAD = 0.2
#: this many such frames in a row are ring-back: what they counted is taken back. Fewer than min_word_length, so
#: no word has started by then.
RINGBACK_CONFIRM_FRAMES = 4
#: a pure stretch up to this long that is no beep, heard as speech by the VAD, counts as talk once it ends
TONE_VOICE_MAX_MS = 120
#: a tone shorter than this (a pure-looking frame or two of background sound) does not interrupt a pending beep
BLIP_MS = 40
#: at most this much of a tone's partial edge frames counts toward a beep's length (tones.Tone.edge_ms)
EDGE_MAX_MS = 40
#: a beep's rise and fall (~5 ms each) are quieter than the beep, so its edge frames read shorter than they are
EDGE_RAMP_MS = 10
#: a lost packet's hole (vad.is_dropout) keeps the previous frame's voice decision for at most this many frames:
#: loss comes in bursts of 1–3 packets, a longer hole is a real silence (DTX, a stalled carrier)
DROPOUT_HOLD_FRAMES = 3


@dataclass(frozen=True, slots=True)
class AmdDecision:
    answered_by: AnsweredBy
    at_ms: int          # audio time since the detector started (the decision time users see as amd_duration)
    cause: str          # app_amd-style cause, e.g. "LONGGREETING-1800-1800", "BEEP-1000Hz-400ms"
    final: bool         # False only for machine_start when the end of the message is still awaited


class AmdDetector:
    """Feed PCM16 mono at `sample_rate` (8 or 16 kHz); `feed()` returns the verdicts reached in that chunk."""

    def __init__(self, params: AmdParams | None = None, sample_rate: int = 8000, *,
                 detect_message_end: bool = False, start_in_message_end: bool = False,
                 early_media: bool = False, vad: SpeechVad | None = None) -> None:
        if sample_rate not in (8000, 16000):
            raise ValueError("AMD runs on 8 or 16 kHz PCM16")
        self.params = p = params or AmdParams()
        p.validate()
        self.sample_rate = sample_rate
        self.detect_message_end = detect_message_end or start_in_message_end
        #: before the answer (SIP 183) only a greeting can be judged: ringback is a tone, not a beep, and silence
        #: or a short phrase means nothing yet. Only speech verdicts (machine_start) are reached in this mode.
        self.early_media = early_media
        self._frame_bytes = sample_rate // 1000 * FRAME_MS * 2
        self._buf = bytearray()
        #: `vad`: any object with `is_speech(frame, mean_abs)`; bench/amd passes other VADs to compare them
        self._vad = vad or make_vad(p.vad, sample_rate, threshold=p.silence_threshold, mode=p.vad_mode)
        self._floor = NoiseFloor() if p.vad_floor_ratio > 0 else None
        self._tones = ToneTracker(FRAME_MS)
        self._tone_gate = max(32, p.silence_threshold // 2)
        self._pending_beep: Tone | None = None
        #: a beep-like tone followed at once by another tone: the first note of a multi-tone beep, or of a melody
        self._chain: Tone | None = None
        self._pend_quiet_ms = self._pend_loud_ms = 0
        self._last_tone: Tone | None = None
        self._last_voice = False      # the previous frame's voice decision (held across a lost packet's hole)
        self._holes = 0               # consecutive dropout frames so far
        self._ring_run = 0            # ring-back-like frames in a row before the first word
        self._ring_level = 0.0        # the level of the run's first frame
        self._ring_snap: tuple[int, int, int, int, int, float, float] | None = None   # state before the run
        self._tone_voiced = 0         # frames of the current tone the VAD called speech (a vowel, if no beep)
        self._floor_now = 0.0         # the noise floor (the dropouts of a loss burst left out)
        self._peak = 0.0              # loudest voiced frame so far, fading
        self._speech_level = 0.0      # running mean |sample| of voiced frames: how loud this callee's audio is
        self.time_ms = 0
        self.frames = 0
        # app_amd state
        self.silence_ms = 0
        self.voice_ms = 0
        self.consecutive_voice_ms = 0
        self.heard_ms = 0             # all speech heard (the greeting count may discount a short "Hello?")
        #: how long the callee has talked: voiced frames plus the pauses shorter than talk_bridge_ms, the length a
        #: listener would give their phrase (the VAD misses quiet syllables, so heard_ms falls short)
        self.talk_ms = 0
        self.resumed = False          # speech resumed after a pause of greeting_pause_ms
        self.utterance_ms = 0         # voiced ms since the last pause of utterance_gap or more
        self.words = 0
        self.in_word = True          # app_amd starts "in a word": the first word counts only after some silence
        self.in_initial_silence = True
        self.in_greeting = False
        #: a machine verdict on little speech waits for more speech (confirmed) or a person's wait (→ human)
        self.provisional = False
        self._unconfirmed: str | None = None   # without detect_message_end: the cause of a verdict not yet given
        self._late_ms = -1            # talk in the utterance that began after a wait (-1: none going on)
        #: the phrase going on (talk since the last pause of talk_bridge_ms or more) and the pause before it
        self._phrase_ms = self._phrase_wait = 0
        #: the answer's first utterance (talk before its first pause of hi_pause_ms), and the phrase going on after it
        self._first_ms = self._rest_ms = 0
        self._first_done = False
        self._run_ms = self._run_start = self._talk_end = 0   # the voiced run going on; the end of counted talk
        # outcome
        self.phase = "message_end" if start_in_message_end else "greeting"
        self.decisions: list[AmdDecision] = []

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def first(self) -> AmdDecision | None:
        return self.decisions[0] if self.decisions else None

    @property
    def final(self) -> AmdDecision | None:
        return self.decisions[-1] if self.decisions and self.decisions[-1].final else None

    # -- input -------------------------------------------------------------------------------------------------
    def feed(self, pcm: bytes) -> list[AmdDecision]:
        """Any length of PCM16; cheap when done (returns at once)."""
        if self.phase == "done":
            return []
        buf = self._buf
        buf.extend(pcm)
        fb = self._frame_bytes
        out: list[AmdDecision] = []
        n = len(buf) // fb
        for i in range(n):
            d = self._frame(bytes(buf[i * fb:(i + 1) * fb]))
            if d is not None:
                out.append(d)
            if self.phase == "done":
                break
        del buf[:n * fb]
        return out

    def feed_silence(self, ms: int) -> list[AmdDecision]:
        """Account for audio that never arrived (packet loss, DTX, a stalled carrier) as silence."""
        frames = max(0, ms // FRAME_MS)
        return self.feed(b"\x00" * self._frame_bytes * frames)

    # -- per frame ---------------------------------------------------------------------------------------------
    def _frame(self, frame: bytes) -> AmdDecision | None:
        p = self.params
        self.frames += 1
        self.time_ms += FRAME_MS
        now = self.time_ms
        a = np.frombuffer(frame, "<i2")
        mag = np.abs(a.astype(np.int32))
        level = int(mag.sum()) // len(a)          # app_amd's measure: mean |sample|
        # a lost packet on a noisy line: digital silence where the background never is that quiet. It says nothing
        # about the callee, so it neither ends a word nor lowers the noise floor (which would let babble through).
        hole = self._floor is not None and is_dropout(level, mag, self._floor_now)
        self._holes = self._holes + 1 if hole else 0

        tonal = False
        if p.beep or p.fax or p.sit:
            freq = purity = 0.0
            if level >= self._tone_gate:
                freq, purity = tone_score(a.astype(np.float32), self.sample_rate)
                tonal = purity >= p.tone_purity
            ended = self._tones.update(now, freq, tonal, level, purity)
            pend = self._pending_beep
            if (pend is not None and self._tones.active and abs(self._tones.freq - pend.freq_hz) > FREQ_TOLERANCE_HZ
                    and self._tones.last_ms - self._tones.start_ms >= BLIP_MS):
                # another tone right after it: a melody, SIT, or the next note of a multi-tone beep (_tone_verdict)
                self._pending_beep, self._chain = None, pend
            d = self._tone_verdict(now, ended)
            if ended is not None and self.provisional and self._confirming_tone(ended):
                self.provisional = False     # a recording: no wait makes it human (a beep may still follow)
            if d is not None:
                return d
            voiced = 0
            if ended is not None:
                voiced, self._tone_voiced = self._tone_voiced, 0
            if voiced and ended is not None and ended.duration_ms <= TONE_VOICE_MAX_MS and not self._candidate(ended):
                # a short pure stretch the VAD heard as speech, that is no beep: a vowel whose one harmonic
                # dominates (the phone band's 300 Hz high-pass removes the fundamental). Its frames were talk.
                for _ in range(voiced):
                    d = self._step(now, True)
                    if d is not None or self.phase == "done":
                        return d
            if tonal or self._tones.active:
                # a tone is neither speech nor silence (yet): it must not make a word or a human
                if self._vad.is_speech(frame, level) and self._loud_enough(level, peak=False):
                    self._tone_voiced += 1
                return None
        if self._ringback(a, level):
            return None
        if hole and self._holes <= DROPOUT_HOLD_FRAMES:
            voice = self._last_voice
        else:
            if self._floor is not None:
                # a hole longer than a loss burst is real silence (DTX, a line gone quiet): it is the floor now
                self._floor_now = self._floor.update(level)
            voice = self._vad.is_speech(frame, level) and self._loud_enough(level, peak=True)
        self._last_voice = voice
        self._peak *= PEAK_FADE
        if voice:
            self._speech_level += (level - self._speech_level) * (0.05 if self._speech_level else 1.0)
        pend = self._pending_beep
        if pend is not None:
            # a beep is followed by the recording's quiet: sound about as loud as the tone for longer than a noise
            # burst (more speech, the next note of a melody) shows it was not the beep. The first frame after may
            # still hold the tone's last milliseconds.
            if now - pend.end_ms > FRAME_MS and level > pend.level * p.beep_offset_ratio:
                self._pend_loud_ms += FRAME_MS
                if self._pend_loud_ms > BEEP_BREAK_MS:
                    self._pending_beep = None
            else:
                self._pend_quiet_ms += FRAME_MS
                if self._pend_quiet_ms >= p.beep_confirm_ms:
                    return self._beep(pend)
            if self._pending_beep is not None:
                return None
        return self._step(now, voice)

    def _step(self, now: int, voice: bool) -> AmdDecision | None:
        """One frame of talk or silence, to the phase going on."""
        if self.phase == "greeting":
            return self._greeting(now, voice)
        if self.phase == "beep_watch":
            return self._beep_watch(now, voice)
        return self._message_end(now, voice)

    def _tone_verdict(self, now: int, ended: Tone | None) -> AmdDecision | None:
        p = self.params
        if self.early_media:
            return None
        if ended is not None:
            last, self._last_tone = self._last_tone, ended
            if p.sit and last is not None and self._is_sit(last, ended):
                return self._decide(AnsweredBy.SIT, f"SIT-{last.freq_hz:.0f}-{ended.freq_hz:.0f}Hz")
        if p.fax and self.phase == "greeting" and (t := self._tones.current(now)) is not None:
            if abs(t.freq_hz - CED_HZ) <= FREQ_TOLERANCE_HZ and t.duration_ms >= p.fax_ced_min_ms:
                return self._decide(AnsweredBy.FAX, f"CED-{t.freq_hz:.0f}Hz-{t.duration_ms}ms")
            if (abs(t.freq_hz - CNG_HZ) <= FREQ_TOLERANCE_HZ and t.duration_ms >= p.fax_cng_min_ms
                    and self.heard_ms < p.fax_cng_max_voice_ms):
                return self._decide(AnsweredBy.FAX, f"CNG-{t.freq_hz:.0f}Hz-{t.duration_ms}ms")
        if (p.beep and ended is not None and self._in_beep_band(ended.freq_hz)
                and not self._blip_after_beep(ended)):
            pend = self._pending_beep
            if pend is not None and abs(ended.freq_hz - pend.freq_hz) <= FREQ_TOLERANCE_HZ:
                # one beep, broken up by line noise
                ended = Tone(pend.freq_hz, pend.start_ms, ended.end_ms, max(pend.drift_hz, ended.drift_hz),
                             (pend.level + ended.level) / 2, pend.pre_level, (pend.purity + ended.purity) / 2,
                             max(pend.level_spread, ended.level_spread))
            self._pending_beep = None
            chain, self._chain = self._chain, None
            if chain is not None and 0 <= ended.start_ms - chain.end_ms <= BEEP_BREAK_MS and self._note_like(ended):
                # the next note of a multi-tone beep ("boop-beep", three rising notes): one beep, from the quiet
                # before its first note to the end of its last; each note is a steady pure tone of its own
                ended = Tone(ended.freq_hz, chain.start_ms, ended.end_ms, max(chain.drift_hz, ended.drift_hz),
                             (chain.level + ended.level) / 2, chain.pre_level, min(chain.purity, ended.purity),
                             max(chain.level_spread, ended.level_spread))
            if self._beep_like(ended):
                if self._tones.active:
                    self._chain = ended          # a tone straight after: a melody or SIT, or the next note of a beep
                elif p.beep_confirm_ms <= 0:
                    return self._beep(ended)
                else:
                    self._pending_beep = ended
                    self._pend_quiet_ms = self._pend_loud_ms = 0
        if (p.beep and (t := self._tones.current(now)) is not None and t.duration_ms >= 3000
                and self._in_beep_band(t.freq_hz) and self._beep_like(t)):
            return self._decide(AnsweredBy.MACHINE_END_BEEP, f"BEEP-{t.freq_hz:.0f}Hz-{t.duration_ms}ms+")
        return None

    def _ringback(self, a: np.ndarray, level: int) -> bool:
        """Before the callee's first word: is this frame part of a ring-back tail (then it is neither talk nor
        silence)? A ring-back is steady energy in 350–550 Hz; US and UK cadences are two tones that beat, so they are
        not pure enough to be followed as a tone, and the VAD hears them as speech. A run's first frames count as
        usual; once RINGBACK_CONFIRM_FRAMES steady in-band frames follow each other, what they counted is taken
        back and the run is skipped until it ends."""
        if not (self.in_initial_silence and self.phase == "greeting") or level < RINGBACK_MIN_LEVEL:
            self._ring_run = 0
            return False
        steady = not self._ring_run or abs(level - self._ring_level) <= RINGBACK_LEVEL_SPREAD * self._ring_level
        if not (steady and ringback_fraction(a.astype(np.float32), self.sample_rate) >= RINGBACK_FRACTION):
            self._ring_run = 0
            return False
        if not self._ring_run:
            self._ring_level = float(level)
            self._ring_snap = (self.voice_ms, self.heard_ms, self.talk_ms, self.utterance_ms,
                               self.consecutive_voice_ms, self._peak, self._speech_level)
        self._ring_run += 1
        if self._ring_run < RINGBACK_CONFIRM_FRAMES:
            return False
        if self._ring_run == RINGBACK_CONFIRM_FRAMES and self._ring_snap is not None:
            (self.voice_ms, self.heard_ms, self.talk_ms, self.utterance_ms, self.consecutive_voice_ms, self._peak,
             self._speech_level) = self._ring_snap
            self._last_voice = False
        return True

    def _loud_enough(self, level: int, *, peak: bool) -> bool:
        """The level gates on a frame the VAD calls speech: well above the noise floor, and (vad_rel_level) the
        callee is the loudest talker on the line: once heard, sound far below them (other people in the room, a TV,
        music) is background, not their speech. The peak fades ~1 dB/s so a quieter phrase counts; `peak`: this
        frame may raise it."""
        p = self.params
        if level < self._floor_now * p.vad_floor_ratio:
            return False
        if not p.vad_rel_level:
            return True
        if peak and level > self._peak:
            self._peak = float(level)
        return level >= self._peak * p.vad_rel_level

    def _candidate(self, t: Tone) -> bool:
        """The tone that just ended is being followed as a beep, or as the first note of one."""
        return any(x is not None and x.end_ms == t.end_ms for x in (self._pending_beep, self._chain))

    def _blip_after_beep(self, t: Tone) -> bool:
        """A tone of a frame or two at another pitch while a beep awaits its quiet: one pure-looking frame of
        background noise or talk, too short to be a note of a melody or of a multi-tone beep (those are at least
        beep_min_ms). It neither cancels the beep nor joins it."""
        pend = self._pending_beep
        return (pend is not None and t.duration_ms < BLIP_MS
                and abs(t.freq_hz - pend.freq_hz) > FREQ_TOLERANCE_HZ)

    def _in_beep_band(self, freq_hz: float) -> bool:
        """beep_min_hz..beep_max_hz, give or take the frequency estimate's error (a 2000 Hz beep reads 2000.2 Hz)."""
        p = self.params
        return p.beep_min_hz - BEEP_BAND_SLACK_HZ <= freq_hz <= p.beep_max_hz + BEEP_BAND_SLACK_HZ

    def _beep_like(self, t: Tone) -> bool:
        """A steady pure tone of steady loudness that starts out of quiet, after some speech, about as loud as that
        speech."""
        p = self.params
        return (self._note_like(t) and t.pre_level <= t.level * p.beep_onset_ratio
                and self.heard_ms >= p.beep_min_voice_ms
                and t.level >= self._speech_level * p.beep_min_rel_level)

    def _note_like(self, t: Tone) -> bool:
        """One note of a multi-tone beep: a beep's length, pitch steadiness, purity and level steadiness."""
        p = self.params
        drift = p.beep_short_drift_hz if t.duration_ms < SHORT_BEEP_MS else p.beep_max_drift_hz
        length = t.duration_ms + min(t.edge_ms, EDGE_MAX_MS) + EDGE_RAMP_MS
        return (length >= p.beep_min_ms and t.drift_hz <= drift and t.purity >= self._beep_purity(t)
                and t.level_spread <= p.beep_max_level_spread)

    def _beep_purity(self, t: Tone) -> float:
        """beep_purity, lowered by the noise under the tone: a pure tone over noise of power ratio r² (r: the level
        before the tone over the tone's) puts only 1 / (1 + r²) of the frame's energy in its peak. A beep that starts
        out of quiet still needs beep_purity; the onset check keeps r ≤ beep_onset_ratio."""
        r = t.pre_level / t.level if t.level else 0.0
        return self.params.beep_purity / (1.0 + r * r)

    @staticmethod
    def _is_sit(a: Tone, b: Tone) -> bool:
        """Two consecutive SIT segments (first→second or second→third), each of SIT length, hardly a gap."""
        def band(t: Tone) -> int:
            return next((i for i, (lo, hi) in enumerate(SIT_BANDS) if lo <= t.freq_hz <= hi), -1)
        ok_len = all(SIT_SEGMENT_MS[0] <= t.duration_ms <= SIT_SEGMENT_MS[1] for t in (a, b))
        ba, bb = band(a), band(b)
        return ok_len and ba >= 0 and bb == ba + 1 and b.start_ms - a.end_ms <= SIT_MAX_GAP_MS

    def _beep(self, tone: Tone) -> AmdDecision:
        self._pending_beep = None
        return self._decide(AnsweredBy.MACHINE_END_BEEP, f"BEEP-{tone.freq_hz:.0f}Hz-{tone.duration_ms}ms")

    def _greeting(self, now: int, voice: bool) -> AmdDecision | None:
        p = self.params
        if self.early_media and not voice:
            self.silence_ms += FRAME_MS
            if self.silence_ms >= p.after_greeting_silence:   # a pause ends an announcement: start afresh
                self._reset_greeting()
            return None
        if now >= p.total_analysis_time and not self.early_media:
            if p.toolong_min_talk_ms and p.toolong_min_talk_ms <= self.talk_ms < p.answer_max_ms:
                # calls and phrases with pauses too short for a person's wait, each too short for a greeting: a
                # provisional machine verdict, so what follows decides — a wait (a person) or more talk (a greeting)
                return self._machine(f"TOOLONG-{now}-{self.talk_ms}")
            return self._decide(AnsweredBy.UNKNOWN, f"TOOLONG-{now}")
        if not voice:
            self.silence_ms += FRAME_MS
            if self.silence_ms >= p.between_words_silence:
                self.in_word = False
                self.consecutive_voice_ms = 0
            if self.silence_ms >= p.utterance_gap and self.utterance_ms:
                if self.utterance_ms < p.short_utterance_ms:
                    # "Hello?" … then a wait: a person's call for an answer, not the first line of a greeting
                    self.voice_ms = max(0, self.voice_ms - self.utterance_ms)
                self.utterance_ms = 0
            if self.in_initial_silence and self.silence_ms >= p.initial_silence:
                verdict = {"unknown": AnsweredBy.UNKNOWN, "machine": AnsweredBy.MACHINE_START,
                           "human": AnsweredBy.HUMAN}[p.initial_silence_result]
                return self._decide(verdict, f"INITIALSILENCE-{self.silence_ms}-{p.initial_silence}")
            if self.in_greeting and self.silence_ms >= p.after_greeting_silence:
                return self._decide(AnsweredBy.HUMAN, f"HUMAN-{self.silence_ms}-{p.after_greeting_silence}")
            return None
        bridged = self.silence_ms if self.in_greeting and self.silence_ms < p.speech_bridge_ms else 0
        self._talk()
        if self.in_greeting and self.silence_ms >= p.greeting_pause_ms > 0:
            self.resumed = True            # speech went on after a sentence pause: more than one answer phrase
        self.silence_ms = 0
        self.consecutive_voice_ms += FRAME_MS
        self.voice_ms += FRAME_MS + bridged
        self.heard_ms += FRAME_MS + bridged
        self.utterance_ms += FRAME_MS + bridged
        if self.consecutive_voice_ms >= p.min_word_length and not self.in_word:
            self.words += 1
            self.in_word = True
        if self.consecutive_voice_ms >= p.maximum_word_length:
            return self._machine(f"MAXWORDLENGTH-{self.consecutive_voice_ms}")
        if p.maximum_number_of_words and self.words > p.maximum_number_of_words:
            return self._machine(f"MAXWORDS-{self.words}-{p.maximum_number_of_words}")
        if self.in_greeting and self.voice_ms >= p.greeting and (self.resumed or not p.greeting_pause_ms):
            return self._machine(f"LONGGREETING-{self.voice_ms}-{p.greeting}")
        if p.max_utterance and self.utterance_ms >= p.max_utterance:
            return self._machine(f"LONGUTTERANCE-{self.utterance_ms}-{p.max_utterance}")
        if self.consecutive_voice_ms >= p.min_word_length and not self.in_greeting:
            self.in_initial_silence = False
            self.in_greeting = True
        return None

    def _machine(self, cause: str) -> AmdDecision | None:
        """A machine by its speech. On less speech than a person's answer can hold, the verdict is provisional:
        with detect_message_end, machine_start goes out now (the engine stays held) and a person's wait turns it into
        human later; without, the one verdict waits until more speech confirms it or a wait refutes it."""
        p = self.params
        if p.answer_max_ms and not self.early_media and self.talk_ms < p.answer_max_ms and not self._hi_greeting():
            self.provisional = True
            if not self.detect_message_end:
                self._unconfirmed = cause
                self.phase = "message_end"
                return None
        return self._decide(AnsweredBy.MACHINE_START, cause)

    def _talk(self) -> None:
        """A voiced frame: count it, and the pause before it when that pause was short (inside the talk). A run of
        voiced frames counts only once it lasts `talk_min_run_ms`: the odd voiced frame of background talk or music
        is no syllable of the callee's, and counting it (with the pauses around it) would stretch a person's answer
        past `answer_max_ms` and keep their wait from ever starting; the pause before a run is then measured from
        the callee's last counted talk."""
        p = self.params
        if self.silence_ms:
            self._run_ms, self._run_start = 0, self.time_ms - FRAME_MS
        self._run_ms += FRAME_MS
        if self._run_ms < p.talk_min_run_ms:
            return
        if self._run_ms > max(p.talk_min_run_ms, FRAME_MS):
            add, gap = FRAME_MS, 0
        else:                                  # the run just became talk: all of it, and the pause before it
            add, gap = self._run_ms, self._run_start - self._talk_end
        self._talk_end = self.time_ms
        inside = gap if self.talk_ms and gap < p.talk_bridge_ms else 0
        if self._first_done:
            self._rest_ms = add if gap >= p.talk_bridge_ms else self._rest_ms + add + inside
        elif self.talk_ms and gap >= p.hi_pause_ms and self._first_ms >= MIN_CALL_MS:
            self._first_done, self._rest_ms = True, add
        else:       # the first call goes on (a click before it and a pause do not count: it starts afresh)
            self._first_ms = add if gap >= p.hi_pause_ms else self._first_ms + add + inside
        self.talk_ms += add + inside

    def _confirming_tone(self, t: Tone) -> bool:
        """A beep's kind of tone — beep length, no pitch glide, pure, out of quiet — at least
        `confirm_tone_rel_level` of the callee's speech level, heard while a machine verdict is provisional. A person
        waiting for a reply plays no tone; background music under them is quieter than their voice (its notes on dev
        reach ≤ 0.41 of it). Such a tone need not pass every check of a beep (a note of music may follow it, a lost
        packet may dent its level) to show a recording: it confirms the machine, and the message still waits for
        the end of the greeting (a beep verdict or message_end_silence; without detect_message_end the verdict held
        back goes out with that end, as machine_end_*)."""
        p = self.params
        length = t.duration_ms + min(t.edge_ms, EDGE_MAX_MS) + EDGE_RAMP_MS
        return (p.confirm_tone_rel_level > 0 and self._in_beep_band(t.freq_hz) and length >= p.beep_min_ms
                and t.drift_hz <= p.beep_short_drift_hz and t.purity >= p.beep_purity
                and t.pre_level <= t.level * p.beep_onset_ratio
                and t.level >= self._speech_level * p.confirm_tone_rel_level)

    def _hi_greeting(self) -> bool:
        """"Hi! … <a long sentence>": a short first call, a pause, then a phrase longer than a person says after
        their "Hello?" when nobody replied. A greeting's trick, not a person: the talk confirms the machine."""
        p = self.params
        return (p.hi_rest_ms > 0 and self._first_done and self._first_ms < p.short_utterance_ms
                and self._rest_ms >= p.hi_rest_ms)

    def _message_end(self, now: int, voice: bool) -> AmdDecision | None:
        p = self.params
        if now >= p.message_end_timeout:
            return self._decide(AnsweredBy.MACHINE_END_OTHER, f"TIMEOUT-{now}")
        if voice:
            if self.silence_ms >= p.talk_bridge_ms:
                self._late_ms = 0                        # speech again after a wait: "Hello?" or the next sentence
                self._phrase_ms, self._phrase_wait = 0, self.silence_ms
            before = self.talk_ms
            self._talk()
            if self._late_ms >= 0:
                self._late_ms += self.talk_ms - before
            self._phrase_ms += self.talk_ms - before
            self.silence_ms = 0
            self.voice_ms += FRAME_MS
            self.heard_ms += FRAME_MS
            late = self._late_ms if 0 <= self._late_ms < p.short_utterance_ms else 0
            if self.provisional and (self.talk_ms - late >= p.answer_max_ms or self._hi_greeting()):
                self.provisional = False                 # longer than an answer, or "Hi! … <rest>": a greeting
                if self._unconfirmed is not None:
                    return self._decide(AnsweredBy.MACHINE_START, f"{self._unconfirmed}+TALK-{self.talk_ms}")
            return None
        self.silence_ms += FRAME_MS
        if self.silence_ms >= p.utterance_gap and self._late_ms >= 0:
            if self.provisional and self._late_ms < p.short_utterance_ms:
                # a short call after the wait ("Hello?"): the person asking again, not more of a greeting
                self.talk_ms -= self._late_ms
            self._late_ms = -1
        if self.provisional and self.silence_ms >= p.answer_wait_ms:
            # a short phrase, then a wait with no beep: a person who asked and waits for the reply
            return self._decide(AnsweredBy.HUMAN, f"ANSWER-{self.talk_ms}-{self.silence_ms}")
        if self.silence_ms >= p.answer_wait_ms and self._reasked():
            # a long answer, a wait, a short call, a wait ("… how can I help?" … "Hello?" …): a person asking again
            return self._decide(AnsweredBy.HUMAN, f"REASK-{self._phrase_ms}-{self._phrase_wait}-{self.silence_ms}")
        if self.silence_ms >= p.message_end_silence:
            return self._decide(AnsweredBy.MACHINE_END_SILENCE, f"SILENCE-{self.silence_ms}")
        return None

    def _beep_watch(self, now: int, voice: bool) -> AmdDecision | None:
        """After a human verdict reached on a wait: a beep now shows a recording whose pause before its beep, or
        before the rest of its greeting ("Hi! … the rest"), outlasted the wait (issue 15's "pause before a short
        beep"); `_tone_verdict` gives machine_end_beep. A person waiting for a reply plays no beep. The watch lasts
        `beep_watch_ms` from the verdict, and ends earlier once the silence since the last talk reaches
        `message_end_silence` — as long as the end-of-message step waits for a beep."""
        p = self.params
        if voice:
            self._talk()
            self.silence_ms = 0
        else:
            self.silence_ms += FRAME_MS
        if now - self._talk_end >= p.message_end_silence or now - self.decisions[-1].at_ms >= p.beep_watch_ms:
            self.phase = "done"
        return None

    def _reasked(self) -> bool:
        """The last thing heard was a short call after a wait: a person's "Hello?" when nobody replied. A greeting
        does not stop for a wait and then say one short phrase and stop again without a beep."""
        p = self.params
        return (p.reask_wait_ms > 0 and self._phrase_wait >= p.reask_wait_ms
                and MIN_CALL_MS <= self._phrase_ms <= p.reask_max_ms)

    def _reset_greeting(self) -> None:
        self.voice_ms = self.consecutive_voice_ms = self.words = self.utterance_ms = 0
        self.resumed = False
        self.in_word, self.in_initial_silence, self.in_greeting = True, True, False

    @property
    def machine_by_speech(self) -> bool:
        """A machine verdict from the greeting itself (not from silence or a tone): valid across the answer."""
        d = self.first
        return d is not None and d.answered_by is AnsweredBy.MACHINE_START and \
            d.cause.startswith(("LONGGREETING", "LONGUTTERANCE", "MAXWORD"))

    def _decide(self, answered_by: AnsweredBy, cause: str) -> AmdDecision:
        interim = answered_by is AnsweredBy.MACHINE_START and self.detect_message_end
        d = AmdDecision(answered_by, self.time_ms, cause, final=not interim)
        self.decisions.append(d)
        watch = (answered_by is AnsweredBy.HUMAN and self.params.beep_watch_ms > 0 and self.params.beep
                 and not self.early_media and self.time_ms - self._talk_end < self.params.message_end_silence)
        self.phase = "message_end" if interim else "beep_watch" if watch else "done"
        return d
