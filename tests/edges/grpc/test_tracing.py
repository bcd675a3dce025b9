"""Optional OpenTelemetry tracing: spans for a request and its stages, in process with an in-memory
exporter and end to end through a real server with the console exporter."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from onnx_serve.core import tracing
from onnx_serve.core.accounting import CallRecord as Call
from onnx_serve.core.batching import BatchTiming, JobResult
from onnx_serve.core.metrics import Metrics
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from tests.helpers.serving import add_model, conv_classifier_model, start_server


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider.get_tracer("test"))
    yield exporter
    tracing.use(None)


def test_off_by_default_and_collects_nothing() -> None:
    assert not tracing.enabled()
    call = Call(Metrics(), "infer", "m", "id-1")
    call.stage("preprocess", 0, 1)
    call.finish()
    assert call.stages is None


def test_a_request_span_has_queue_and_inference_children(spans: InMemorySpanExporter) -> None:
    call = Call(Metrics(), "infer", "m", "id-7", version="2")
    done = call.started_ns + 5_000_000
    call.batch_stages(JobResult([], queue_ns=2_000_000, batch=BatchTiming(4, 100_000, 1_000_000)), done)
    call.code = "INVALID_ARGUMENT"
    call.finish()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    root, queue, inference = by_name["onnx-serve infer"], by_name["queue"], by_name["inference"]
    assert queue.parent.span_id == root.context.span_id == inference.parent.span_id
    assert inference.end_time - inference.start_time == 1_000_000
    assert queue.end_time - queue.start_time == 2_000_000
    assert inference.start_time - queue.end_time == 100_000  # compute_input sits between them
    assert root.attributes["onnx_serve.request_id"] == "id-7" and root.attributes["onnx_serve.version"] == "2"
    assert not root.status.is_ok


def test_the_server_exports_spans_when_enabled(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    conv_classifier_model(tmp_path / "conv" / "1" / "model.onnx")
    (tmp_path / "conv" / "config.yaml").write_text("preprocess: {color_mode: L, width: 8, height: 8}\n")
    server = start_server(tmp_path, "--tracing", env={"OTEL_TRACES_EXPORTER": "console"})
    try:
        with tc.InferenceServerClient(server.url) as client:
            inputs = [tc.InferInput(name, [1, 4], "FP32") for name in ("a", "b")]
            for tensor in inputs:
                tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer("add", inputs, request_id="traced-1")
        image = io.BytesIO()
        Image.new("L", (16, 16), 128).save(image, "PNG")
        with grpc.insecure_channel(server.url) as channel:
            classify_pb2_grpc.ImageClassifierStub(channel).Classify(classify_pb2.ClassifyRequest(
                model_name="conv", images=[classify_pb2.Image(encoded=image.getvalue())]))
    finally:
        assert server.stop(signal.SIGTERM) == 0
    output = server.log()
    names = {json.loads(block)["name"] for block in _json_blocks(output)}
    assert {"onnx-serve infer", "onnx-serve classify", "queue", "inference", "preprocess"} <= names
    assert '"onnx_serve.request_id": "traced-1"' in output


def _json_blocks(text: str) -> Iterator[str]:
    """The console exporter prints each span as an indented JSON object starting with '{' on its own line."""
    block: list[str] = []
    for line in text.splitlines():
        if line == "{":
            block = [line]
        elif block:
            block.append(line)
            if line == "}":
                yield "\n".join(block)
                block = []
