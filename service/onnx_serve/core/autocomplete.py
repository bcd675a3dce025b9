"""A model's config completed from its graph, and checked against it, at load.

config.yaml: every input and output comes from the graph, as it is; max_batch_size is the config's or, when
it gives none, 64 for a graph whose tensors all have a dynamic first axis (else 0).

config.pbtxt, with Triton's semantics (its auto-complete, then the ONNX Runtime backend's checks):
- when the file declares both inputs and outputs, nothing is completed (max_batch_size 0 means 0);
- else the missing side comes from the graph (a tensor with no dims but the batch axis becomes dims [ 1 ]
  with an empty reshape), max_batch_size 0 becomes 4 for a graph that can batch (Triton's default), and a
  model with max_batch_size > 1 and no dynamic_batching gets `dynamic_batching { }`;
- dynamic_batching without preferred_batch_size prefers max_batch_size (Triton's normalisation);
- every input of the graph must be declared, each output declared must exist; data types must match; dims
  (or reshape, when given) must match the graph's shape, after the batch axis when max_batch_size > 0: a
  dynamic graph dimension takes any configured size for an input, an output's must be the same.
The answer also says what the runner reshapes (runtime.IOPlan) and the clients see (runtime.Signature).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.model_config import (
    DEFAULT_MAX_BATCH_SIZE,
    DynamicBatching,
    ModelConfig,
    TensorConfig,
    triton_type,
)
from onnx_serve.core.runtime import IOPlan, Reshape, Signature
from onnx_serve.imaging import load_labels
from onnx_serve.types import TensorSpec

log = logging.getLogger(__name__)
TRITON_DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size


@dataclass(frozen=True, slots=True)
class Served:
    config: ModelConfig  # completed: max_batch_size, inputs, outputs, dynamic_batching are final
    signature: Signature  # what clients see and send
    plan: IOPlan | None  # what the runner changes between that and the graph (None: nothing)


def complete(config: ModelConfig, graph: Signature, model_dir: Path, where: str) -> Served:
    served = _complete_triton(config, graph, where) if config.triton else _complete_ours(config, graph, where)
    labels = _labels(served.config.outputs, model_dir)
    if labels:
        signature = served.signature
        served = dataclasses.replace(served, signature=Signature(signature.inputs, signature.outputs, labels))
    return served


def _complete_ours(config: ModelConfig, graph: Signature, where: str) -> Served:
    max_batch_size = config.max_batch_size
    batchable = graph.has_batch_axis()
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    elif max_batch_size > 0 and not batchable:
        raise ConfigError(f"{where}: max_batch_size is {max_batch_size} but the model's inputs and outputs do not "
                          "all have a dynamic first (batch) axis")
    skip = 1 if max_batch_size else 0
    inputs = tuple(TensorConfig(s.name, s.datatype, s.shape[skip:]) for s in graph.inputs)
    outputs = tuple(TensorConfig(s.name, s.datatype, s.shape[skip:], label_filename=config.labels or "")
                    for s in graph.outputs)
    completed = dataclasses.replace(config, max_batch_size=max_batch_size, inputs=inputs, outputs=outputs)
    return Served(completed, graph, None)


def _complete_triton(config: ModelConfig, graph: Signature, where: str) -> Served:
    declared = bool(config.inputs) and bool(config.outputs)
    max_batch_size = config.max_batch_size or 0
    batching = config.dynamic_batching
    if not declared:
        batchable = graph.has_batch_axis()
        if batchable and max_batch_size == 0:
            max_batch_size = TRITON_DEFAULT_MAX_BATCH_SIZE
            log.warning("%s: max_batch_size set to %d, as Triton's auto-complete does for a model that can batch "
                        "(give max_batch_size to choose)", where, max_batch_size)
        elif not batchable and max_batch_size:
            raise ConfigError(f"{where}: max_batch_size is {max_batch_size} but the model does not support "
                              "batching: every input and output of the graph needs a dynamic first dimension")
        if max_batch_size > 1 and batching is None:
            batching = DynamicBatching(max_queue_size=0)  # Triton's `dynamic_batching { }`
    if batching is not None:
        if not batching.preferred_batch_size and max_batch_size:
            batching = dataclasses.replace(batching, preferred_batch_size=(max_batch_size,))
        too_big = [size for size in batching.preferred_batch_size if size > max_batch_size]
        if too_big:
            raise ConfigError(f"{where}: dynamic_batching.preferred_batch_size {too_big} above max_batch_size "
                              f"{max_batch_size}")
    inputs = config.inputs or tuple(_from_graph(spec, max_batch_size) for spec in graph.inputs)
    outputs = config.outputs or tuple(_from_graph(spec, max_batch_size) for spec in graph.outputs)
    _check_against_graph(inputs, graph.inputs, "input", max_batch_size, where)
    _check_against_graph(outputs, graph.outputs, "output", max_batch_size, where)
    if len(inputs) != len(graph.inputs):
        missing = [spec.name for spec in graph.inputs if spec.name not in {t.name for t in inputs}]
        raise ConfigError(f"{where}: the configuration declares {len(inputs)} inputs, the model takes "
                          f"{len(graph.inputs)} (not declared: {', '.join(missing)})")
    completed = dataclasses.replace(config, max_batch_size=max_batch_size, dynamic_batching=batching,
                                    inputs=inputs, outputs=outputs)
    batch = (-1,) if max_batch_size else ()
    signature = Signature(tuple(TensorSpec(t.name, t.datatype, (*batch, *t.dims)) for t in inputs),
                          tuple(TensorSpec(t.name, t.datatype, (*batch, *t.dims)) for t in outputs))
    return Served(completed, signature, _plan(inputs, outputs, graph, max_batch_size > 0))


def _from_graph(spec: TensorSpec, max_batch_size: int) -> TensorConfig:
    dims = spec.shape[1:] if max_batch_size else spec.shape
    if not dims:  # as Triton: a batch-only tensor is dims [ 1 ] seen by the graph as [ ] (a scalar per sample)
        return TensorConfig(spec.name, spec.datatype, (1,), () if max_batch_size else None)
    return TensorConfig(spec.name, spec.datatype, dims)


def _check_against_graph(declared: Sequence[TensorConfig], graph: Sequence[TensorSpec], kind: str,
                         max_batch_size: int, where: str) -> None:
    """Triton's ONNX Runtime backend checks (ValidateInputs / ValidateOutputs), with messages naming both."""
    by_name = {spec.name: spec for spec in graph}
    seen: set[str] = set()
    for tensor in declared:
        here = f"{where}: {kind} '{tensor.name}'"
        if tensor.name in seen:
            raise ConfigError(f"{here}: declared twice")
        seen.add(tensor.name)
        spec = by_name.get(tensor.name)
        if spec is None:
            raise ConfigError(f"{here}: the model has no such {kind} (it has {', '.join(by_name) or 'none'})")
        if tensor.datatype != spec.datatype:
            raise ConfigError(f"{here}: the configuration says {triton_type(tensor.datatype)}, the model's "
                              f"graph has {triton_type(spec.datatype)}")
        if not spec.shape:  # a scalar in the graph: Triton takes dims of 1s
            if max_batch_size or any(d != 1 for d in tensor.dims):
                raise ConfigError(f"{here}: the model's graph has a scalar; the configuration must say dims [ 1 ] "
                                  "and max_batch_size 0")
            continue
        shape = tensor.reshape if tensor.reshape is not None else tensor.dims
        configured = (-1, *shape) if max_batch_size else shape
        if max_batch_size and spec.shape[0] != -1:
            raise ConfigError(f"{here}: max_batch_size is {max_batch_size}, so the graph's first dimension must be "
                              f"dynamic (-1), but the graph has {list(spec.shape)}")
        exact = kind == "output"
        fits = len(configured) == len(spec.shape) and all(
            want == got or (got == -1 and not exact) for want, got in zip(configured, spec.shape, strict=False))
        if not fits:
            said = "reshape" if tensor.reshape is not None else "dims"
            batch_note = " after the batch axis (max_batch_size > 0)" if max_batch_size else ""
            raise ConfigError(f"{here}: the configuration's {said} {list(shape)}{batch_note} make the shape "
                              f"{list(configured)}, but the model's graph has {list(spec.shape)}")


