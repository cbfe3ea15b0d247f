"""/metrics with prometheus_client: the labelled call, SIP, refusal, setup, turnaround and loop-lag series that real
calls (SIPp on loopback) produce, read back with the library's own parser."""
from __future__ import annotations

import socket

import pytest

from sipp import free_port, metric_value, metrics_text, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(120)]


async def test_a_sip_call_is_counted_by_carrier_direction_and_outcome(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111", duration_ms=2000,
                         timeout_s=20)
    res.assert_calls(successful=1)
    await wait_for(lambda: not gw.calls.active, timeout=10)
    text = await metrics_text(gw)
    assert metric_value(text, "gateway_calls_total", carrier="sip", direction="inbound") == 1
    # SIPp hung up: completed, hangup_source user
    assert metric_value(text, "gateway_calls_ended_total", carrier="sip", direction="inbound", status="completed",
                        hangup_source="user") == 1
    assert metric_value(text, "gateway_call_setup_seconds_count", carrier="sip", direction="inbound") == 1
    setup = metric_value(text, "gateway_call_setup_seconds_sum", carrier="sip", direction="inbound")
    assert setup is not None and 0 < setup < 5
    # we sent 200 OK (and the 200 of SIPp's BYE), no provisional (answered at once); SIPp sent no response to us
    assert metric_value(text, "gateway_sip_responses_total", direction="sent", code_class="2xx") >= 2
    assert metric_value(text, "gateway_sip_responses_total", direction="received", code_class="2xx") is None
    # 2 s of echoed audio: about two sampled frames each way went through the bus
    assert metric_value(text, "gateway_media_turnaround_seconds_count", carrier="sip", direction="in") >= 1
    assert metric_value(text, "gateway_media_turnaround_seconds_count", carrier="sip", direction="out") >= 1
    assert metric_value(text, "gateway_media_turnaround_seconds_bucket", carrier="sip", direction="in",
                        le="+Inf") >= 1
    # the loop-lag probe wakes every 0.5 s, so a call of 2 s saw several samples
    assert metric_value(text, "gateway_event_loop_lag_seconds_count") >= 2
    assert metric_value(text, "process_resident_memory_bytes") > 0


async def test_refusals_at_capacity_are_counted(make_gateway):
    gw = await sip_gateway(make_gateway, max_calls=0)
    await sip_number(gw)
    res = await sipp_uac("uac_capacity.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)   # SIPp checked the 503 + Retry-After
    text = await metrics_text(gw)
    assert metric_value(text, "gateway_calls_refused_total", carrier="sip", reason="capacity") == 1
    assert metric_value(text, "gateway_sip_responses_total", direction="sent", code_class="5xx") == 1
    assert metric_value(text, "gateway_calls_total", carrier="sip", direction="inbound") is None


async def test_engine_failures_are_counted_by_reason(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, engine=f"ws://127.0.0.1:{free_port(socket.SOCK_STREAM)}/nobody")   # nothing listens
    res = await sipp_uac("uac_gateway_hangs_up.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=20)
    res.assert_calls(successful=1)     # the gateway's BYE: the engine never answered
    await wait_for(lambda: not gw.calls.active, timeout=10)
    text = await metrics_text(gw)
    assert metric_value(text, "gateway_engine_failures_total", reason="engine_unreachable") == 1
    assert metric_value(text, "gateway_calls_ended_total", carrier="sip", direction="inbound", status="completed",
                        hangup_source="agent") == 1


async def test_openmetrics_is_served_when_asked_for(make_gateway):
    import aiohttp

    gw = await sip_gateway(make_gateway)
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url("/metrics"), headers={"Accept": "application/openmetrics-text"}) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            body = await r.text()
    assert body.rstrip().endswith("# EOF")


def test_cached_children_count_into_their_own_series():
    """`GatewayMetrics.child` hands out one child per label values and every count lands in its series."""
    from gateway.metrics import GatewayMetrics

    m = GatewayMetrics()
    for status in (180, 200, 200, 200, 404):
        m.sip_response("sent", status)
    m.sip_response("received", 200)
    assert m.child(m.calls, "sip", "inbound") is m.child(m.calls, "sip", "inbound")
    m.child(m.calls, "sip", "inbound").inc(2)
    text = m.render()[0].decode()
    assert metric_value(text, "gateway_sip_responses_total", direction="sent", code_class="2xx") == 3
    assert metric_value(text, "gateway_sip_responses_total", direction="sent", code_class="1xx") == 1
    assert metric_value(text, "gateway_sip_responses_total", direction="sent", code_class="4xx") == 1
    assert metric_value(text, "gateway_sip_responses_total", direction="received", code_class="2xx") == 1
    assert metric_value(text, "gateway_calls_total", carrier="sip", direction="inbound") == 2
