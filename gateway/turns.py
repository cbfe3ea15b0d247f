"""Conversation timing of one call: turns, response latency, barge-ins, talk-over and long silences.

Two observers use the same rules on their own clocks, so their figures can be compared:

* the gateway, for every call on every carrier (`gateway/call.py`): caller speech from the VAD tap
  (`gateway/vad.py`, back-dated to the first and last voiced frame), agent audio from the frames handed to the
  carrier (`Call.next_outbound*`), placed on a playout clock (a frame plays after what was queued before it, or
  now), cut short by a `Clear` (the carrier drops its buffer);
* `gateway simulate`, the synthetic caller: what it said (the same VAD over the audio it sent) and what it heard.

Recording is online and cheap (one RMS and a few float operations per outbound frame, nothing per inbound frame
but at a speech start or end: see bench/turn_timing.py); the analysis (`analyze`) is a pure function of the
recorded intervals, run when the call ends and when the live page or the API asks.

Definitions (all times in seconds on the observer's clock, reported in ms from the answer):
* a *turn* is one caller utterance; its *response latency* is the time from the end of the caller's last voiced
  frame to the start of the first agent audio after it (and before the caller's next utterance). When the agent
  was already speaking before the caller finished (talked over the caller) the turn has no latency.
* a *barge-in* is a caller utterance that starts while agent audio is playing; its *clear reaction* is the time
  from the caller's first voiced frame until the agent's audio stopped (`cleared` says whether a clear did it).
* *talk-over* is the time both spoke at once; a *long silence* is a gap of `LONG_SILENCE_S` or more in which
  neither did (dead air after the answer and before the hangup counts).
"""
from __future__ import annotations

import bisect
import math
from typing import Any

from voicecodecs._audioop import audioop

AGENT_FLOOR_RMS = 150   # an outbound frame below this RMS is silence (the caller VAD's energy gate uses 150 too)
AGENT_GAP_S = 0.3       # agent audio that pauses longer than this ends an agent utterance
LONG_SILENCE_S = 2.0    # nobody speaking for this long is reported as a long silence


