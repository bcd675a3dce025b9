"""Models for Triton's scheduling knobs seen from a client: one instance of a model that spins SPIN_MS for an
input of ones (its zeros warm-up is instant), each with a config.pbtxt whose dynamic_batching sets a queue
policy or priority levels. Two concurrent requests of ones: one runs, the other waits SPIN_MS in the queue,
far past a 1 ms queue timeout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.serving import spin_model

SPIN_MS = 60  # nominal: a loaded 2-core machine takes a few times longer, which only widens the margins
SHORT_TIMEOUT_US = 1_000
LONG_TIMEOUT_US = 60_000_000
BATCHING = {
    "reject": f"default_queue_policy {{ default_timeout_microseconds: {SHORT_TIMEOUT_US} }}",
    "delay": f"default_queue_policy {{ default_timeout_microseconds: {SHORT_TIMEOUT_US} timeout_action: DELAY }}",
    "override": f"default_queue_policy {{ default_timeout_microseconds: {LONG_TIMEOUT_US} "
                "allow_timeout_override: true }",
    "no_override": f"default_queue_policy {{ default_timeout_microseconds: {LONG_TIMEOUT_US} }}",
    "prioritised": "priority_levels: 2 default_priority_level: 2",
}


def queue_config(name: str, batching: str) -> str:
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 1
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ {batching} }}
'''


def scheduling_repository(root: Path) -> Path:
    """Adds the models of BATCHING (one spin model file, copied) to the repository at `root`."""
    model = spin_model(root / ".spin.onnx", SPIN_MS).read_bytes()
    for name, batching in BATCHING.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(model)
        (root / name / "config.pbtxt").write_text(queue_config(name, batching))
    return root


def busy() -> np.ndarray:
    """An input that keeps the model's one instance busy for SPIN_MS."""
    return np.ones((1, 2), dtype=np.float32)


def instant() -> np.ndarray:
    return np.zeros((1, 2), dtype=np.float32)
