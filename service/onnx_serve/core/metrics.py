"""Every Prometheus metric of onnx-serve, defined once, and the /metrics exporter.

Label values are bounded: model and version come from the repository (or, for unknown models, the
requested name, truncated), api is infer|classify|stream, code is a gRPC status name. With several worker
processes the values live in prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR) and the
exporter aggregates them, so counters never go backwards when one worker's numbers are added to another's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import platform
import socket
from collections.abc import Iterator, Sequence
from socketserver import ThreadingMixIn
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import onnxruntime
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from onnx_serve import __version__
from onnx_serve.core.batching import BatchTiming

log = logging.getLogger("onnx_serve.metrics")
# Sub-millisecond (small CNNs answer in ~100 us) up to seconds (large models under load).
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_LABEL_LENGTH = 64
UNKNOWN_MODEL_LABEL = "(unknown)"

METRIC_NAMES = (
    "onnx_serve_requests_total",
    "onnx_serve_request_duration_seconds",
    "onnx_serve_queue_duration_seconds",
    "onnx_serve_preprocess_duration_seconds",
    "onnx_serve_inference_duration_seconds",
    "onnx_serve_batch_size",
    "onnx_serve_inferences_total",
    "onnx_serve_queue_depth",
    "onnx_serve_inflight_requests",
    "onnx_serve_model_ready",
    "onnx_serve_model_load_duration_seconds",
    "onnx_serve_model_load_failures_total",
    "onnx_serve_execution_provider_info",
    "onnx_serve_build_info",
)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def bounded(value: str) -> str:
    return value[:MAX_LABEL_LENGTH]


class Metrics:
    def __init__(self, latency_buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        mv = ["model", "version"]
        self.requests = Counter("onnx_serve_requests", "RPCs that name a model, by API and gRPC status code.",
                                [*mv, "api", "code"], registry=r)
        self.request_duration = Histogram("onnx_serve_request_duration_seconds",
                                          "Server-side time from receiving a request to answering it.",
                                          [*mv, "api"], buckets=latency_buckets, registry=r)
        self.queue_duration = Histogram("onnx_serve_queue_duration_seconds",
                                        "Time a request waited in the model's batcher.", mv,
                                        buckets=latency_buckets, registry=r)
        self.preprocess_duration = Histogram("onnx_serve_preprocess_duration_seconds",
                                             "Image decode and transforms of one image (Classify).", mv,
                                             buckets=latency_buckets, registry=r)
        self.inference_duration = Histogram("onnx_serve_inference_duration_seconds",
                                            "One ONNX Runtime run (a whole batch).", mv,
                                            buckets=latency_buckets, registry=r)
        self.batch_size = Histogram("onnx_serve_batch_size", "Samples per executed batch.", mv,
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.inferences = Counter("onnx_serve_inferences", "Samples (images) inferred.", mv, registry=r)
        self.queue_depth = Gauge("onnx_serve_queue_depth", "Requests waiting in the model's batcher.", mv,
                                 multiprocess_mode="livesum", registry=r)
        self.inflight = Gauge("onnx_serve_inflight_requests", "Requests being handled, per model.", ["model"],
                              multiprocess_mode="livesum", registry=r)
        self.model_ready = Gauge("onnx_serve_model_ready", "1 when the model version is ready to serve.", mv,
                                 multiprocess_mode="livemin", registry=r)
        self.model_load_duration = Histogram("onnx_serve_model_load_duration_seconds",
                                             "Time to load a model version, warm-up included.", mv,
                                             buckets=LOAD_BUCKETS_S, registry=r)
        self.model_load_failures = Counter("onnx_serve_model_load_failures",
                                           "Loads of a model (at start, RepositoryModelLoad, SIGHUP) that failed: "
                                           "its config.yaml, or a version that did not load and warm up.",
                                           ["model"], registry=r)
        self.provider_info = Gauge("onnx_serve_execution_provider_info",
                                   "Execution providers a model version's session really runs on.",
                                   [*mv, "provider"], multiprocess_mode="livemax", registry=r)
        self.build_info = Gauge("onnx_serve_build_info", "onnx-serve build and runtime versions.",
                                ["version", "onnxruntime", "python"], multiprocess_mode="livemax", registry=r)
        self.build_info.labels(__version__, onnxruntime.__version__, platform.python_version()).set(1)

        self._request_series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._inflight_series: dict[str, Any] = {}

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model, version)

    def model_label(self, requested: str, known: bool) -> str:
        """The `model` label of a request: the model's name (truncated) when the repository has it (loaded, or
        a directory that failed to load), else UNKNOWN_MODEL_LABEL for every name. Label values come from the
        repository, never from the client, so no name a client sends creates a series."""
        return bounded(requested) if known else UNKNOWN_MODEL_LABEL

    def inflight_for(self, model: str) -> Any:
        series = self._inflight_series.get(model)
        if series is None:
            series = self._inflight_series[model] = self.inflight.labels(model)
        return series

    def request_done(self, model: str, version: str, api: str, code: str, seconds: float) -> None:
        key = (model, version, api, code)
        series = self._request_series.get(key)
        if series is None:  # label lookups take a lock and build tuples: do them once per series
            series = self._request_series[key] = (self.requests.labels(*key),
                                                  self.request_duration.labels(model, version, api))
        series[0].inc()
        series[1].observe(seconds)


class VersionMetrics:
    """The series of one model version, bound once so the request path does no label lookups; also the
    batcher's observer."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.metrics = metrics
        self.model, self.version = model, version
        self.queue_duration = metrics.queue_duration.labels(model, version)
        self.preprocess_duration = metrics.preprocess_duration.labels(model, version)
        self.inference_duration = metrics.inference_duration.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.inferences = metrics.inferences.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)

    def batch_executed(self, timing: BatchTiming) -> None:
        self.inference_duration.observe(timing.compute_infer_ns / 1e9)
        self.batch_size.observe(timing.batch_size)
        self.inferences.inc(timing.batch_size)

    def queue_depth_changed(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def set_ready(self, ready: bool, providers: Sequence[str] = ()) -> None:
        self.metrics.model_ready.labels(self.model, self.version).set(1 if ready else 0)
        for provider in providers:
            self.metrics.provider_info.labels(self.model, self.version, provider).set(1)

    def forget(self) -> None:
        """Drops the series of an unloaded version, so a retired version does not read as "not ready"
        forever. prometheus_client cannot remove series from multiprocess files: there the version's ready
        gauge reads 0 instead."""
        m = self.metrics
        if multiprocess_mode():
            self.set_ready(False)
            return
        for family in (m.model_ready, m.queue_depth):
            _remove(family, self.model, self.version)
        for labels in _label_sets(m.provider_info):
            if labels[:2] == (self.model, self.version):
                _remove(m.provider_info, *labels)


def _label_sets(metric: Gauge) -> list[Sequence[str]]:
    return list(metric._metrics)  # prometheus_client keeps children keyed by label values


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


class TolerantMultiProcessCollector(multiprocess.MultiProcessCollector):
    """The workers' aggregate, without the files it cannot read. A worker killed in the middle of a write, or
    one restarted while its file is being created, leaves a file that fails to parse; prometheus_client would
    then fail every scrape (500) for as long as the file stays. Such a file is left out (logged once)."""

    def __init__(self, registry: CollectorRegistry, path: str | None = None) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]
        self._reported: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        readable = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                for key, *_ in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                    json.loads(key)
            except FileNotFoundError:
                continue  # a dead worker's live gauges, removed by mark_process_dead since the glob
            except Exception as error:  # any unreadable file is left out, never the whole scrape
                if path not in self._reported:
                    self._reported.add(path)
                    log.warning("metrics: leaving out %s, which cannot be read: %s", path, error)
                continue
            readable.append(path)
        return iter(self.merge(readable, accumulate=True))  # type: ignore[no-untyped-call]


