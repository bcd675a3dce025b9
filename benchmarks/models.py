"""Models for benchmarks.run: the MNIST CNN (bundled, or a stand-in while it is not built), the
ResNet-18-shaped CNN, one-model repositories with batching on or off, and the peers' NAME.onnx folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from onnx_serve.bench.raw import latest_model_file

ROOT = Path(__file__).resolve().parent.parent


def mnist_model_dir(work: Path) -> tuple[Path, bool]:
    """The bundled model, or an MNIST-shaped stand-in with random weights while it is not built."""
    bundled = ROOT / "models" / "mnist-cnn"
    if (bundled / "1" / "model.onnx").is_file():
        return bundled, True
    stand_in = work / "mnist-standin" / "mnist-cnn"
    if not (stand_in / "1" / "model.onnx").is_file():
        build_mnist_like(stand_in / "1" / "model.onnx")
        (stand_in / "config.yaml").write_text(yaml.safe_dump({
            "max_batch_size": 64, "instance_group": {"count": 1},
            "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [16, 32],
                                 "max_queue_size": 1024},
            "preprocess": {"color_mode": "L", "resize": "exact", "width": 28, "height": 28}}))
    return stand_in, False


def build_mnist_like(path: Path) -> None:
    """Conv32-Pool-Conv64-Pool-Dense128-Dense10-Softmax on [N, 1, 28, 28], random weights (the peers' README
    model), built with onnx.helper so no torch is needed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    initializers = [weight("w1", 32, 1, 3, 3), weight("b1", 32), weight("w2", 64, 32, 3, 3), weight("b2", 64),
                    weight("w3", 3136, 128), weight("b3", 128), weight("w4", 128, 10), weight("b4", 10)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["d1"]),
        helper.make_node("Relu", ["d1"], ["r3"]),
        helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "mnist_like",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def resnet_model_dir() -> Path | None:
    model_dir = ROOT / "bench-models" / "resnet18"
    if (model_dir / "1" / "model.onnx").is_file():
        return model_dir
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    print("== building bench-models/resnet18 (python -m training.resnet18 --out bench-models)", flush=True)
    subprocess.run([sys.executable, "-m", "training.resnet18", "--out", "bench-models"], cwd=ROOT, check=True)
    return model_dir


def repository_variant(source: Path, work: Path, variant: str, name: str, batching: bool) -> Path:
    """A one-model repository under `work` whose config is the source's with batching on or off."""
    repository = work / "repos" / variant
    target = repository / name
    shutil.rmtree(repository, ignore_errors=True)
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.onnx").symlink_to(_latest(source))
    config = yaml.safe_load((source / "config.yaml").read_text()) if (source / "config.yaml").exists() else {}
    for extra in ("labels",):
        if config.get(extra):
            shutil.copy(source / config[extra], target / config[extra])
    if not batching:
        config["dynamic_batching"] = False
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return repository


def peer_models(work: Path, models: dict[str, Path]) -> Path:
    directory = work / "peer-models"
    directory.mkdir(parents=True, exist_ok=True)
    for name, model_dir in models.items():
        link = directory / f"{name}.onnx"
        link.unlink(missing_ok=True)
        link.symlink_to(_latest(model_dir))
    return directory


def _latest(model_dir: Path) -> Path:
    latest = latest_model_file(model_dir)
    if latest is None:
        raise FileNotFoundError(f"{model_dir}: no <version>/model.onnx inside")
    return latest.resolve()
