"""Static INT8 quantization with ONNX Runtime's quantizer: QDQ format, per-channel INT8 weights, UINT8
activations, calibrated on the samples of samples.py.

Three steps, each a clear error when it cannot be done:

1. :func:`prepare`: ONNX Runtime's quantization pre-processing (ONNX shape inference and ORT's basic graph
   optimisations). It is not optional in practice: an exporter that shares one bias tensor between convolutions
   through Identity nodes (torch does, for equal biases) leaves biases that are not initializers, the quantizer
   then keeps them in float, and ORT cannot fuse such a DequantizeLinear -> Conv -> QuantizeLinear unit into
   an INT8 kernel: the "INT8" model runs float convolutions on dequantized tensors, slower than FP32.
2. :func:`calibrate`: activation ranges from the calibration samples, fed one batch at a time (memory stays
   bounded: the calibrator keeps every intermediate tensor of what it is fed, and its histograms stack a call's
   batches, which must then all be one size). Entropy runs on 2,048
   histogram bins, as TensorRT's does; `quantize_static` would give it 128, where it cannot clip anything and
   equals MinMax.
3. :func:`quantize`: `quantize_static` with those ranges (as tensor overrides, so its own calibration pass is
   one batch long), the probabilities kept in float (`Softmax`: an 8-bit softmax rounds them to 1/255).

:func:`coverage` says where INT8 runs: the ops quantized and left in float, and which kernels ONNX Runtime
really runs after its QDQ fusion (a Conv still fed by DequantizeLinear is a fusion that failed).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnx_serve.core.runtime import first_line
from onnx_serve.tools.quantize.defaults import DEFAULT_KEEP_FP32, DEFAULT_METHOD
from onnx_serve.tools.quantize.errors import QuantizeError
from onnx_serve.tools.quantize.progress import Progress

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ENTROPY_BINS = 2048
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Where INT8 pays: the ops whose float kernels do the multiply-adds. Left in float after ORT's fusion (fed by a
# DequantizeLinear), they show a fusion that failed.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"})
QUANTIZED_FROM_KEY = "onnx_serve.quantized_from"
QUANTIZATION_KEY = "onnx_serve.quantization"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    method: str = DEFAULT_METHOD
    per_channel: bool = True
    # 7-bit weights: without AVX-512 VNNI, ORT's x86 U8S8 kernels add products in saturating 16-bit pairs
    # (vpmaddubsw), which 8-bit weights overflow (measured: -0.6 points of MNIST accuracy without it).
    reduce_range: bool = True
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
    exclude_nodes: tuple[str, ...] = ()
    percentile: float = 99.999

    def describe(self) -> dict[str, Any]:
        return {"format": "QDQ", "activations": "UINT8 (asymmetric)",
                "weights": f"INT8 ({'per channel' if self.per_channel else 'per tensor'}, symmetric"
                           f"{', 7-bit range' if self.reduce_range else ''})",
                "calibration_method": self.method, "keep_fp32_ops": list(self.keep_fp32),
                "excluded_nodes": list(self.exclude_nodes),
                **({"percentile": self.percentile} if self.method == "percentile" else {}),
                **({"entropy_bins": ENTROPY_BINS} if self.method == "entropy" else {})}


@dataclass(slots=True)
class Coverage:
    quantized: dict[str, int] = field(default_factory=dict)  # op type -> nodes with INT8 inputs
    kept_float: dict[str, int] = field(default_factory=dict)  # op type -> nodes left in float
    kernels: dict[str, int] = field(default_factory=dict)  # op type -> nodes ORT runs after its QDQ fusion
    unfused: list[str] = field(default_factory=list)  # compute nodes ORT runs in float on dequantized inputs

    def to_json(self) -> dict[str, Any]:
        return {"quantized_ops": self.quantized, "float_ops": self.kept_float, "ort_kernels": self.kernels,
                "unfused_compute_nodes": self.unfused}


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def op_types_to_quantize(keep_fp32: Sequence[str]) -> list[str]:
    """Every op ORT's quantizer can give an INT8 form (its QDQ and QLinear registries), but those kept in float."""
    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(keep_fp32))


