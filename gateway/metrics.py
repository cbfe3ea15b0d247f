"""Prometheus metrics of one gateway process, exposed with the official client library (`prometheus_client`).

Why the library: the exposition format, label escaping, histogram buckets and counter semantics are its job, done
right and kept up to date; we only decide what to count. What each series means, and the alerts worth having, is
in docs/operations.md; `deploy/grafana/gateway.json` is a dashboard built on them.

Every `Gateway` has its own `CollectorRegistry` (`gw.metrics.registry`), never the library's global default one:
tests run several gateways in one process, and each must count only its own calls. Two kinds of series:

- events counted where they happen (calls started and ended, refusals, setup time, AMD verdicts, engine failures,
  RTP/RTCP quality of ended calls, event-loop lag): `Counter`/`Histogram`/`Gauge` objects on `GatewayMetrics`.
  A module that wants its own series creates it on the gateway's registry:
  `Counter("gateway_x_total", "…", ["carrier"], registry=gw.metrics.registry)`;
- values that already live on objects (live calls, the frame counters of the buses, the webhook outbox, the HTTP
  connection guard, the API throttle, the carriers' own `Carrier.metrics()` hooks): read at scrape time by
  `StateCollector`, so they cost nothing between scrapes.

Under `gateway serve --workers N` the node's `/metrics` covers every worker: see gateway/metrics_workers.py.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .runtime import Gateway

#: `_created` samples double every counter's series for a figure no dashboard here uses
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
log = logging.getLogger("gateway.metrics")

#: seconds; a voice agent answering within 0.5–1 s feels natural, several seconds is broken
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
CLEAR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
#: seconds from the webhook / INVITE to media flowing: includes the carrier's ringing for outbound calls
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
#: seconds a 20 ms frame spends inside the gateway: anything near a frame time (0.02) is already audible
TURNAROUND_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5)
#: seconds an AMD verdict took (app_amd's total analysis time defaults to 5 s)
AMD_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0)
#: mean opinion score 1 (bad) … 4.5 (the best narrowband G.711 reaches under the E-model)
MOS_BUCKETS = (1.0, 2.0, 2.5, 3.0, 3.3, 3.6, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
RTT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: how often the event-loop lag probe wakes (seconds)
LAG_INTERVAL = 0.5


def code_class(status: int) -> str:
    """`2xx` for 200…299: SIP responses are counted by class, so the label stays small whatever codes peers use."""
    return f"{status // 100}xx" if 100 <= status <= 699 else "other"


class TimingMetrics:
    """Gateway-wide histograms of the per-turn figures of ended calls (gateway/turns.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.turns = Counter("gateway_turns_total", "Caller turns of ended calls.", registry=registry)
        self.latency = Histogram("gateway_response_latency_seconds",
                                 "Per turn: caller stopped speaking to the first agent audio at the carrier.",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.clear_reaction = Histogram("gateway_barge_in_clear_seconds",
                                        "Per barge-in: caller started speaking to the agent audio stopping.",
                                        buckets=CLEAR_BUCKETS, registry=registry)

    def observe(self, timing: dict[str, Any]) -> None:
        for turn in timing["turns"]:
            self.turns.inc()
            if turn.get("latency_ms") is not None:
                self.latency.observe(turn["latency_ms"] / 1000)
            if "barge_in" in turn:
                self.clear_reaction.observe(turn["barge_in"]["reaction_ms"] / 1000)


class GatewayMetrics:
    """The registry of one gateway and the series counted where things happen."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)     # process_cpu_seconds_total, process_resident_memory_bytes, open fds…
        self.timing = TimingMetrics(r)
        self.calls = Counter("gateway_calls_total", "Calls created (inbound and outbound).",
                             ["carrier", "direction"], registry=r)
        self.calls_ended = Counter("gateway_calls_ended_total",
                                   "Calls ended, by final call_status and who hung up (hangup_source).",
                                   ["carrier", "direction", "status", "hangup_source"], registry=r)
        self.refused = Counter("gateway_calls_refused_total",
                               "New calls refused: the process full (max_calls) or draining, the number's channels "
                               "in use, or the call log unavailable (reason call_log).",
                               ["carrier", "reason"], registry=r)
        self.setup = Histogram("gateway_call_setup_seconds",
                               "Webhook or INVITE to media flowing (the engine starts), per answered call.",
                               ["carrier", "direction"], buckets=SETUP_BUCKETS, registry=r)
        self.turnaround = Histogram("gateway_media_turnaround_seconds",
                                    "Sampled 20 ms frames: time inside the gateway, carrier to engine (in) and "
                                    "engine to carrier when nothing was queued ahead (out).",
                                    ["carrier", "direction"], buckets=TURNAROUND_BUCKETS, registry=r)
        self.sip_responses = Counter("gateway_sip_responses_total", "SIP responses sent and received, by class.",
                                     ["direction", "code_class"], registry=r)
        #: (metric, label values) -> that child (`child()`)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.amd = Counter("gateway_amd_results_total", "Answering-machine detection verdicts.",
                           ["carrier", "answered_by", "source"], registry=r)
        self.amd_decision = Histogram("gateway_amd_decision_seconds", "Time an AMD verdict took.",
                                      ["carrier", "source"], buckets=AMD_BUCKETS, registry=r)
        self.engine_failures = Counter("gateway_engine_failures_total",
                                       "Voice engines that failed a call: none available, connect failed, raised.",
                                       ["reason"], registry=r)
        self.mos = Histogram("gateway_call_mos", "Per RTP call: mean opinion score estimate (E-model, G.107 "
                             "simplified) from loss, jitter and round-trip time.", ["carrier", "trunk"],
                             buckets=MOS_BUCKETS, registry=r)
        self.jitter = Histogram("gateway_call_jitter_seconds",
                                "Per RTP call: interarrival jitter (RFC 3550 §6.4.1) at the end of the call; "
                                "side=local as we received, side=remote as the peer's RTCP reported ours.",
                                ["carrier", "trunk", "side"], buckets=JITTER_BUCKETS, registry=r)
        self.loss = Histogram("gateway_call_packet_loss_ratio",
                              "Per RTP call: fraction of packets lost (side=local: ours to receive, "
                              "side=remote: the peer's, from its RTCP receiver reports).",
                              ["carrier", "trunk", "side"], buckets=LOSS_BUCKETS, registry=r)
        self.packets_lost = Counter("gateway_call_packets_lost_total",
                                    "RTP packets lost on ended calls (side=local: we missed; side=remote: the "
                                    "peer missed, from its RTCP).", ["carrier", "trunk", "side"], registry=r)
        self.rtt = Histogram("gateway_call_rtt_seconds",
                             "Per RTP call: round-trip time from RTCP (RFC 3550 §6.4.1 LSR/DLSR), last report.",
                             ["carrier", "trunk"], buckets=RTT_BUCKETS, registry=r)
        self.loop_lag = Histogram("gateway_event_loop_lag_seconds",
                                  f"How late a timer due every {LAG_INTERVAL} s fired: time the event loop was "
                                  "busy elsewhere.", buckets=LAG_BUCKETS, registry=r)
        self._lag_handle: asyncio.TimerHandle | None = None
        self._lag_due = 0.0

    def attach(self, gw: Gateway) -> None:
        """Read the live state of `gw` at every scrape."""
        self.registry.register(StateCollector(gw))

    # -- event-loop lag ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the lag probe: a timer that measures how late it fires (a stalled loop delays every call)."""
        loop = asyncio.get_running_loop()
        self._lag_due = loop.time() + LAG_INTERVAL
        self._lag_handle = loop.call_at(self._lag_due, self._lag_tick)

    def _lag_tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.loop_lag.observe(max(0.0, now - self._lag_due))
        self._lag_due = now + LAG_INTERVAL
        self._lag_handle = loop.call_at(self._lag_due, self._lag_tick)

    def stop(self) -> None:
        if self._lag_handle is not None:
            self._lag_handle.cancel()
            self._lag_handle = None

    def observe_rtp_quality(self, carrier: str, trunk: str, q: dict[str, Any]) -> None:
        """An RTP call ended: its quality (RtpSession.quality()) joins the per-carrier histograms."""
        if not q.get("expected"):
            return                       # no RTP ever arrived: nothing was heard, nothing to score
        self.mos.labels(carrier, trunk).observe(q["mos"])
        self.jitter.labels(carrier, trunk, "local").observe(q["jitter_ms"] / 1000)
        self.loss.labels(carrier, trunk, "local").observe(q["loss_ratio"])
        self.packets_lost.labels(carrier, trunk, "local").inc(q["lost"])
        remote = q.get("remote")
        if remote is not None:
            self.jitter.labels(carrier, trunk, "remote").observe(remote["jitter_ms"] / 1000)
            self.loss.labels(carrier, trunk, "remote").observe(remote["fraction_lost"])
            self.packets_lost.labels(carrier, trunk, "remote").inc(max(0, remote["packets_lost"]))
        if q.get("rtt_ms") is not None:
            self.rtt.labels(carrier, trunk).observe(q["rtt_ms"] / 1000)

    def sip_response(self, direction: str, status: int) -> None:
        """A SIP response was sent or received (the SIP transport calls this)."""
        self.child(self.sip_responses, direction, code_class(status)).inc()

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: `labels()` takes a lock and builds its key on every call, and
        the series counted per call and per SIP response (calls, set-up, ends, responses, turnaround) were 1.9 % of
        a worker's CPU at 300 calls/s (py-spy). The label values are few (carriers, directions, classes)."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= 4096:     # never grow for ever, whatever values a caller passes
                self._children.clear()
            found = self._children[key] = metric.labels(*values)
        return found

    def turnaround_observer(self, carrier: str) -> Callable[[str, float], None]:
        """What a call's bus calls with ("in" | "out", seconds) for its sampled frames."""
        children = {d: self.child(self.turnaround, carrier, d) for d in ("in", "out")}
        return lambda direction, seconds: children[direction].observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition the scraper asked for in its Accept header (OpenMetrics or the text format, 0.0.4 by
        default) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _family(kind: str, name: str, help_: str, value: float) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, help_, value=value)
    return GaugeMetricFamily(name, help_, value=value)


def _store_series(gw: Gateway) -> Iterator[Metric]:
    """The call log's write lanes (gateway/store/durable.py): what waits, what was retried, what was lost."""
    store = gw.store
    yield _family("gauge", "gateway_store_writes_pending",
                  "Call-log writes (updates, events, webhook outbox rows) queued or being written.",
                  store.writes_pending)
    yield _family("gauge", "gateway_store_degraded",
                  "1 while call-log writes are held for a database that is away (retrying), else 0.",
                  int(store.degraded))
    yield _per_label("gateway_store_write_retries",
                     "Call-log write attempts repeated after a transient database failure, per lane "
                     "(write: updates/events/outbox; insert: new rows).", "lane", store.write_retries)
    yield _per_label("gateway_store_writes_dropped",
                     "Call-log writes given up: transient (database away past --store-retry-seconds) "
                     "or permanent (the item refused: a data or constraint error).", "failure", store.writes_dropped)


def _per_label(name: str, help_: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter with one series per key of `counts` (read at scrape time), in key order."""
    family = CounterMetricFamily(name, help_, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


class StateCollector(Collector):
    """Series read from the gateway's objects at scrape time."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def describe(self) -> Iterable[Metric]:
        return []   # names vary with the carriers installed; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        gw = self.gw
        out = list(self._core(gw))
        taken = {m.name + ("_total" if m.type == "counter" else "") for m in out}
        # every name (with its _total/_bucket/… suffixes) another collector registered: the library keeps them in
        # this dict and offers no public view of it
        taken |= set(gw.metrics.registry._names_to_collectors)
        out.extend(_carrier_series(gw, taken))
        return iter(out)

    def _core(self, gw: Gateway) -> Iterator[Metric]:
        calls = list(gw.calls.active.values())
        per_carrier: Tally[str] = Tally({name: 0 for name in gw.carriers})
        per_carrier.update(c.carrier for c in calls)
        totals = gw.calls.totals
        frames_in, frames_out, dropped = totals["frames_in"], totals["frames_out"], totals["dropped_in"]
        for c in calls:  # live calls' counters join the totals when they end
            if c.bus is not None:
                frames_in += c.bus.counters.frames_in
                frames_out += c.bus.counters.frames_out
                dropped += c.bus.counters.dropped_in
        active = GaugeMetricFamily("gateway_active_calls", "Live calls per carrier.", labels=["carrier"])
        for k, v in sorted(per_carrier.items()):
            active.add_metric([k], v)
        yield active
        yield _family("counter", "gateway_frames_in_total", "20 ms audio frames received from carriers.", frames_in)
        yield _family("counter", "gateway_frames_out_total", "20 ms audio frames sent to carriers.", frames_out)
        yield _family("counter", "gateway_dropped_frames_total",
                      "Inbound frames dropped because an engine fell behind.", dropped)
        wh = gw.webhooks
        yield _family("counter", "gateway_webhooks_delivered_total", "Lifecycle webhooks delivered (2xx).",
                      wh.delivered)
        yield _family("counter", "gateway_webhook_failures_total",
                      "Lifecycle webhooks given up on after every retry.", wh.failures)
        yield _family("gauge", "gateway_webhooks_pending", "Lifecycle webhooks queued or in flight.", wh.pending)
        yield _family("counter", "gateway_webhooks_dropped_total",
                      "Lifecycle webhooks dropped unsent because the outbox (or one call's queue) was full.",
                      wh.dropped)
        help_ = {"auth_failures_total": "Requests refused for a missing or wrong API key.",
                 "auth_bans_total": "Source addresses banned after repeated API key failures.",
                 "banned_requests_total": "Requests refused (429) because their source address was banned.",
                 "banned_sources": "Source addresses banned right now."}
        for name, value in gw.api_throttle.metrics("gateway_api").items():
            yield _family("counter" if name.endswith("_total") else "gauge", name,
                          help_[name.removeprefix("gateway_api_")], value)
        yield _family("counter", "gateway_orphan_calls_closed_total",
                      "Calls of a dead process (this one before a restart, or a lost one) closed by this process.",
                      gw.membership.closed_orphans)
        yield from _store_series(gw)
        if gw.control.clustered:
            yield _family("counter", "gateway_control_bus_reconnects_total",
                          "Times the control bus's PostgreSQL LISTEN connection was re-opened.", gw.control.reconnects)
        yield from _queue_and_health(gw)
        help_rec = {"gateway_recordings_active": "Calls being recorded right now.",
                    "gateway_recordings_started_total": "Call recordings started.",
                    "gateway_recordings_completed_total": "Call recordings finished and kept.",
                    "gateway_recording_write_failures_total": "Recordings stopped by a write error (disk full, I/O).",
                    "gateway_recording_upload_failures_total": "Recording uploads to the bucket that failed (retried).",
                    "gateway_recordings_expired_total": "Recordings deleted after the retention period."}
        for name, value in gw.recordings.metrics().items():
            yield _family("counter" if name.endswith("_total") else "gauge", name, help_rec[name], value)
        guard = gw.http_guard
        if guard is not None:
            yield _family("gauge", "gateway_http_connections", "Open HTTP connections (websockets included).",
                          guard.open)
            yield _family("counter", "gateway_http_connections_refused_total",
                          "HTTP connections refused (503) at the total or per-address connection cap.", guard.refused)
            yield _family("counter", "gateway_http_header_timeouts_total",
                          "HTTP connections closed for not sending a request head in time.", guard.header_timeouts)


def _queue_and_health(gw: Gateway) -> Iterator[Metric]:
    """The dispatch queue (gateway/dispatcher) and each number's health (gateway/health)."""
    queue = GaugeMetricFamily("gateway_queue_calls", "Dispatch-queue calls per status (the whole cluster's queue).",
                              labels=["status"])
    for status, n in sorted(gw.dispatcher.depth.items()):
        queue.add_metric([status], n)
    yield queue
    placed = CounterMetricFamily("gateway_queue_placed", "Queued calls this process placed (dispatched), failed, or "
                                 "gave back because the number or the gateway was full (requeued).", labels=["outcome"])
    for outcome, n in sorted(gw.dispatcher.counts.items()):
        placed.add_metric([outcome], n)
    yield placed
    settled = CounterMetricFamily("gateway_queue_settled", "Queued calls whose call ended, settled by this process: "
                                  "completed (answered), failed (no retry left), retry (queued again).",
                                  labels=["fate"])
    for fate, n in sorted(gw.dispatcher.settled.items()):
        settled.add_metric([fate], n)
    yield settled
    labels = ["number_id", "phone_number"]
    score = GaugeMetricFamily("gateway_number_health_score", "Health score (0-100) of each phone number / trunk.",
                              labels=labels)
    reachable = GaugeMetricFamily("gateway_number_reachable", "1 when the trunk answered its last OPTIONS probe.",
                                  labels=labels)
    rtt = GaugeMetricFamily("gateway_number_options_rtt_seconds", "Round trip of the trunk's last OPTIONS probe.",
                            labels=labels)
    asr = GaugeMetricFamily("gateway_number_asr", "Answer-seizure ratio of the number's outbound calls over the "
                            "health window.", labels=labels)
    for n, r in sorted(gw.health.latest.items()):
        data = r["data"]
        key = [str(n), str(data.get("phone_number") or "")]
        score.add_metric(key, r["health_score"])
        probe = data.get("probe")
        if probe:
            reachable.add_metric(key, 1 if probe["reachable"] else 0)
            if probe.get("rtt_ms") is not None:
                rtt.add_metric(key, probe["rtt_ms"] / 1000)
        if data.get("asr") is not None:
            asr.add_metric(key, data["asr"])
    yield from (score, reachable, rtt, asr)


def _carrier_series(gw: Gateway, taken: set[str]) -> Iterator[Metric]:
    """Carriers' own series; a failing hook, a bad name or a name already used is skipped (and logged), so one
    carrier can never break the scrape."""
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
            yield _family("counter" if name.endswith("_total") else "gauge", name,
                          f"Reported by the {carrier.name} carrier.", value)
