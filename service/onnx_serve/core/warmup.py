"""Warm-up at load: a version is READY only once every instance has run every warm-up request.

Without model_warmup (config.pbtxt's, or the same keys in config.yaml) one request of zeros ("0" for BYTES:
a string of digits) is run; with it, exactly its samples, with Triton's semantics: batch_size 0 skips a
sample, count 0 runs it once, dims are the input's without the batch axis and must be fully given,
zero_data is zeros ("" for BYTES), random_data is random values (zeros for BYTES, as Triton),
input_data_file is raw row-major values read from the model directory's warmup/ folder (BYTES: 4-byte
little-endian lengths, each followed by its bytes). A request that fails leaves the model UNAVAILABLE with
the reason; the reason of a failed default warm-up says which config line fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import onnxruntime as ort

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.model_config import ModelConfig, WarmupInput, WarmupSample, triton_type
from onnx_serve.core.runtime import IOPlan, Signature, first_line, run_session, warmup_feeds
from onnx_serve.types import DATATYPES, TensorSpec, deserialize_bytes, example_array

WARMUP_FOLDER = "warmup"
DEFAULT_FIX = ("the default warm-up sends zeros (\"0\" for BYTES): give the model model_warmup samples it accepts "
               "(README.md, Coming from Triton)")


@dataclass(frozen=True, slots=True)
class WarmupRequest:
    name: str  # "" for the default warm-up
    feeds: dict[str, np.ndarray]
    times: int


def warmup_requests(config: ModelConfig, signature: Signature, model_dir: Path, where: str) -> list[WarmupRequest]:
    """The requests to run on each instance; a sample that does not fit the model is a ConfigError here, before
    anything runs."""
    if config.model_warmup is None:
        return [WarmupRequest("", warmup_feeds(signature), 1)]
    batched = bool(config.max_batch_size)
    requests = []
    for sample in config.model_warmup:
        if sample.batch_size == 0:
            continue  # as Triton: a sample of batch 0 is skipped
        here = f"{where}: model_warmup '{sample.name}'"
        if not batched and sample.batch_size != 1:
            raise ConfigError(f"{here}: batch_size must be 1 for a model that does not batch (max_batch_size 0), "
                              f"got {sample.batch_size}")
        if batched and sample.batch_size > (config.max_batch_size or 0):
            raise ConfigError(f"{here}: batch_size {sample.batch_size} is above max_batch_size "
                              f"{config.max_batch_size}")
        feeds = _feeds(sample, signature, model_dir, batched, here)
        requests.append(WarmupRequest(sample.name, feeds, max(1, sample.count)))
    return requests


def warm_up(session: ort.InferenceSession, requests: Sequence[WarmupRequest], plan: IOPlan | None,
            where: str) -> None:
    for request in requests:
        for _ in range(request.times):
            try:
                run_session(session, request.feeds, plan)
            except Exception as exc:  # whatever the model or provider raises: the reason it is unavailable
                if request.name:
                    raise ConfigError(f"{where}: warm-up sample '{request.name}' failed: {first_line(exc)}") from None
                raise ConfigError(f"{where}: warm-up inference failed: {first_line(exc)}; {DEFAULT_FIX}") from None


def _feeds(sample: WarmupSample, signature: Signature, model_dir: Path, batched: bool, here: str
           ) -> dict[str, np.ndarray]:
    given = dict(sample.inputs)
    specs = signature.input_by_name
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise ConfigError(f"{here}: input '{unknown[0]}': the model has no such input (it takes "
                          f"{', '.join(specs)})")
    missing = [name for name in specs if name not in given]
    if missing:
        raise ConfigError(f"{here}: no data for input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    rng = np.random.default_rng(0)
    feeds = {}
    for name, warm in given.items():
        spec = specs[name]
        where = f"{here}: input '{name}'"
        if warm.datatype != spec.datatype:
            raise ConfigError(f"{where}: data_type {triton_type(warm.datatype)}, but the input is "
                              f"{triton_type(spec.datatype)}")
        if any(d < 1 for d in warm.dims):
            raise ConfigError(f"{where}: dims {list(warm.dims)}: warm-up needs every dimension given (>= 1)")
        shape = (1, *warm.dims) if batched else warm.dims
        if not spec.accepts_shape(shape):
            raise ConfigError(f"{where}: dims {list(warm.dims)} make the shape {list(shape)}, which the input "
                              f"({list(spec.shape)}) does not take")
        one = _sample_data(warm, spec, model_dir, rng, where)
        # As Triton: batch_size requests of the same sample, run as one batch.
        feeds[name] = np.stack([one] * sample.batch_size) if batched else one
    return feeds


def _sample_data(warm: WarmupInput, spec: TensorSpec, model_dir: Path, rng: np.random.Generator, where: str
                 ) -> np.ndarray:
    dims, datatype = warm.dims, warm.datatype
    if warm.source == "zero_data" or (warm.source == "random_data" and datatype == "BYTES"):
        return example_array(datatype, dims)
    if warm.source == "random_data":
        return example_array(datatype, dims, rng)
    data = _read_data_file(warm.input_data_file, model_dir, where)
    count = int(np.prod(dims, dtype=np.int64))
    if datatype == "BYTES":
        try:
            items = deserialize_bytes(data, count, "contents")
            return np.array([item.decode("utf-8") for item in items], dtype=np.object_).reshape(dims)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: input_data_file '{warm.input_data_file}': {exc}") from None
    dtype = DATATYPES[datatype].numpy
    needed = count * dtype.itemsize
    if len(data) < needed:
        raise ConfigError(f"{where}: input_data_file '{warm.input_data_file}' holds {len(data)} bytes, the sample "
                          f"needs {needed} ({datatype} {list(dims)})")
    return np.frombuffer(data[:needed], dtype=dtype).reshape(dims)  # extra bytes are left, as Triton


def _read_data_file(name: str, model_dir: Path, where: str) -> bytes:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ConfigError(f"{where}: input_data_file '{name}': must name a file inside the model's "
                          f"{WARMUP_FOLDER}/ folder")
    path = model_dir / WARMUP_FOLDER / relative
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: input_data_file: cannot read {path}: {exc.strerror or exc}") from None