def is_quantized(path: Path) -> bool:
    """Whether a model file is one of ours, or any QDQ/QOperator model (so it is not quantized twice)."""
    model = onnx.load(str(path), load_external_data=False)
    return (any(p.key == QUANTIZED_FROM_KEY for p in model.metadata_props)
            or any(n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") for n in model.graph.node))


def prepare(source: Path, work: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (see the module); symbolic shape inference is skipped (it needs
    sympy, and ONNX's own shape inference covers CNNs)."""
    prepared = work / "prepared.onnx"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # onnx and ORT raise their own types for graphs they cannot infer or optimise
        raise QuantizeError(f"{source}: ONNX Runtime's quantization pre-processing fails: {first_line(exc)}") from None
    return prepared


def check_quantizable(path: Path, options: QuantizeOptions) -> None:
    """Refuses a model none of whose ops has an INT8 form, naming its ops."""
    model = onnx.load(str(path), load_external_data=False)
    present = sorted({n.op_type for n in model.graph.node})
    wanted = set(op_types_to_quantize(options.keep_fp32))
    if not wanted.intersection(present):
        kept = [op for op in present if op in options.keep_fp32]
        why = f" ({', '.join(kept)} kept in float by --keep-fp32)" if kept else ""
        raise QuantizeError(f"{path.name}: nothing to quantize: ONNX Runtime has no INT8 kernel for any op of this "
                            f"model ({', '.join(present)}){why}; INT8 covers Conv, MatMul, Gemm, pooling, Add, "
                            "Mul and the like")


def calibrate(model: Path, batches: Sequence[Feeds], options: QuantizeOptions, work: Path,
              progress: bool) -> dict[str, tuple[float, float]]:
    """Each calibrated tensor's (low, high) range, as `options.method` computes it over `batches`."""
    extra: dict[str, Any] = {}
    if options.method == "entropy":
        extra = {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128}
    elif options.method == "percentile":
        extra = {"percentile": options.percentile}
    samples = sum(next(iter(feeds.values())).shape[0] for feeds in batches)
    try:
        calibrator = create_calibrator(model, op_types_to_quantize(options.keep_fp32),
                                       augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=CALIBRATION_METHODS[options.method], extra_options=extra)
        with Progress(samples, f"calibrate ({options.method})", progress) as bar, \
                contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print as they go
            for feeds in batches:  # one batch at a time: the calibrator holds every intermediate tensor it is fed
                calibrator.collect_data(_Feeds([feeds]))
                bar.update(next(iter(feeds.values())).shape[0])
            ranges = calibrator.compute_data()
    except QuantizeError:
        raise
    except Exception as exc:
        raise QuantizeError(f"calibration fails: ONNX Runtime cannot run the model on the calibration samples: "
                            f"{first_line(exc)}") from None
    return {name: (_scalar(data.range_value[0]), _scalar(data.range_value[1])) for name, data in ranges.data.items()}


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).ravel()[0])


def quantize(prepared: Path, output: Path, first_batch: Feeds, ranges: dict[str, tuple[float, float]],
             options: QuantizeOptions, metadata: dict[str, str]) -> None:
    """Writes the INT8 model to `output`, with the source's metadata and `metadata` added."""
    overrides = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}] for name, (low, high) in ranges.items()}
    try:
        _quantize_static(prepared, output, first_batch, overrides, options, op_types_to_quantize(options.keep_fp32))
    except Exception as exc:
        raise QuantizeError(_failure(prepared, output, first_batch, overrides, options, exc)) from None
    model = onnx.load(str(output))
    keys = {p.key for p in model.metadata_props}
    source = onnx.load(str(prepared), load_external_data=False)
    for prop in source.metadata_props:  # provenance (architecture, data, accuracy) travels with the model
        if prop.key not in keys:
            model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(output))