class WorkerRestarts:
    """onnx_serve_worker_restarts_total{worker}: worker processes the --workers supervisor restarted. The
    supervisor serves no requests and writes no multiprocess files, so this is a collector of its own, exported
    beside the workers' aggregate (start_exporter's `extra`); every worker index is a series from the start."""

    def __init__(self, workers: int) -> None:
        self.counts = [0] * workers  # written by the supervisor's main thread, read by the exporter's

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("onnx_serve_worker_restarts",
                                     "Worker processes restarted after one died or exited unasked.", labels=["worker"])
        for index, count in enumerate(self.counts):
            family.add_metric([str(index)], count)
        yield family


# wsgiref's serve_forever looks for a shutdown request once per poll interval: short, so that stopping a
# server (an in-process one in a notebook or a test, too) takes milliseconds, not half a second.
EXPORTER_POLL_S = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape would be noise
        pass


class _ExporterServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def start_exporter(host: str, port: int, metrics: Metrics | None, extra: Sequence[Collector] = ()
                   ) -> tuple[WSGIServer, Thread, int]:
    """Serves /metrics; in multiprocess mode it aggregates every worker's files instead of one registry, and
    adds the `extra` collectors (the supervisor's own metrics) to that aggregate."""
    if metrics is None or multiprocess_mode():
        registry = CollectorRegistry()
        TolerantMultiProcessCollector(registry)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        for own in extra:
            registry.register(own)
    else:
        registry = metrics.registry
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("ExporterServer", (_ExporterServer,), {"address_family": family})
    server: WSGIServer = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": EXPORTER_POLL_S}, name="metrics",
                    daemon=True)
    thread.start()
    return server, thread, server.server_port