class Timeline:
    """Caller and agent utterances of one call as [start, end] pairs on one clock (seconds), recorded online.

    `origin` is the answer time; `frame_s` the duration of one outbound frame (20 ms at the carrier's rate).
    """

    __slots__ = ("origin", "caller", "agent", "clears", "play_end", "_rms", "_floor", "_gap")

    def __init__(self, origin: float, *, floor_rms: int = AGENT_FLOOR_RMS, gap_s: float = AGENT_GAP_S) -> None:
        self.origin = origin
        self.caller: list[list[float]] = []      # [start, end]; end is nan while the caller is speaking
        self.agent: list[list[float]] = []       # [start, end] of agent audio as it plays at the carrier
        self.clears: list[float] = []
        self.play_end = origin                   # when everything handed to the carrier so far has played
        self._rms = audioop.rms
        self._floor = floor_rms
        self._gap = gap_s

    # -- caller ----------------------------------------------------------------------------------------------------
    def caller_started(self, at: float) -> None:
        if self.caller and math.isnan(self.caller[-1][1]):
            return
        self.caller.append([at, math.nan])

    def caller_ended(self, at: float) -> None:
        if self.caller and math.isnan(self.caller[-1][1]):
            self.caller[-1][1] = max(at, self.caller[-1][0])

    # -- agent -----------------------------------------------------------------------------------------------------
    def agent_frame(self, pcm: bytes, now: float, seconds: float = 0.02) -> None:
        """A frame of agent audio (PCM16) handed to the carrier at `now`: it plays after what is queued, or now."""
        end = self.play_end
        start = end if end > now else now
        end = self.play_end = start + seconds
        if self._rms(pcm, 2) >= self._floor:
            agent = self.agent
            if agent and start - agent[-1][1] <= self._gap:
                agent[-1][1] = end
            else:
                agent.append([start, end])

    def agent_clear(self, now: float) -> None:
        """The carrier drops the agent audio it has not played yet."""
        if self.play_end > now:
            self.play_end = now
        agent = self.agent
        if agent and agent[-1][1] > now:
            agent[-1][1] = max(now, agent[-1][0])
        self.clears.append(now)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between order statistics (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def analyze(tl: Timeline, end: float, *, long_silence_s: float = LONG_SILENCE_S) -> dict[str, Any]:
    """Turns, a summary and long silences of `tl` as of `end` (open utterances are closed there).

    Returns {"summary": {...}, "turns": [...], "long_silences": [...]}, times in ms from `tl.origin`.
    """
    o = tl.origin
    caller = [(s, end if math.isnan(e) else min(e, end)) for s, e in tl.caller if s < end]
    agent = [(s, min(e, end)) for s, e in tl.agent if s < end]
    a_starts = [a[0] for a in agent]
    a_ends = [a[1] for a in agent]           # agent utterances never overlap: ends are sorted too
    clears = tl.clears
    turns: list[dict[str, Any]] = []
    for i, (cs, ce) in enumerate(caller):
        nxt = caller[i + 1][0] if i + 1 < len(caller) else math.inf
        turn: dict[str, Any] = {"n": i + 1, "caller_start_ms": _ms(cs - o), "caller_end_ms": _ms(ce - o)}
        # barge-in: the agent utterance that started before cs and was still playing at cs
        j = bisect.bisect_left(a_starts, cs) - 1
        if j >= 0 and a_ends[j] > cs:
            stop = a_ends[j]
            k = bisect.bisect_left(clears, cs)
            turn["barge_in"] = {"reaction_ms": _ms(stop - cs),
                                "cleared": k < len(clears) and clears[k] <= stop + 0.001}
        # response: the first agent utterance that starts at or after ce, before the caller speaks again
        r = bisect.bisect_left(a_starts, ce)
        if r < len(agent) and a_starts[r] < nxt:
            turn["agent_start_ms"] = _ms(a_starts[r] - o)
            turn["agent_end_ms"] = _ms(a_ends[r] - o)
            # no latency when the agent was already talking over the caller when they stopped
            talking_over = r > 0 and a_starts[r - 1] > cs and a_ends[r - 1] > ce - 0.001
            turn["latency_ms"] = None if talking_over else _ms(a_starts[r] - ce)
        else:
            turn["latency_ms"] = None
        over = 0.0
        for m in range(max(0, bisect.bisect_right(a_ends, cs)), bisect.bisect_left(a_starts, ce)):
            over += max(0.0, min(ce, a_ends[m]) - max(cs, a_starts[m]))
        turn["talk_over_ms"] = _ms(over)
        turns.append(turn)
    silences = _long_silences(o, end, caller, agent, long_silence_s)
    lat = [t["latency_ms"] for t in turns if t["latency_ms"] is not None]
    barges = [t["barge_in"] for t in turns if "barge_in" in t]
    summary: dict[str, Any] = {
        "turns": len(turns), "agent_utterances": len(agent),
        "first_agent_audio_ms": _ms(agent[0][0] - o) if agent else None,
        "latency_p50_ms": round(percentile(lat, 50)) if lat else None,
        "latency_p95_ms": round(percentile(lat, 95)) if lat else None,
        "latency_max_ms": max(lat) if lat else None,
        "barge_ins": len(barges),
        "clear_reaction_avg_ms": round(sum(b["reaction_ms"] for b in barges) / len(barges)) if barges else None,
        "talk_over_ms": sum(t["talk_over_ms"] for t in turns),
        "long_silences": len(silences),
    }
    return {"summary": summary, "turns": turns, "long_silences": silences}


def _long_silences(o: float, end: float, caller: list[tuple[float, float]], agent: list[tuple[float, float]],
                   threshold: float) -> list[dict[str, int]]:
    out: list[dict[str, int]] = []
    last = o
    for s, e in sorted(caller + agent):
        if s - last >= threshold:
            out.append({"start_ms": _ms(last - o), "duration_ms": _ms(s - last)})
        last = max(last, e)
    if end - last >= threshold:
        out.append({"start_ms": _ms(last - o), "duration_ms": _ms(end - last)})
    return out
