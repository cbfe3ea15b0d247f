"""Prometheus text exposition (format 0.0.4) of the gateway's counters, written by hand: a handful of series does
not justify a dependency, and every value already lives on the CallManager, the buses and the webhook dispatcher.

Reference: https://prometheus.io/docs/instrumenting/exposition_formats/ (HELP/TYPE lines, `_total` counters,
label values escaped for backslash, double quote and newline).
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import re
from collections import Counter
from typing import TYPE_CHECKING

from .procstat import cpu_seconds, rss_bytes

if TYPE_CHECKING:
    from .runtime import Gateway

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
log = logging.getLogger("gateway.metrics")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    """Exact text for a sample: ints as they are, floats round-trip (`:g` would turn 1234567.0 into 1.23457e+06)."""
    if isinstance(v, bool) or not isinstance(v, float):
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _family(lines: list[str], name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {help_}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {_value(value)}")


class Histogram:
    """A Prometheus histogram (cumulative `_bucket{le=…}`, `_sum`, `_count`) of values observed in seconds."""

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help_
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)   # le: a value equal to a bound counts in that bucket
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1

    def render(self, lines: list[str]) -> None:
        lines.append(f"# HELP {self.name} {self.help}")
        lines.append(f"# TYPE {self.name} histogram")
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_value(float(bound))}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_value(float(self.sum))}")
        lines.append(f"{self.name}_count {self.count}")


#: seconds; a voice agent answering within 0.5–1 s feels natural, several seconds is broken
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
CLEAR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class TimingMetrics:
    """Gateway-wide histograms of the per-turn figures of ended calls (gateway/turns.py)."""

    def __init__(self) -> None:
        self.latency = Histogram("gateway_response_latency_seconds",
                                 "Per turn: caller stopped speaking to the first agent audio at the carrier.",
                                 LATENCY_BUCKETS)
        self.clear_reaction = Histogram("gateway_barge_in_clear_seconds",
                                        "Per barge-in: caller started speaking to the agent audio stopping.",
                                        CLEAR_BUCKETS)
        self.turns = 0

    def observe(self, timing: dict) -> None:
        for turn in timing["turns"]:
            self.turns += 1
            if turn.get("latency_ms") is not None:
                self.latency.observe(turn["latency_ms"] / 1000)
            if "barge_in" in turn:
                self.clear_reaction.observe(turn["barge_in"]["reaction_ms"] / 1000)

    def render(self, lines: list[str]) -> None:
        _family(lines, "gateway_turns_total", "counter", "Caller turns of ended calls.", [("", self.turns)])
        self.latency.render(lines)
        self.clear_reaction.render(lines)


def _carrier_series(gw: Gateway, taken: set[str]) -> list[tuple[str, str, float]]:
    """Carriers' own series; a failing hook, a bad name or a name already used is skipped (and logged), so one
    carrier can never break the scrape."""
    out: list[tuple[str, str, float]] = []
    for carrier in gw.carriers.values():
        try:
            series = carrier.metrics()
        except Exception:
            log.exception("carrier metrics failed", extra={"carrier": carrier.name})
            continue
        for name, value in sorted(series.items()):
            if not _NAME.match(name) or name in taken or not isinstance(value, (int, float)):
                log.warning("carrier metric skipped", extra={"carrier": carrier.name, "metric": name})
                continue
            taken.add(name)
            out.append((carrier.name, name, value))
    return out


def render(gw: Gateway) -> str:
    calls = list(gw.calls.active.values())
    per_carrier: Counter[str] = Counter({name: 0 for name in gw.carriers})
    per_carrier.update(c.carrier for c in calls)
    totals = gw.calls.totals
    frames_in, frames_out, dropped = totals["frames_in"], totals["frames_out"], totals["dropped_in"]
    for c in calls:  # live calls' counters join the totals when they end
        if c.bus is not None:
            frames_in += c.bus.counters.frames_in
            frames_out += c.bus.counters.frames_out
            dropped += c.bus.counters.dropped_in
    lines: list[str] = []
    _family(lines, "gateway_active_calls", "gauge", "Live calls per carrier.",
            [(f'{{carrier="{_label(k)}"}}', v) for k, v in sorted(per_carrier.items())])
    _family(lines, "gateway_calls_total", "counter", "Calls created since start.", [("", totals["calls"])])
    _family(lines, "gateway_frames_in_total", "counter", "20 ms audio frames received from carriers.",
            [("", frames_in)])
    _family(lines, "gateway_frames_out_total", "counter", "20 ms audio frames sent to carriers.",
            [("", frames_out)])
    _family(lines, "gateway_dropped_frames_total", "counter",
            "Inbound frames dropped because an engine fell behind.", [("", dropped)])
    _family(lines, "gateway_webhooks_delivered_total", "counter", "Lifecycle webhooks delivered (2xx).",
            [("", gw.webhooks.delivered)])
    _family(lines, "gateway_webhook_failures_total", "counter",
            "Lifecycle webhooks given up on after every retry.", [("", gw.webhooks.failures)])
    _family(lines, "gateway_webhooks_pending", "gauge", "Lifecycle webhooks queued or in flight.",
            [("", gw.webhooks.pending)])
    help_ = {"auth_failures_total": "Requests refused for a missing or wrong API key.",
             "auth_bans_total": "Source addresses banned after repeated API key failures.",
             "banned_requests_total": "Requests refused (429) because their source address was banned.",
             "banned_sources": "Source addresses banned right now."}
    for name, value in gw.api_throttle.metrics("gateway_api").items():
        _family(lines, name, "counter" if name.endswith("_total") else "gauge",
                help_[name.removeprefix("gateway_api_")], [("", value)])
    _family(lines, "gateway_webhooks_dropped_total", "counter",
            "Lifecycle webhooks dropped unsent because the outbox (or one call's queue) was full.",
            [("", gw.webhooks.dropped)])
    _family(lines, "gateway_orphan_calls_closed_total", "counter",
            "Calls of a dead process (this one before a restart, or a lost one) closed by this process.",
            [("", gw.membership.closed_orphans)])
    if gw.control.clustered:
        _family(lines, "gateway_control_bus_reconnects_total", "counter",
                "Times the control bus's PostgreSQL LISTEN connection was re-opened.", [("", gw.control.reconnects)])
    gw.calls.timing.render(lines)
    _family(lines, "gateway_queue_calls", "gauge", "Dispatch-queue calls per status (the whole cluster's queue).",
            [(f'{{status="{_label(k)}"}}', v) for k, v in sorted(gw.dispatcher.depth.items())])
    _family(lines, "gateway_queue_placed_total", "counter",
            "Queued calls this process placed (dispatched), failed, or gave back because the number or the gateway "
            "was full (requeued).",
            [(f'{{outcome="{k}"}}', v) for k, v in sorted(gw.dispatcher.counts.items())])
    health = sorted(gw.health.latest.items())
    labels = {n: f'{{number_id="{n}",phone_number="{_label(str(r["data"].get("phone_number") or ""))}"}}'
              for n, r in health}
    _family(lines, "gateway_number_health_score", "gauge", "Health score (0-100) of each phone number / trunk.",
            [(labels[n], r["health_score"]) for n, r in health])
    _family(lines, "gateway_number_reachable", "gauge", "1 when the trunk answered its last OPTIONS probe.",
            [(labels[n], 1 if r["data"]["probe"]["reachable"] else 0) for n, r in health if r["data"].get("probe")])
    _family(lines, "gateway_number_options_rtt_seconds", "gauge", "Round trip of the trunk's last OPTIONS probe.",
            [(labels[n], r["data"]["probe"]["rtt_ms"] / 1000) for n, r in health
             if (r["data"].get("probe") or {}).get("rtt_ms") is not None])
    _family(lines, "gateway_number_asr", "gauge",
            "Answer-seizure ratio of the number's outbound calls over the health window.",
            [(labels[n], r["data"]["asr"]) for n, r in health if r["data"].get("asr") is not None])
    help_rec = {"gateway_recordings_active": "Calls being recorded right now.",
                "gateway_recordings_started_total": "Call recordings started.",
                "gateway_recordings_completed_total": "Call recordings finished and kept.",
                "gateway_recording_write_failures_total": "Recordings stopped by a write error (disk full, I/O).",
                "gateway_recording_upload_failures_total": "Recording uploads to the bucket that failed (retried).",
                "gateway_recordings_expired_total": "Recordings deleted after the retention period."}
    for name, value in gw.recordings.metrics().items():
        _family(lines, name, "counter" if name.endswith("_total") else "gauge", help_rec[name], [("", value)])
    guard = gw.http_guard
    if guard is not None:
        _family(lines, "gateway_http_connections", "gauge", "Open HTTP connections (websockets included).",
                [("", guard.open)])
        _family(lines, "gateway_http_connections_refused_total", "counter",
                "HTTP connections refused (503) at the total or per-address connection cap.", [("", guard.refused)])
        _family(lines, "gateway_http_header_timeouts_total", "counter",
                "HTTP connections closed for not sending a request head in time.", [("", guard.header_timeouts)])
    taken = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    taken |= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    for carrier_name, name, value in _carrier_series(gw, taken):
        _family(lines, name, "counter" if name.endswith("_total") else "gauge",
                f"Reported by the {carrier_name} carrier.", [("", value)])
    pid = os.getpid()
    _family(lines, "process_cpu_seconds_total", "counter", "User and system CPU time of the gateway process.",
            [("", cpu_seconds(pid) or 0.0)])
    _family(lines, "process_resident_memory_bytes", "gauge", "Resident memory of the gateway process.",
            [("", rss_bytes(pid) or 0)])
    return "\n".join(lines) + "\n"
