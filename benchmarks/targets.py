"""Issue #15's targets, each a ratio (or a bound) measured in this one run, with "met" yes/no: rows for the
"Targets (issue #15)" table of docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.tables import Doc, batching, n, ratio, server_field

TRITON_X = 1.5  # best of onnx-serve 1 and 2 workers / Triton + Python backend, h2load 4x32
NULL_X = 0.8  # onnx-serve (best of 1-2 workers) / the one-process do-nothing server, h2load 4x32
CPU_US = 220.0  # server CPU per request, 1 worker, h2load 4x32 ...
CPU_NULL_REFERENCE_US = 168.0  # ... set where the do-nothing server took this much
MEAN_BATCH = 16.0  # at 128 in flight (4x32), no configured delay
WORKERS_X = 1.1  # --workers 2 / 1 worker, h2load 4x32
MLSERVER_X = 2.5  # Python client c=32: onnx-serve / MLServer at its best setting
P50_ADDED_MS = 0.2  # Python client c=1: p50 <= null p50 + this
STREAM_X = 1.3  # Python client c=32: ModelStreamInfer / unary
RESNET_RAW_X = 0.95  # ResNet-18 c=8: served / raw ONNX Runtime at its best batch
RESNET_TRITON_X = 1.15  # ResNet-18 c=8: served / Triton + Python backend, Python client
RSS_MIB = 150.0  # under load, the bundled model

Row = list[str]


def met(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def _at_least(r: float | None, want: float) -> bool | None:
    return None if r is None else r >= want


def target_rows(doc: Doc) -> list[Row]:
    rows: list[Row] = []
    for section in (_c_client, _python_client, _resnet, _memory):
        section(doc, rows.append)
    return rows


def _c_client(doc: Doc, add: Callable[[Row], None]) -> None:
    one, two = ((doc.h2load(key) or {}).get("items_per_s") for key in ("onnx-serve", "onnx-serve-2-workers"))
    known = [rate for rate in (one, two) if rate is not None]
    best = max(known) if known else None
    which = f"1 worker {n(one)}, 2 workers {n(two)}"
    for peer, label, want in (("pytriton", "Triton 2.51 with its Python backend (PyTriton)", TRITON_X),
                              ("null", "the one-process do-nothing server", NULL_X)):
        theirs = (doc.h2load(peer) or {}).get("items_per_s")
        r = ratio(best, theirs)
        add([f"C client 4x32: onnx-serve (best of 1 and 2 workers) >= {want} x {label}",
             f"{n(best)} / {n(theirs)} = {n(r, 2)} x ({which})", met(_at_least(r, want))])
    ours, null = doc.h2load("onnx-serve"), doc.h2load("null")
    our_cpu = (ours or {}).get("server_cpu_us_per_request")
    null_cpu = (null or {}).get("server_cpu_us_per_request")
    add([f"C client 4x32: server CPU per request, 1 worker <= {CPU_US:g} µs (absolute; set on a machine where the "
         f"do-nothing server took {CPU_NULL_REFERENCE_US:g} µs: informational, the ratio below decides)",
         f"{n(our_cpu)} µs (do-nothing server here: {n(null_cpu)} µs)",
         met(None if our_cpu is None else our_cpu <= CPU_US) + " (not deciding)"])
    want_ratio = CPU_US / CPU_NULL_REFERENCE_US
    r = ratio(our_cpu, null_cpu)
    add([f"C client 4x32: server CPU per request, 1 worker / the do-nothing server's <= {CPU_US:g}/"
         f"{CPU_NULL_REFERENCE_US:g} = {want_ratio:.2f} (same run: decides)",
         f"{n(our_cpu)} / {n(null_cpu)} = {n(r, 2)}", met(None if r is None else r <= want_ratio)])
    batch = server_field(ours, "avg_batch_size")
    delay = batching(doc.state).get("max_queue_delay_microseconds", 0)
    add([f"C client 4x32 (128 in flight), 1 worker: mean batch >= {MEAN_BATCH:g}, no configured delay",
         f"{n(batch, 1)} (max_queue_delay_microseconds: {delay})",
         met(None if batch is None else batch >= MEAN_BATCH and not delay)])
    r = ratio(two, one)
    add([f"C client 4x32: --workers 2 >= {WORKERS_X} x one worker", f"{n(two)} / {n(one)} = {n(r, 2)} x",
         met(_at_least(r, WORKERS_X))])


def _python_client(doc: Doc, add: Callable[[Row], None]) -> None:
    ours = doc.rate("onnx-serve", 32)
    settings = [(label, doc.rate(key, 32)) for key, label in (("mlserver", "batching off"),
                                                               ("mlserver-batching", "adaptive batching"))]
    known = [(rate, label) for label, rate in settings if rate is not None]
    best = max(known) if known else None
    r = ratio(ours, best[0] if best else None)
    add([f"Python client c=32: onnx-serve >= {MLSERVER_X} x MLServer at its best setting (in-process, batching "
         "off or on)", f"{n(ours)} / {n(best[0] if best else None)} = {n(r, 2)} x ("
         + ", ".join(f"{label} {n(rate)}" for label, rate in settings) + ")", met(_at_least(r, MLSERVER_X))])
    ours1, null1 = doc.level("onnx-serve", 1), doc.level("null", 1)
    if ours1 and null1:
        a, b = ours1["latency_ms"]["p50"], null1["latency_ms"]["p50"]
        add([f"Python client c=1: p50 <= the do-nothing server's p50 + {P50_ADDED_MS} ms",
             f"{a:.3f} ms vs {b:.3f} + {P50_ADDED_MS} ms", met(a <= b + P50_ADDED_MS)])
    else:
        add([f"Python client c=1: p50 <= the do-nothing server's p50 + {P50_ADDED_MS} ms", "-", "-"])
    stream, unary = doc.rate("onnx-serve-stream", 32), doc.rate("onnx-serve", 32)
    r = ratio(stream, unary)
    add([f"Python client c=32: ModelStreamInfer >= {STREAM_X} x unary ModelInfer",
         f"{n(stream)} / {n(unary)} = {n(r, 2)} x", met(_at_least(r, STREAM_X))])


def _resnet(doc: Doc, add: Callable[[Row], None]) -> None:
    raw = doc.state.raw.get("resnet18")
    raw_best = raw["best"]["items_per_s"] if raw else None
    served = doc.rate("onnx-serve-resnet18", 8)
    r = ratio(served, raw_best)
    add([f"ResNet-18 c=8: served >= {RESNET_RAW_X} x raw ONNX Runtime at its best batch",
         f"{n(served, 1)} / {n(raw_best, 1)} = {n(r, 2)} x" + (f" (batch {raw['best']['batch_size']})" if raw else ""),
         met(_at_least(r, RESNET_RAW_X))])
    triton = doc.rate("pytriton-resnet18", 8)
    r = ratio(served, triton)
    add([f"ResNet-18 c=8 (Python client): served >= {RESNET_TRITON_X} x Triton with its Python backend (PyTriton, "
         "the same ONNX)", f"{n(served, 1)} / {n(triton, 1)} = {n(r, 2)} x", met(_at_least(r, RESNET_TRITON_X))])


def _memory(doc: Doc, add: Callable[[Row], None]) -> None:
    server = doc.state.servers.get("onnx-serve")
    rss = server["rss_mb"] if server and server.get("rss_mb") else None
    bundled = doc.state.settings.get("mnist_bundled", True)
    add([f"RSS under load <= {RSS_MIB:g} MiB, 1 worker, the bundled model"
         + ("" if bundled else " (**a stand-in model ran**: models/mnist-cnn is not built)"),
         f"{n(rss)} MiB (the most of any level, both clients)", met(None if rss is None else rss <= RSS_MIB)])


def summary(rows: list[Row]) -> str:
    deciding = [row[2] for row in rows if "not deciding" not in row[2]]
    return (f"{sum(m == 'yes' for m in deciding)} of {len(deciding)} targets met"
            + (f", {sum(m == '-' for m in deciding)} not measured" if "-" in deciding else "") + ".")
