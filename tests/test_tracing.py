"""Optional OpenTelemetry tracing of call setup (gateway/tracing.py): off by default; with the SDK's in-memory
exporter a real SIPp call gives one trace (call.setup → call.media → call.engine_connect) and a call that fails
before its engine gives an ERROR trace; with `otel_endpoint` set the spans reach an OTLP/HTTP collector stand-in
on loopback as protobuf."""
from __future__ import annotations

import pytest
from aiohttp import web

pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from gateway.tracing import CallTracing  # noqa: E402
from sipp import needs_sipp, serve_app, sip_gateway, sip_number, sipp_uac, wait_for  # noqa: E402

pytestmark = [needs_sipp, pytest.mark.timeout(120)]


def in_memory(gw) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw.tracing = CallTracing(provider.get_tracer("test"))
    return exporter


async def test_tracing_is_off_by_default(make_gateway):
    gw = await sip_gateway(make_gateway)
    assert not gw.tracing.enabled


async def test_a_call_setup_is_one_trace_from_invite_to_engine(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    exporter = in_memory(gw)
    res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111", duration_ms=1000,
                         timeout_s=20)
    res.assert_calls(successful=1)
    spans = {s.name: s for s in await wait_for(lambda: len(exporter.get_finished_spans()) == 3
                                               and exporter.get_finished_spans(), timeout=10)}
    root, media, engine = spans["call.setup"], spans["call.media"], spans["call.engine_connect"]
    assert root.parent is None
    assert media.parent.span_id == root.context.span_id and engine.parent.span_id == root.context.span_id
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert root.attributes["gateway.carrier"] == "sip" and root.attributes["gateway.direction"] == "inbound"
    row = (await gw.store.list_calls(1, 10))[0][0]
    assert root.attributes["gateway.call_id"] == row["call_uuid"]
    assert root.start_time == media.start_time and media.end_time <= engine.start_time
    assert engine.end_time <= root.end_time and root.status.status_code is StatusCode.UNSET
    assert (root.end_time - root.start_time) / 1e9 < 5


async def test_a_call_that_fails_before_its_engine_ends_its_trace_in_error(make_gateway):
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    exporter = in_memory(gw)
    res = await sipp_uac("uac_no_common_codec.xml", gw.carriers["sip"].port, service="15550001111", timeout_s=10)
    res.assert_calls(successful=1)   # SIPp got its 488
    spans = await wait_for(lambda: len(exporter.get_finished_spans()) == 2 and exporter.get_finished_spans(),
                           timeout=10)
    assert sorted(s.name for s in spans) == ["call.media", "call.setup"]
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)
    assert "488" in next(s for s in spans if s.name == "call.setup").status.description


async def test_spans_reach_an_otlp_http_collector(make_gateway):
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        received.append(msg)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner, port = await serve_app(app)
    try:
        gw = await sip_gateway(make_gateway, otel_endpoint=f"http://127.0.0.1:{port}/v1/traces")
        assert gw.tracing.enabled
        await sip_number(gw)
        res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111",
                             duration_ms=500, timeout_s=20)
        res.assert_calls(successful=1)
        await wait_for(lambda: not gw.calls.active, timeout=10)
        await gw.tracing.shutdown()          # what Gateway.stop() does: flush the batch
        names = {span.name for msg in received for rs in msg.resource_spans for ss in rs.scope_spans
                 for span in ss.spans}
        assert names == {"call.setup", "call.media", "call.engine_connect"}
        service = {a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes}
        assert service["service.name"] == "telephony-gateway" and service["service.instance.id"]
    finally:
        await runner.cleanup()
