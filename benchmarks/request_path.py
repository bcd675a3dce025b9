"""The Python cost of one ModelInfer on the request path, in-process and without the network: the real V2
servicer, data plane, accounting and codec, batch-1 MNIST, called back to back on one event loop.

    python -m benchmarks.request_path            # the whole path, batcher and ONNX Runtime included
    python -m benchmarks.request_path --instant  # the version answers at once with a precomputed result, so
                                                 # only the edge, data plane, accounting and codec are timed

Prints the best of 5 passes in microseconds per call (wall and process CPU). The machine is noisy: compare
two trees by alternating runs, as benchmarks/compare_trees.sh does for whole servers.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
from onnx_serve.core.batching import JobResult
from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import Repository
from onnx_serve.core.settings import Settings
from onnx_serve.edges.grpc.inference import InferenceServicer
from onnx_serve.protos.inference import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


class _Context:
    """What ModelInfer reads of a grpc.aio context on the success path."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: object, message: str) -> None:
        raise RuntimeError(message)


async def measure(calls: int, instant: bool, passes: int = 5) -> tuple[float, float]:
    settings, metrics = Settings(execution_providers=("CPUExecutionProvider",)), Metrics()
    repository = Repository(ROOT / "models", settings, metrics)
    await repository.load_all()
    plane = DataPlane(repository, metrics, settings.max_message_bytes)
    plane.started = True
    servicer = InferenceServicer(plane)
    pixels = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="mnist-cnn", id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(pixels.tobytes())
    context = _Context()
    if instant:
        version = repository.get("mnist-cnn")
        answer = await version.infer({"input": pixels}, None)

        async def at_once(inputs: dict[str, np.ndarray], deadline_ns: int | None) -> JobResult:
            return answer

        version.infer = at_once  # type: ignore[method-assign]
    for _ in range(300):
        await servicer.ModelInfer(request, context)  # type: ignore[arg-type]
    results = []
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await servicer.ModelInfer(request, context)  # type: ignore[arg-type]
        results.append(((time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6))
    await repository.close()
    plane.close()
    return min(r[0] for r in results), min(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instant", action="store_true", help="time the edge and data plane alone")
    parser.add_argument("--calls", type=int, default=20000, help="calls per pass")
    args = parser.parse_args()
    wall, cpu = asyncio.run(measure(args.calls, args.instant))
    print(f"ModelInfer{' (instant model)' if args.instant else ''}: {wall:.1f} us/call wall, {cpu:.1f} us/call CPU "
          f"(best of 5 x {args.calls})")


if __name__ == "__main__":
    main()
