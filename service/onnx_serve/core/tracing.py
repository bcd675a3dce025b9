"""Optional OpenTelemetry tracing: one span per request with child spans for preprocess, queue and inference.

Off unless `--tracing` is given; then the opentelemetry SDK must be installed (`pip install
"onnx-serve[tracing]"`) and is configured by the standard OTEL_* variables: OTEL_TRACES_EXPORTER=otlp
(default, needs the OTLP exporter package), console or none; OTEL_EXPORTER_OTLP_ENDPOINT;
OTEL_SERVICE_NAME (default onnx-serve). When off, `enabled()` is one global read and nothing else runs.

Queue and inference times are known only once the batch has run, so those spans are recorded afterwards
with the measured start and end times: the request path never awaits anything for tracing.
"""

from __future__ import annotations

import os
import time
from typing import Any

_tracer: Any = None
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def setup(service_name: str = "onnx-serve") -> None:
    """Turns tracing on for this process; raises SystemExit with the fix when the SDK is missing."""
    global _tracer, _provider
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise SystemExit('--tracing needs the OpenTelemetry SDK: pip install "onnx-serve[tracing]"') from None
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"onnx_serve.name": name}))
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise SystemExit("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-grpc") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name != "none":
        raise SystemExit(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported (otlp, console or none)")
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = trace.get_tracer("onnx-serve")


def use(tracer: Any) -> None:
    """Traces with the given tracer (tests pass one with an in-memory exporter); None turns tracing off."""
    global _tracer
    _tracer = tracer


def shutdown() -> None:
    """Flushes spans still buffered; called when the server stops."""
    if _provider is not None:
        _provider.shutdown()


def record_request(api: str, model: str, version: str, request_id: str, code: str, started_ns: int,
                   ended_ns: int, stages: list[tuple[str, int, int]]) -> None:
    """Records one request's span and its stages' child spans. Times are time.perf_counter_ns() values;
    `stages` holds (name, start, end), e.g. ("queue", enqueued, dispatched)."""
    from opentelemetry import trace

    offset = time.time_ns() - time.perf_counter_ns()  # perf_counter ns -> Unix epoch ns, read once
    attributes = {"onnx_serve.api": api, "onnx_serve.model": model, "onnx_serve.version": version,
                  "onnx_serve.request_id": request_id, "rpc.grpc.status_code": code}
    root = _tracer.start_span(f"onnx-serve {api}", start_time=started_ns + offset, attributes=attributes)
    context = trace.set_span_in_context(root)
    for name, start, end in stages:
        _tracer.start_span(name, context=context, start_time=start + offset).end(end_time=end + offset)
    if code != "OK":
        root.set_status(trace.Status(trace.StatusCode.ERROR, code))
    root.end(end_time=ended_ns + offset)
