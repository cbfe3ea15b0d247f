"""Streaming answering-machine detector: PCM16 chunks in, Twilio-vocabulary verdicts out.

It is a plain object with no event loop, no call and no clock of its own: time is the audio fed to it (20 ms per
frame), so the same code runs on a live call (through `AmdController`), on SIP early media before the call is
attached, and in the benchmark on files.

Phase 1, greeting analysis, is Asterisk app_amd's state machine (initial silence, greeting length, after-greeting
silence, words, total analysis time; the parameters are in `AmdParams`) with two additions: a voice-activity
detector other than app_amd's energy threshold can be chosen, and pure tones are not speech — a beep or fax tone is
recognised as such (machine_end_beep, fax) instead of being counted as a word.
Phase 2, only with `detect_message_end`, follows a machine greeting to its end as Twilio's DetectMessageEnd does:
a beep (machine_end_beep, decided once the tone has stopped and `beep_confirm_ms` of non-speech followed it, so a
message starts after it and a steady sung vowel is not taken for a beep), silence
(machine_end_silence) or a timeout (machine_end_other).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import AnsweredBy
from .params import AmdParams
from .tones import CED_HZ, CNG_HZ, FREQ_TOLERANCE_HZ, Tone, ToneTracker, tone_score
from .vad import make_vad

FRAME_MS = 20


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
                 early_media: bool = False) -> None:
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
        self._vad = make_vad(p.vad, sample_rate, threshold=p.silence_threshold, mode=p.vad_mode)
        self._tones = ToneTracker(FRAME_MS)
        self._tone_gate = max(32, p.silence_threshold // 2)
        self._pending_beep: Tone | None = None
        self._pending_level = 0
        self._tone_level = 0
        self.time_ms = 0
        self.frames = 0
        # app_amd state
        self.silence_ms = 0
        self.voice_ms = 0
        self.consecutive_voice_ms = 0
        self.words = 0
        self.in_word = True          # app_amd starts "in a word": the first word counts only after some silence
        self.in_initial_silence = True
        self.in_greeting = False
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
        level = int(np.abs(a).sum()) // len(a)     # app_amd's measure: mean |sample| (int64 accumulator)

        tonal = False
        ended: Tone | None = None
        if p.beep or p.fax:
            if level >= self._tone_gate:
                freq, purity = tone_score(a.astype(np.float32), self.sample_rate)
                tonal = purity >= p.tone_purity
                if tonal:
                    self._tone_level = level
            else:
                freq = 0.0
            ended = self._tones.update(now, freq, tonal)
            d = self._tone_verdict(now, ended)
            if d is not None:
                return d
            if tonal or self._tones.active:
                return None   # a tone is neither speech nor silence: it must not make a word or a human
        voice = self._vad.is_speech(frame, level)
        pend = self._pending_beep
        if pend is not None:
            # a beep is followed by the recording's silence; a "beep" followed by speech was a sung vowel. Speech
            # here means voiced AND about as loud as the tone: webrtcvad keeps saying "speech" on line noise for a
            # few frames after a loud beep (its hangover), which must not cancel the beep.
            if voice and level * 4 >= self._pending_level:
                self._pending_beep = None
            elif now - pend.end_ms >= p.beep_confirm_ms:
                return self._beep(pend)
            else:
                return None
        if self.phase == "greeting":
            return self._greeting(now, voice)
        return self._message_end(now, voice)

    def _tone_verdict(self, now: int, ended: Tone | None) -> AmdDecision | None:
        p = self.params
        if self.early_media:
            return None
        if p.fax and self.phase == "greeting" and self._tones.active:
            t = self._tones.current(now)
            if abs(t.freq_hz - CED_HZ) <= FREQ_TOLERANCE_HZ and t.duration_ms >= p.fax_ced_min_ms:
                return self._decide(AnsweredBy.FAX, f"CED-{t.freq_hz:.0f}Hz-{t.duration_ms}ms")
            if (abs(t.freq_hz - CNG_HZ) <= FREQ_TOLERANCE_HZ and t.duration_ms >= p.fax_cng_min_ms
                    and not self.in_greeting):
                return self._decide(AnsweredBy.FAX, f"CNG-{t.freq_hz:.0f}Hz-{t.duration_ms}ms")
        if p.beep and ended is not None and p.beep_min_hz <= ended.freq_hz <= p.beep_max_hz:
            pend = self._pending_beep
            if pend is not None and abs(ended.freq_hz - pend.freq_hz) <= FREQ_TOLERANCE_HZ:
                ended = Tone(pend.freq_hz, pend.start_ms, ended.end_ms)   # one beep, broken up by line noise
            if ended.duration_ms >= p.beep_min_ms:
                if p.beep_confirm_ms <= 0:
                    return self._beep(ended)
                self._pending_beep = ended
                self._pending_level = self._tone_level
        if p.beep and self._tones.active:
            t = self._tones.current(now)
            if t.duration_ms >= 3000 and p.beep_min_hz <= t.freq_hz <= p.beep_max_hz:   # a tone that never stops
                return self._decide(AnsweredBy.MACHINE_END_BEEP, f"BEEP-{t.freq_hz:.0f}Hz-{t.duration_ms}ms+")
        return None

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
            return self._decide(AnsweredBy.UNKNOWN, f"TOOLONG-{now}")
        if not voice:
            self.silence_ms += FRAME_MS
            if self.silence_ms >= p.between_words_silence:
                self.in_word = False
                self.consecutive_voice_ms = 0
            if self.in_initial_silence and self.silence_ms >= p.initial_silence:
                verdict = {"unknown": AnsweredBy.UNKNOWN, "machine": AnsweredBy.MACHINE_START,
                           "human": AnsweredBy.HUMAN}[p.initial_silence_result]
                return self._decide(verdict, f"INITIALSILENCE-{self.silence_ms}-{p.initial_silence}")
            if self.in_greeting and self.silence_ms >= p.after_greeting_silence:
                return self._decide(AnsweredBy.HUMAN, f"HUMAN-{self.silence_ms}-{p.after_greeting_silence}")
            return None
        self.silence_ms = 0
        self.consecutive_voice_ms += FRAME_MS
        self.voice_ms += FRAME_MS
        if self.consecutive_voice_ms >= p.min_word_length and not self.in_word:
            self.words += 1
            self.in_word = True
        if self.consecutive_voice_ms >= p.maximum_word_length:
            return self._decide(AnsweredBy.MACHINE_START, f"MAXWORDLENGTH-{self.consecutive_voice_ms}")
        if p.maximum_number_of_words and self.words > p.maximum_number_of_words:
            return self._decide(AnsweredBy.MACHINE_START, f"MAXWORDS-{self.words}-{p.maximum_number_of_words}")
        if self.in_greeting and self.voice_ms >= p.greeting:
            return self._decide(AnsweredBy.MACHINE_START, f"LONGGREETING-{self.voice_ms}-{p.greeting}")
        if self.consecutive_voice_ms >= p.min_word_length and not self.in_greeting:
            self.in_initial_silence = False
            self.in_greeting = True
        return None

    def _message_end(self, now: int, voice: bool) -> AmdDecision | None:
        p = self.params
        if now >= p.message_end_timeout:
            return self._decide(AnsweredBy.MACHINE_END_OTHER, f"TIMEOUT-{now}")
        if voice:
            self.silence_ms = 0
            self.voice_ms += FRAME_MS
            return None
        self.silence_ms += FRAME_MS
        if self.silence_ms >= p.message_end_silence:
            return self._decide(AnsweredBy.MACHINE_END_SILENCE, f"SILENCE-{self.silence_ms}")
        return None

    def _reset_greeting(self) -> None:
        self.voice_ms = self.consecutive_voice_ms = self.words = 0
        self.in_word, self.in_initial_silence, self.in_greeting = True, True, False

    @property
    def machine_by_speech(self) -> bool:
        """A machine verdict from the greeting itself (not from silence or a tone): valid across the answer."""
        d = self.first
        return d is not None and d.answered_by is AnsweredBy.MACHINE_START and \
            d.cause.startswith(("LONGGREETING", "MAXWORD"))

    def _decide(self, answered_by: AnsweredBy, cause: str) -> AmdDecision:
        interim = answered_by is AnsweredBy.MACHINE_START and self.detect_message_end
        d = AmdDecision(answered_by, self.time_ms, cause, final=not interim)
        self.decisions.append(d)
        self.phase = "message_end" if interim else "done"
        return d
