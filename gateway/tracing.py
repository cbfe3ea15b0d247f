"""Optional OpenTelemetry tracing of each call's setup: from the webhook / INVITE to the engine connected.

Off by default, and then nothing here imports OpenTelemetry. `--otel-endpoint URL` (`GATEWAY_OTEL_ENDPOINT`)
turns it on: spans go to that OTLP/HTTP collector endpoint (e.g. `http://collector:4318/v1/traces`) in batches,
from the SDK's own background thread (`pip install -e '.[otel]'`). The SDK's standard variables
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`…) apply as usual.

One trace per call, root span `call.setup` (attributes `gateway.call_id`, `gateway.carrier`,
`gateway.direction`, `gateway.proc`) with two children:

- `call.media`: the call created (webhook / INVITE handled) → media flowing (answered, the bus attached);
- `call.engine_connect`: media flowing → the engine's first read of the call (an in-process engine started, a
  `ws://` engine connected and sent its start message, an accept-mode engine claimed).

The root ends when the engine is connected, or when the call ends before that (status ERROR, with the hangup
reason): a trace that stops at `call.media` is a call that was never answered.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from .call import Call
    from .config import Settings

log = logging.getLogger("gateway.tracing")

SERVICE_NAME = "telephony-gateway"


def _ns(monotonic: float) -> int:
    """A time.monotonic() instant as the wall-clock nanoseconds OpenTelemetry timestamps are in."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


@dataclass
class _Setup:
    root: Span
    step: Span


class CallTracing:
    """Spans of call setup; every method is a no-op when tracing is off (`tracer` None)."""

    def __init__(self, tracer: Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self._provider = provider
        self._calls: dict[str, _Setup] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> CallTracing:
        """Tracing to `settings.otel_endpoint` over OTLP/HTTP, or off when it is empty."""
        if not settings.otel_endpoint:
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": settings.proc_id})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
        log.info("tracing call setup", extra={"otel_endpoint": settings.otel_endpoint})
        return cls(provider.get_tracer("gateway"), provider)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def call_created(self, call: Call, proc: str) -> None:
        if self.tracer is None:
            return
        start = _ns(call.created)
        attrs: dict[str, Any] = {"gateway.call_id": call.id, "gateway.carrier": call.carrier,
                                 "gateway.direction": call.direction, "gateway.proc": proc}
        root = self.tracer.start_span("call.setup", attributes=attrs, start_time=start)
        from opentelemetry.trace import set_span_in_context

        step = self.tracer.start_span("call.media", context=set_span_in_context(root), start_time=start)
        self._calls[call.id] = _Setup(root, step)

    def media_up(self, call: Call) -> None:
        setup = self._calls.get(call.id)
        if setup is None or self.tracer is None:
            return
        from opentelemetry.trace import set_span_in_context

        setup.step.end()
        setup.step = self.tracer.start_span("call.engine_connect", context=set_span_in_context(setup.root))

    def engine_connected(self, call: Call) -> None:
        setup = self._calls.pop(call.id, None)
        if setup is not None:
            setup.step.end()
            setup.root.end()

    def call_ended(self, call: Call, reason: str) -> None:
        """The call ended before its engine connected: close the spans as failed setup."""
        setup = self._calls.pop(call.id, None)
        if setup is None:
            return
        from opentelemetry.trace import Status, StatusCode

        for span in (setup.step, setup.root):
            span.set_status(Status(StatusCode.ERROR, reason or "ended"))
            span.end()

    async def shutdown(self) -> None:
        """Flush what is batched (the exporter's HTTP request blocks: off the event loop)."""
        if self._provider is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._provider.shutdown)
            self._provider = None
