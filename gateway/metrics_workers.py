"""`/metrics` of a node run as `gateway serve --workers N`: whichever worker answers covers every worker.

The workers share the HTTP port (SO_REUSEPORT), so a scrape reaches one of them at random. That worker reads its
live siblings of the same node (the `nodes` table: alive, same `node_id`, their `direct_url`, i.e. each worker's
private HTTP port) with `GET /metrics?scope=process`, concurrently and bounded by `PEER_TIMEOUT`, and returns the
union, every sample labelled `proc` (the process id, `<node>.<k>`). `gateway_worker_up{proc}` says which workers
answered this scrape (0: its series are missing from this one). Counters restart with a worker that restarts;
Prometheus' rate() treats that per series, which the `proc` label keeps apart.

Why not prometheus_client's multiprocess mode or a supervisor that aggregates: docs/operations.md, "Several
workers".
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .runtime import Gateway

log = logging.getLogger("gateway.metrics")

#: `/metrics?scope=process`: this process only (what siblings ask each other; no recursion)
SCOPE_PROCESS = "process"
#: seconds a sibling worker has to answer; Prometheus' default scrape timeout is 10 s
PEER_TIMEOUT = 2.0
#: the series only a node's union has (a single process's /metrics has none of them)
WORKER_UP = "gateway_worker_up"
WORKER_SERIES = (WORKER_UP,)


class _Families(Collector):
    """A fixed list of families (one scrape's union) for the library's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _merge(into: dict[str, Metric], families: Iterable[Metric], proc: str) -> None:
    """Add `families`' samples to `into`, each labelled proc=`proc`; a family seen before keeps its first type."""
    for family in families:
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        merged.samples.extend(s._replace(labels={**s.labels, "proc": proc}) for s in family.samples)


async def _fetch(http: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with http.get(url.rstrip("/") + "/metrics", params={"scope": SCOPE_PROCESS}) as r:
            if r.status == 200:
                return await r.text()
            log.warning("worker metrics refused", extra={"url": url, "status": r.status})
    except (TimeoutError, aiohttp.ClientError) as e:
        log.warning("worker metrics unreachable", extra={"url": url, "error": str(e) or type(e).__name__})
    return None


async def node_exposition(gw: Gateway, accept: str = "") -> tuple[bytes, str]:
    """Every live worker's series of this node, labelled `proc`, in the format `accept` asks for."""
    s = gw.settings
    me = s.proc_id
    peers = [n for n in await gw.store.list_nodes(s.stale_after)
             if n["alive"] and n["node_id"] == s.node_id and n["proc"] != me and n.get("direct_url")]
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        texts = await asyncio.gather(*(_fetch(http, n["direct_url"]) for n in peers))
    families: dict[str, Metric] = {}
    _merge(families, gw.metrics.registry.collect(), me)
    up = GaugeMetricFamily(WORKER_UP, "1 when this worker's series are in this scrape, 0 when it did "
                                                "not answer in time.", labels=["proc"])
    up.add_metric([me], 1)
    for node, text in zip(peers, texts, strict=True):
        up.add_metric([node["proc"]], 0 if text is None else 1)
        if text is not None:
            try:
                _merge(families, text_string_to_metric_families(text), node["proc"])
            except ValueError:
                log.warning("worker metrics unreadable", extra={"proc": node["proc"]})
    registry = CollectorRegistry()
    registry.register(_Families([*families.values(), up]))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
