"""One quantization run, from a model directory to a new version or a refusal; every check that can fail
without calibrating (the directory, the versions, the config, the sample folders) runs first, and nothing is
written to the model directory until the INT8 model has passed the gate."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnx_serve import __version__
from onnx_serve.core.errors import ConfigError
from onnx_serve.core.model_config import MODEL_FILENAME, ModelConfig, load_model_config
from onnx_serve.core.runtime import SessionPlan, Signature, create_session, signature_of
from onnx_serve.core.settings import default_intra_op_threads
from onnx_serve.imaging import load_labels
from onnx_serve.tools.quantize import evaluate, report
from onnx_serve.tools.quantize.defaults import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_HOLDOUT_SAMPLES,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_SAMPLES,
)
from onnx_serve.tools.quantize.errors import QuantizeError
from onnx_serve.tools.quantize.quantizer import (
    QuantizeOptions,
    batches_of,
    calibrate,
    check_quantizable,
    coverage,
    is_quantized,
    metadata_for,
    prepare,
    quantize,
)
from onnx_serve.tools.quantize.samples import list_samples, load_samples, split, split_rows

CALIBRATION_BATCH = 16


@dataclass(frozen=True, slots=True)
class QuantizeRequest:
    model_dir: Path
    calibration: Path
    samples: int = DEFAULT_SAMPLES
    version: int | None = None  # None: the highest version + 1
    from_version: int | None = None  # None: the latest version that is not quantized
    holdout: Path | None = None  # None: the calibration folder's files that are not calibrated on
    holdout_samples: int = DEFAULT_HOLDOUT_SAMPLES
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    speed_duration_s: float = 1.0
    seed: int = 0
    progress: bool = True
    report: Path | None = None  # also write the JSON report here (the only file a refused run writes)
    command: str = "onnx-serve quantize"


def model_versions(model_dir: Path) -> dict[int, Path]:
    if not model_dir.is_dir():
        raise QuantizeError(f"model directory {model_dir} does not exist")
    found = {int(p.name): p / MODEL_FILENAME for p in model_dir.iterdir()
             if p.name.isdigit() and (p / MODEL_FILENAME).is_file()}
    if not found:
        hint = " (give the model's directory, the one that holds 1/model.onnx)" if (
            model_dir / MODEL_FILENAME).is_file() else ""
        raise QuantizeError(f"{model_dir}: no <version>/{MODEL_FILENAME} inside{hint}")
    return found


def choose_versions(model_dir: Path, request: QuantizeRequest) -> tuple[int, int]:
    """(source, new): the FP32 version to quantize and the version number to write."""
    versions = model_versions(model_dir)
    new = request.version if request.version is not None else max(versions) + 1
    if new < 1:
        raise QuantizeError(f"--version {new}: versions are whole numbers from 1")
    if (model_dir / str(new)).exists():
        raise QuantizeError(f"version {new} already exists ({model_dir / str(new)}): quantize writes a new version; "
                            "choose another with --version")
    if request.from_version is not None:
        if request.from_version not in versions:
            raise QuantizeError(f"--from-version {request.from_version}: {model_dir} has versions "
                                f"{', '.join(map(str, sorted(versions)))}")
        if is_quantized(versions[request.from_version]):
            raise QuantizeError(f"version {request.from_version} is already quantized: quantize its FP32 source")
        return request.from_version, new
    for number in sorted(versions, reverse=True):
        if not is_quantized(versions[number]):
            return number, new
    raise QuantizeError(f"{model_dir}: every version is already quantized; there is no FP32 version to quantize")


def _config(model_dir: Path) -> tuple[ModelConfig, list[str] | None]:
    try:
        config = load_model_config(model_dir / "config.yaml", model_dir.name)
        labels = load_labels(model_dir / config.labels) if config.labels else None
    except ConfigError as exc:
        raise QuantizeError(str(exc)) from None
    return config, labels


def _check_input(signature: Signature, config: ModelConfig, path: Path) -> None:
    if len(signature.inputs) != 1:
        raise QuantizeError(f"{path}: quantize takes a model with one input; this one has "
                            f"{len(signature.inputs)} ({', '.join(s.name for s in signature.inputs)})")
    spec = signature.inputs[0]
    if not signature.has_batch_axis() and (not spec.shape or spec.shape[0] != 1):
        raise QuantizeError(f"{path}: input '{spec.name}' {list(spec.shape)} has no batch axis and does not take one "
                            "sample at a time (a first dimension of 1)")
    if config.preprocess is not None:
        shape = (1, *config.preprocess.output_shape)
        if not spec.accepts_shape(shape) or spec.datatype != config.preprocess.dtype:
            raise QuantizeError(f"{path}: preprocess gives {config.preprocess.dtype} {list(shape)}, which input "
                                f"'{spec.name}' ({spec.datatype} {list(spec.shape)}) does not accept")


def run(request: QuantizeRequest) -> dict[str, Any]:
    """Quantizes, checks and (when the check passes) writes the new version; returns the report document."""
    ort.set_default_logger_severity(3)  # the calibrator's sessions warn about every unused initializer
    model_dir = request.model_dir
    source_version, version = choose_versions(model_dir, request)
    source = model_dir / str(source_version) / MODEL_FILENAME
    config, labels = _config(model_dir)
    session_options = config.session
    plan = SessionPlan(providers=("CPUExecutionProvider",), strict_providers=False, options=session_options,
                       intra_op_threads=session_options.intra_op_threads or default_intra_op_threads(1, 1))
    try:
        signature = signature_of(create_session(source, plan)[0])
    except ConfigError as exc:
        raise QuantizeError(str(exc)) from None
    _check_input(signature, config, source)
    spec, batched, images = signature.inputs[0], signature.has_batch_axis(), config.preprocess is not None
    listing = list_samples(request.calibration, images, labels, "calibration")
    holdout = list_samples(request.holdout, images, labels, "held-out") if request.holdout else None
    if images:  # split the files first: only the images used are decoded
        calibration_files, holdout_files = split(listing, request.samples, holdout, request.holdout_samples,
                                                 request.seed)
        calibration_set = load_samples(calibration_files, config.preprocess, config.limits, spec, request.progress,
                                       "preprocess calibration samples")
        holdout_set = load_samples(holdout_files, config.preprocess, config.limits, spec, request.progress,
                                   "preprocess held-out samples")
    else:  # a .npy file may hold many samples: split the rows
        pool = load_samples(listing.files, None, config.limits, spec, request.progress, "load calibration tensors")
        own = load_samples(holdout.files, None, config.limits, spec, request.progress, "load held-out tensors") \
            if holdout else None
        calibration_set, holdout_set = split_rows(pool, request.samples, own, request.holdout_samples, request.seed)
    options = request.options
    with tempfile.TemporaryDirectory(prefix="onnx-serve-quantize-") as scratch:
        work = Path(scratch)
        prepared = prepare(source, work)
        check_quantizable(prepared, options)
        batches = list(batches_of(calibration_set.tensors, spec.name, CALIBRATION_BATCH if batched else 1))
        ranges = calibrate(prepared, batches, options, work, request.progress)
        # Staged as a version of a model directory with the same config.yaml, so that the speed test runs it
        # with the session options the server would.
        staged = work / model_dir.name / str(version) / MODEL_FILENAME
        staged.parent.mkdir(parents=True)
        if (model_dir / "config.yaml").is_file():
            shutil.copy(model_dir / "config.yaml", work / model_dir.name / "config.yaml")
        quantize(prepared, staged, batches[0], ranges, options,
                 metadata_for(source_version, options, len(calibration_set.tensors)))
        where = coverage(staged, work)
        check = evaluate.compare(source, staged, plan, holdout_set.tensors, holdout_set.labels, holdout_set.names,
                                 batched, config.postprocess.softmax, request.progress)
        speed = evaluate.speed(source, staged, request.batch_sizes if batched else (1,), request.speed_duration_s,
                               0, request.progress)
        passed = check.top1_agreement >= request.min_agreement
        document = _document(request, source_version, version, images, listing.ignored, len(calibration_set.tensors),
                             holdout is not None, check, speed, where.to_json(),
                             {"fp32_bytes": source.stat().st_size, "int8_bytes": staged.stat().st_size}, passed)
        if passed:
            _install(staged, model_dir / str(version))
            document["written_to"] = str(model_dir / str(version) / MODEL_FILENAME)
    if passed:
        report.write_report(report.report_path(model_dir, version), document)
        report.append_card_section(model_dir, document)
    if request.report is not None:
        report.write_report(request.report, document)
    return document


def _install(staged: Path, target: Path) -> None:
    """Writes the version under a hidden name and renames it into place: a server scanning the repository never
    sees a half-written model.onnx."""
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    shutil.copy(staged, partial / MODEL_FILENAME)
    os.rename(partial, target)


def _document(request: QuantizeRequest, source_version: int, version: int, images: bool, ignored: int,
              calibration_count: int, own_holdout: bool, check: evaluate.Agreement, speed: dict[str, Any],
              where: dict[str, Any], sizes: dict[str, int], passed: bool) -> dict[str, Any]:
    agreement = check.top1_agreement
    return {
        "tool": "onnx-serve quantize",
        "onnx_serve": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": request.command,
        "model": request.model_dir.name,
        "model_dir": str(request.model_dir),
        "source_version": source_version,
        "version": version,
        "written": passed,
        "written_to": None,
        "reason": "" if passed else (f"top-1 agreement with FP32 is {100 * agreement:.2f}%, below --min-agreement "
                                     f"{100 * request.min_agreement:.2f}%"),
        "min_agreement": request.min_agreement,
        "inputs": "this model's preprocess (config.yaml), as the server's Classify API runs it" if images
                  else ".npy tensors (the model has no preprocess)",
        "quantization": request.options.describe(),
        "calibration": {"folder": str(request.calibration), "samples": calibration_count, "seed": request.seed,
                        "ignored_files": ignored},
        "holdout": {"folder": str(request.holdout if own_holdout else request.calibration),
                    "own_folder": own_holdout, "samples": check.samples},
        "check": check.to_json(),
        "speed": speed,
        "coverage": where,
        "sizes": sizes,
        "host": report.host(),
    }
