"""deploy/grafana/gateway.json is a well-formed Grafana dashboard, and every PromQL expression in it and in the
alerts of docs/operations.md names only series a running gateway (SIP carrier with RTP, the usual scrape)
actually exports, so a renamed metric cannot leave an empty panel or an alert that never fires."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics_workers import WORKER_SERIES
from sipp import metrics_text, sip_gateway

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway.json"
OPERATIONS = ROOT / "docs" / "operations.md"
SERIES = re.compile(r"\b((?:gateway|process)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum"),
            "gauge": ("",), "unknown": ("",), "info": ("_info",)}
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "heatmap", "text"}


def dashboard_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_has_grafanas_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["title"], str) and dash["title"]
    assert isinstance(dash["uid"], str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    assert {"from", "to"} <= set(dash["time"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")) and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    # panels of one row do not overlap
    cells = set()
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def alert_expressions() -> list[str]:
    """Every ```promql block of docs/operations.md."""
    return re.findall(r"```promql\n(.*?)```", OPERATIONS.read_text(), re.S)


async def test_every_expression_names_an_exported_series(make_gateway):
    gw = await sip_gateway(make_gateway)
    exported = set(WORKER_SERIES)
    for family in text_string_to_metric_families(await metrics_text(gw)):
        exported |= {family.name + s for s in SUFFIXES[family.type]}
    exprs = [t["expr"] for p in dashboard_panels(json.loads(DASHBOARD.read_text())) for t in p.get("targets", [])]
    alerts = alert_expressions()
    assert len(alerts) >= 5, "docs/operations.md lists the alerts worth having"
    used = set()
    for expr in exprs + alerts:
        names = set(SERIES.findall(expr))
        assert names, f"no gateway series in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} is not exported"
        used |= names
    # and the dashboard shows the headline series of issue 17
    for name in ("gateway_calls_total", "gateway_calls_ended_total", "gateway_calls_refused_total",
                 "gateway_call_setup_seconds_bucket", "gateway_media_turnaround_seconds_bucket",
                 "gateway_call_mos_sum", "gateway_sip_responses_total", "gateway_amd_results_total",
                 "gateway_engine_failures_total", "gateway_webhooks_pending", "gateway_event_loop_lag_seconds_bucket"):
        assert name in used, name
