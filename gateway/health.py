"""Number health: one record per phone number / trunk in OmniDimension's shape (`health_score` 0..100,
`health_status`, `health_score_updated_at`) plus the reasons behind the score.

Every `health_interval` seconds each number is checked by one process of the cluster (a record younger than most
of the interval is left alone, so N processes do not probe a trunk N times): the carrier's probe (SIP: DNS and an
OPTIONS ping with its round-trip time, and the registration state of a registering trunk; other carriers have
none and are judged by their calls) and the number's outbound calls that ended within `health_window`
(answer-seizure ratio, the most frequent reasons of unanswered calls: SIP status lines, carrier errors). The
score starts at 100 and loses points per finding; every finding is a `reasons` entry, so a score is never
unexplained. Records are shared through the store, so the API, the live page and /metrics of every process show
the same health.

| finding | points |
|---|---|
| trunk did not answer OPTIONS (or DNS failed) | −60 |
| trunk answered OPTIONS with 5xx (overloaded, down) | −30 |
| OPTIONS round trip above 500 ms / above 200 ms | −15 / −5 |
| registering trunk not registered | −40 |
| ASR below 20 % / below 50 % (at least MIN_ATTEMPTS calls in the window) | −30 / −15 |
| more than half of the window's calls failed at the carrier (`failed`) | −20 |

`health_status`: `healthy` (≥ 80), `degraded` (≥ 50), `unhealthy` (< 50); `unknown` until a probe or a call has
given something to judge.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .store.models import utcnow

if TYPE_CHECKING:
    from .runtime import Gateway

log = logging.getLogger("gateway.health")

#: fewer calls than this in the window say nothing about the answer-seizure ratio
MIN_ATTEMPTS = 5
#: seconds one carrier probe may take
PROBE_TIMEOUT = 10.0
#: probes under way at once
PARALLEL = 8


def status_of(score: int) -> str:
    return "healthy" if score >= 80 else "degraded" if score >= 50 else "unhealthy"


def judge(probe: dict[str, Any] | None, calls: dict[str, Any]) -> tuple[int, str, list[str]]:
    """(health_score, health_status, reasons) from a carrier probe (or None) and the window's call outcomes."""
    score, reasons = 100, []
    if probe is not None:
        if not probe.get("reachable"):
            score -= 60
            reasons.append(f"trunk unreachable: {probe.get('detail') or 'no answer to OPTIONS'}")
        else:
            line = probe.get("sip_status") or ""
            if " 5" in line[:11]:       # "SIP/2.0 5xx"
                score -= 30
                reasons.append(f"trunk answered OPTIONS with {line.removeprefix('SIP/2.0 ')}")
            rtt = probe.get("rtt_ms")
            if rtt is not None and rtt > 500:
                score -= 15
                reasons.append(f"OPTIONS round trip {rtt:g} ms (> 500 ms)")
            elif rtt is not None and rtt > 200:
                score -= 5
                reasons.append(f"OPTIONS round trip {rtt:g} ms (> 200 ms)")
        registration = probe.get("registration")
        if registration is not None and registration != "registered":
            score -= 40
            reasons.append(f"registration {registration}")
    attempts, answered = calls["attempts"], calls["answered"]
    if attempts >= MIN_ATTEMPTS:
        asr = answered / attempts
        if asr < 0.2:
            score -= 30
            reasons.append(f"answer-seizure ratio {asr:.0%} (< 20 %) over {attempts} calls")
        elif asr < 0.5:
            score -= 15
            reasons.append(f"answer-seizure ratio {asr:.0%} (< 50 %) over {attempts} calls")
        failed = sum(f["count"] for f in calls["top_failures"] if f["status"] == "failed")
        if failed * 2 > attempts:
            score -= 20
            reasons.append(f"{failed} of {attempts} calls failed at the carrier")
    score = max(0, min(100, score))
    if probe is None and attempts == 0:
        return score, "unknown", ["no probe for this carrier and no calls in the window"]
    return score, status_of(score), reasons


class HealthMonitor:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._task: asyncio.Task[None] | None = None
        #: number id → its latest record (every process's), refreshed after each round: /metrics, the live page
        self.latest: dict[int, dict[str, Any]] = {}

    async def start(self) -> None:
        if self.gateway.settings.health_interval > 0:     # 0 turns the checks off
            self._task = asyncio.create_task(self._run(), name="number-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        """A round every `health_interval`, the first one interval after the start (records from before a restart
        stay shown meanwhile)."""
        self.latest = await self.gateway.store.health_records()
        while True:
            await asyncio.sleep(self.gateway.settings.health_interval)
            try:
                await self.check_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("number health round failed")

    async def check_all(self, force: bool = False) -> None:
        """Check every number no process has checked within most of the interval (all with `force`)."""
        store, s = self.gateway.store, self.gateway.settings
        numbers, _ = await store.list_numbers(1, 1_000_000, with_secrets=True)
        gate = asyncio.Semaphore(PARALLEL)

        async def one(number: dict[str, Any]) -> None:
            if not force and await store.health_fresh(number["id"], s.health_interval * 0.8):
                return
            async with gate:
                await self.check(number)
        await asyncio.gather(*(one(n) for n in numbers))
        self.latest = await store.health_records()

    async def check(self, number: dict[str, Any]) -> dict[str, Any]:
        """Probe and judge one number now, store and return its record."""
        store, s = self.gateway.store, self.gateway.settings
        carrier = self.gateway.carrier_for(number["provider"])
        probe = None
        if carrier is not None:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    probe = await carrier.probe(number)
            except Exception as e:   # a carrier module's bug or a hung probe must not stop the others
                probe = {"reachable": False, "rtt_ms": None, "sip_status": None, "registration": None,
                         "detail": f"probe failed: {type(e).__name__}"}
        calls = await store.call_outcomes(number["id"], utcnow() - timedelta(seconds=s.health_window))
        score, status, reasons = judge(probe, calls)
        attempts = calls["attempts"]
        data = {"phone_number": number["phone_number"], "reasons": reasons, "probe": probe,
                "window_s": s.health_window, "attempts": attempts,
                "answered": calls["answered"], "asr": round(calls["answered"] / attempts, 3) if attempts else None,
                "top_failures": calls["top_failures"], "checked_by": s.proc_id}
        await store.save_health(number["id"], score, status, data)
        record = (await store.health_records([number["id"]]))[number["id"]]
        self.latest[number["id"]] = record
        return record


def health_json(record: dict[str, Any] | None) -> dict[str, Any]:
    """The fields a phone number shows in the API: OmniDimension's three and ours under `health`."""
    if record is None:
        return {"health_score": None, "health_status": "unknown", "health_score_updated_at": None, "health": None}
    return {"health_score": record["health_score"], "health_status": record["health_status"],
            "health_score_updated_at": record["health_score_updated_at"], "health": record["data"]}