def _plan(inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig], graph: Signature,
          batched: bool) -> IOPlan | None:
    graph_shapes = {spec.name: spec.shape[1:] if batched else spec.shape for spec in graph.inputs + graph.outputs}

    def between(tensor: TensorConfig) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        model_side = tensor.reshape if tensor.reshape is not None else tensor.dims
        if not graph_shapes[tensor.name] and not batched:
            model_side = ()  # a scalar in the graph
        return None if model_side == tensor.dims else (tensor.dims, model_side)

    reshaped_inputs = {t.name: Reshape(*pair) for t in inputs if (pair := between(t)) is not None}
    reshaped_outputs = tuple(None if (pair := between(t)) is None else Reshape(pair[1], pair[0]) for t in outputs)
    names = tuple(t.name for t in outputs)
    in_graph_order = names == tuple(spec.name for spec in graph.outputs)
    if not reshaped_inputs and not any(reshaped_outputs) and in_graph_order:
        return None
    return IOPlan(batched, reshaped_inputs, None if in_graph_order else names, reshaped_outputs)


def _labels(outputs: Sequence[TensorConfig], model_dir: Path) -> dict[str, list[str]]:
    """Each output's label_filename, read once per file (a missing or empty file is a load error)."""
    files: dict[str, list[str]] = {}
    for tensor in outputs:
        if tensor.label_filename and tensor.label_filename not in files:
            files[tensor.label_filename] = load_labels(model_dir / tensor.label_filename)
    return {t.name: files[t.label_filename] for t in outputs if t.label_filename}
