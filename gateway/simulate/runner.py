"""Places N scripted calls, M at a time, and puts each call's figures as the caller heard them next to the
gateway's own (its call log `timing` and the turns of its `conversation:ended` event)."""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.turns import analyze, percentile

from .audio import write_wav
from .caller import ScriptedCaller
from .script import Script

#: the caller's and the gateway's response latency must agree within this (the issue's bar)
AGREEMENT_MS = 20


@dataclass
class CallReport:
    index: int
    carrier_sid: str = ""
    gateway_call_id: str | None = None
    error: str | None = None
    hangup: str = ""
    failures: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    timing: dict[str, Any] = field(default_factory=dict)          # the caller's: summary, turns, long silences
    timeline: dict[str, Any] = field(default_factory=dict)        # ms from the answer, for the plots
    gateway: dict[str, Any] | None = None                         # the gateway's: summary and turns
    disagreement_ms: int | None = None                            # max |caller − gateway| latency over turns

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures


GatewayTiming = Callable[[str, str | None], Awaitable[dict[str, Any] | None]]


def compare(caller_turns: list[dict[str, Any]], gateway_turns: list[dict[str, Any]]) -> int | None:
    """Largest |difference| of response latency between turns both sides measured (paired in order)."""
    if len(caller_turns) != len(gateway_turns):
        return None
    diffs = [abs(a["latency_ms"] - b["latency_ms"]) for a, b in zip(caller_turns, gateway_turns, strict=True)
             if a.get("latency_ms") is not None and b.get("latency_ms") is not None]
    return max(diffs) if diffs else None


async def place_call(index: int, line: Any, script: Script, number: str,
                     gateway_timing: GatewayTiming | None, record_dir: str | None = None) -> CallReport:
    """One call on `line` (its `rate` is the caller's audio rate)."""
    rate = line.rate
    caller = ScriptedCaller(script, rate)
    rep = CallReport(index)
    t0 = time.monotonic()
    try:
        res = await line.call(caller, number)
    except Exception as e:  # noqa: BLE001 - one failed call is a row in the report, not the end of the run
        rep.error = f"{type(e).__name__}: {e}"
        return rep
    rep.duration_s = round(time.monotonic() - t0, 2)
    rep.carrier_sid, rep.gateway_call_id, rep.hangup, rep.error = (res.carrier_sid, res.gateway_call_id,
                                                                   res.hangup, res.error)
    rep.failures = list(caller.failures)
    if record_dir and caller.heard_pcm:
        write_wav(Path(record_dir) / f"call-{index}.wav", bytes(caller.heard_pcm), rate)
    tl = caller.timeline
    if tl is not None:
        end = max([tl.play_end, *(e for _, e in tl.caller if not math.isnan(e))], default=tl.origin)
        rep.timing = analyze(tl, max(end, asyncio.get_running_loop().time()))
        origin = tl.origin

        def ms(v: float) -> int:
            return round((v - origin) * 1000)
        rep.timeline = {"caller": [[ms(s), ms(e if not math.isnan(e) else end)] for s, e in tl.caller],
                        "agent": [[ms(s), ms(e)] for s, e in tl.agent], "clears": [ms(c) for c in tl.clears],
                        "end": ms(max(end, tl.origin))}
    if gateway_timing is not None and rep.error is None:
        try:
            rep.gateway = await gateway_timing(rep.carrier_sid, rep.gateway_call_id)
        except Exception as e:  # noqa: BLE001
            rep.failures.append(f"gateway figures: {e}")
        if rep.gateway and rep.timing:
            rep.disagreement_ms = compare(rep.timing["turns"], rep.gateway.get("turns") or [])
    return rep


async def run_calls(line: Any, script: Script, number: str, *, calls: int, concurrency: int,
                    gateway_timing: GatewayTiming | None = None, record_dir: str | None = None,
                    on_done: Callable[[CallReport], None] | None = None) -> list[CallReport]:
    """`record_dir`: write what each caller heard there as call-N.wav."""
    if record_dir:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int) -> CallReport:
        async with sem:
            rep = await place_call(i, line, script, number, gateway_timing, record_dir)
        if on_done is not None:
            on_done(rep)
        return rep

    return list(await asyncio.gather(*(one(i) for i in range(1, calls + 1))))


def overall(reports: list[CallReport]) -> dict[str, Any]:
    """Figures over every call: latency as the caller heard it and as the gateway measured it, barge-ins,
    failures, hangup reasons, and how far the two observers were apart."""
    def dist(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
        return {"count": len(values), "p50_ms": round(percentile(values, 50)), "p95_ms": round(percentile(values, 95)),
                "max_ms": round(max(values))}

    caller_lat = [t["latency_ms"] for r in reports for t in r.timing.get("turns", [])
                  if t.get("latency_ms") is not None]
    gw_lat = [t["latency_ms"] for r in reports if r.gateway for t in r.gateway.get("turns") or []
              if t.get("latency_ms") is not None]
    barges = [t["barge_in"]["reaction_ms"] for r in reports for t in r.timing.get("turns", []) if "barge_in" in t]
    hangups: dict[str, int] = {}
    for r in reports:
        key = r.error and "failed: " + r.error.split(":")[0] or r.hangup or "?"
        hangups[key] = hangups.get(key, 0) + 1
    dis = [r.disagreement_ms for r in reports if r.disagreement_ms is not None]
    return {"calls": len(reports), "ok": sum(r.ok for r in reports),
            "failed": sum(r.error is not None for r in reports),
            "with_step_failures": sum(bool(r.failures) for r in reports),
            "turns": sum(r.timing.get("summary", {}).get("turns", 0) for r in reports),
            "latency_caller": dist(caller_lat), "latency_gateway": dist(gw_lat),
            "barge_ins": len(barges), "clear_reaction_avg_ms": round(sum(barges) / len(barges)) if barges else None,
            "max_disagreement_ms": max(dis) if dis else None, "agreement_bar_ms": AGREEMENT_MS,
            "agree": all(d <= AGREEMENT_MS for d in dis) if dis else None, "hangups": hangups}


def to_json(reports: list[CallReport], script: Script, via: str) -> dict[str, Any]:
    return {"script": script.name, "via": via, "overall": overall(reports),
            "calls": [{**asdict(r), "ok": r.ok} for r in reports]}


def api_timing(base_url: str, api_key: str, *, wait: float = 10.0) -> GatewayTiming:
    """The gateway's own figures for a call, through its REST API: the call log found by carrier sid (SIP Call-ID,
    Twilio CallSid) once its `timing` is written, and the turns of its `conversation:ended` event."""
    import aiohttp

    base = base_url.rstrip("/") + "/api/v1"
    headers = {"Authorization": f"Bearer {api_key}"}

    async def fetch(carrier_sid: str, _call_id: str | None) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with aiohttp.ClientSession(headers=headers) as http:
            while True:
                async with http.get(f"{base}/calls/logs", params={"carrier_sid": carrier_sid}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"call log: HTTP {r.status}")
                    rows = (await r.json())["call_log_data"]
                if rows and rows[0].get("timing") is not None:
                    break
                if loop.time() > deadline:
                    return None
                await asyncio.sleep(0.1)
            async with http.get(f"{base}/calls/logs/{rows[0]['id']}") as r:
                events = (await r.json())["events"]
        ended: dict[str, Any] = next((e["data"] for e in events if e["event"] == "conversation:ended"), {})
        return {"call_id": rows[0]["call_uuid"], "summary": rows[0]["timing"], "turns": ended.get("turns") or [],
                "hangup_source": rows[0].get("hangup_source"), "hangup_reason": rows[0].get("hangup_reason")}

    return fetch