def _quantize_static(prepared: Path, output: Path, first_batch: Feeds, overrides: dict[str, Any],
                     options: QuantizeOptions, op_types: list[str]) -> None:
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer warns on the root logger about what the report already says
    try:
        quantize_static(str(prepared), str(output), _Feeds([first_batch]), quant_format=QuantFormat.QDQ,
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                        nodes_to_exclude=list(options.exclude_nodes), calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": overrides})
    finally:
        logger.setLevel(level)


def _failure(prepared: Path, output: Path, first_batch: Feeds, overrides: dict[str, Any], options: QuantizeOptions,
             error: Exception) -> str:
    """The message for a model the quantizer fails on: the op type that fails on its own, when one does."""
    model = onnx.load(str(prepared), load_external_data=False)
    present = sorted({n.op_type for n in model.graph.node} & set(op_types_to_quantize(options.keep_fp32)))
    for op_type in present:
        try:
            _quantize_static(prepared, output, first_batch, overrides, options, [op_type])
        except Exception as exc:
            nodes = [n.name or n.op_type for n in model.graph.node if n.op_type == op_type][:3]
            return (f"ONNX Runtime's quantizer cannot quantize the {op_type} op (node(s) {', '.join(nodes)}): "
                    f"{first_line(exc)}; keep it in float with --keep-fp32 {op_type}")
    return f"ONNX Runtime's quantizer fails on this model: {first_line(error)}"


def coverage(path: Path, work: Path) -> Coverage:
    """Where INT8 runs in the model at `path` (see the module)."""
    model = onnx.load(str(path), load_external_data=False)
    result = Coverage()
    counts: dict[bool, collections.Counter[str]] = {True: collections.Counter(), False: collections.Counter()}
    producers, consumers = _producers(model), _consumers(model)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            counts[_runs_in_int8(node, producers, consumers, outputs)][node.op_type] += 1
    result.quantized, result.kept_float = dict(sorted(counts[True].items())), dict(sorted(counts[False].items()))
    options = ort.SessionOptions()
    # Extended: ORT's QDQ fusions, without the layout transforms of `all` (hardware-specific, and it says so).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(work / "fused.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = onnx.load(str(work / "fused.onnx"), load_external_data=False)
    result.kernels = dict(sorted(collections.Counter(n.op_type for n in fused.graph.node).items()))
    fused_producers = _producers(fused)
    result.unfused = [n.name or n.op_type for n in fused.graph.node
                      if n.op_type in COMPUTE_OPS and _fed_by_dequantize(n, fused_producers)]
    return result


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def _runs_in_int8(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                  consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    """A QDQ node unit: every input dequantized, every output quantized (so ORT can run it as one INT8 kernel)."""
    inputs = [name for name in node.input if name]
    return (bool(inputs) and all(name in producers and producers[name].op_type == "DequantizeLinear"
                                 for name in inputs)
            and all(name not in outputs and consumers[name]
                    and all(c.op_type == "QuantizeLinear" for c in consumers[name]) for name in node.output))


def _fed_by_dequantize(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    return any(name in producers and producers[name].op_type == "DequantizeLinear" for name in node.input)


def batches_of(tensors: np.ndarray, input_name: str, batch_size: int) -> Iterator[Feeds]:
    """`tensors` (one row per sample) as model feeds of `batch_size` samples (1 for a model without a batch axis,
    whose input is one sample with a leading 1)."""
    for start in range(0, len(tensors), batch_size):
        yield {input_name: np.ascontiguousarray(tensors[start:start + batch_size])}


def metadata_for(source_version: int, options: QuantizeOptions, calibration_count: int) -> dict[str, str]:
    return {QUANTIZED_FROM_KEY: str(source_version),
            QUANTIZATION_KEY: json.dumps({**options.describe(), "calibration_samples": calibration_count})}
