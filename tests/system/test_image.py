"""The container image built from the real Dockerfile, run the way it ships: its entrypoint, its user, its files.

scripts/build-image.sh builds the images with podman and then runs this module against them, named by
ONNX_SERVE_TEST_IMAGE (the CPU image), ONNX_SERVE_TEST_ADDED_IMAGE (deploy/examples/add-models built FROM
it) and ONNX_SERVE_TEST_GPU_IMAGE (the GPU variant, on the Debian base instead of the CUDA one). Without
them (the test command) the module is skipped. `podman run` cannot start containers on these machines
(no rlimits), so a test makes a working container of the image with `buildah from` and runs the image's
ENTRYPOINT and CMD in it with `buildah run --isolation chroot`: the image's filesystem, user, working
directory and environment, on the host's network, so the server's ports (ephemeral, on 127.0.0.1) are
reachable from here with real clients.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx_serve.bench.launch import ServerProcess, launch
from onnx_serve.client.client import Client
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "models" / "mnist-cnn"
IMAGE = os.environ.get("ONNX_SERVE_TEST_IMAGE", "")
ADDED_IMAGE = os.environ.get("ONNX_SERVE_TEST_ADDED_IMAGE", "")
GPU_IMAGE = os.environ.get("ONNX_SERVE_TEST_GPU_IMAGE", "")
ADDED_MODEL = "added-digits"  # the model scripts/build-image.sh puts in the add-models recipe's context
IMAGE_UID = 10001
# The CPU image's uncompressed size limit (deploy/README.md, "Image size"): Debian's python3 base is 180 MB,
# the environment 250 MB (onnxruntime, numpy, onnx, grpcio, pillow); a compiler, torch, a pip cache or a
# source tree would each break it.
SIZE_BUDGET_BYTES = 450_000_000
DRAIN_DELAY_S, GRACE_PERIOD_S = 1, 10
# The kubelet's margin above drain delay + grace period (terminationGracePeriodSeconds, deploy/k8s).
KILL_MARGIN_S = 10
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc", "ld", "as", "make")

pytestmark = [
    pytest.mark.skipif(not IMAGE, reason="no image named in ONNX_SERVE_TEST_IMAGE: scripts/build-image.sh "
                                         "builds the image and runs this module against it"),
    pytest.mark.timeout(180),
]


# ---------------------------------------------------------------------------------------------------
# images and working containers

def inspect(image: str) -> dict[str, Any]:
    result = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, timeout=60,
                            check=True)
    found: dict[str, Any] = json.loads(result.stdout)[0]
    return found


@contextmanager
def working_container(image: str) -> Iterator[str]:
    """A buildah working container of `image` (its filesystem, config and user), removed afterwards."""
    name = f"onnx-serve-test-{uuid.uuid4().hex[:12]}"
    subprocess.run(["buildah", "from", "--pull-never", "--name", name, image], capture_output=True, text=True,
                   timeout=120, check=True)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60, check=False)


def run_in(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    """A command in the container as the image's user, from the image's working directory."""
    return subprocess.run(["buildah", "run", "--isolation", "chroot", container, "--", *command],
                          capture_output=True, text=True, timeout=120, check=False)


def python_in(container: str, code: str) -> Any:
    """Runs `code` with the image's python; it prints one JSON document, returned decoded."""
    result = run_in(container, "python", "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------------
# the entrypoint, running

@dataclass
class ImageServer:
    """`buildah run` of the image's entrypoint (`server.process`), and the server process inside it (`pid`)."""

    server: ServerProcess
    pid: int

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the server, as the kubelet sends it: the exit status `buildah run` passes on, and seconds."""
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        status = self.server.process.wait(timeout=DRAIN_DELAY_S + GRACE_PERIOD_S + KILL_MARGIN_S)
        return status, time.monotonic() - started

    def kill(self) -> None:
        for pid in (self.pid, self.server.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.process.wait(timeout=30)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past "(comm)"
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def server_pid(buildah_pid: int) -> int:
    """The container's server process: below `buildah run`, the one that is not buildah's own helper."""
    for pid in descendants(buildah_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not Path(argv[0].decode()).name.startswith("buildah") and any(b"onnx-serve" in arg for arg in argv):
            return pid
    raise AssertionError(f"no onnx-serve process below buildah run ({buildah_pid})")


@contextmanager
def entrypoint(container: str, *, env: dict[str, str] | None = None,
               volumes: dict[Path, str] | None = None) -> Iterator[ImageServer]:
    """The image's ENTRYPOINT + CMD, unchanged, on 127.0.0.1 with ephemeral ports (set through the ONNX_SERVE_*
    variables the image reads), ready; `volumes` are mounted read-only (host path -> container path)."""
    config = inspect_container_image(container)
    settings = {"ONNX_SERVE_HOST": "127.0.0.1", "ONNX_SERVE_GRPC_PORT": "0", "ONNX_SERVE_HTTP_PORT": "0",
                "ONNX_SERVE_METRICS_PORT": "0", "ONNX_SERVE_DRAIN_DELAY": str(DRAIN_DELAY_S),
                "ONNX_SERVE_GRACE_PERIOD": str(GRACE_PERIOD_S), **(env or {})}
    command = ["buildah", "run", "--isolation", "chroot",
               *(f"--env={name}={value}" for name, value in settings.items()),
               *(f"--volume={source}:{target}:ro" for source, target in (volumes or {}).items()),
               container, "--", *config["Entrypoint"], *(config.get("Cmd") or [])]
    server = launch(command)
    running = None
    try:
        server.wait_for_line("server ready", timeout=90)
        running = ImageServer(server, server_pid(server.pid))
        yield running
    finally:
        if server.process.poll() is None:
            if running is None:
                server.process.kill()
                server.process.wait(timeout=30)
            else:
                running.kill()


def inspect_container_image(container: str) -> dict[str, Any]:
    """The OCI config (Entrypoint, Cmd, Env...) of the image a working container was made from."""
    result = subprocess.run(["buildah", "inspect", "--type", "container", container], capture_output=True,
                            text=True, timeout=60, check=True)
    config: dict[str, Any] = json.loads(result.stdout)["OCIv1"]["config"]
    return config


def health(url: str, service: str) -> str:
    """grpc.health.v1 Check of `service`, retried for a few seconds while it is not SERVING yet."""
    deadline = time.monotonic() + 10
    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            if name == "SERVING" or time.monotonic() > deadline:
                return name
            time.sleep(0.2)


def digit_one_png(path: Path) -> Path:
    """A real PNG file of a thick vertical stroke, which the bundled MNIST model reads as a "1"."""
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).rectangle((28, 12, 36, 52), fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def http(method: str, url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def classify_over_grpc(url: str, image_file: Path, model: str) -> str:
    with Client(url, timeout=10) as client:
        [predictions] = client.classify(image_file.read_bytes(), model=model)
    return predictions[0].label


def classify_over_http(server: ServerProcess, image_file: Path, model: str) -> str:
    status, body = http("POST", f"{server.http_url}/v2/models/{model}/classify", image_file.read_bytes(), "image/png")
    assert status == 200, body
    label: str = json.loads(body)["results"][0]["predictions"][0]["label"]
    return label


def assert_sigterm_exits_0(running: ImageServer) -> None:
    status, seconds = running.stop()
    print(f"SIGTERM -> exit {status} in {seconds:.1f} s (drain delay {DRAIN_DELAY_S} s, grace {GRACE_PERIOD_S} s)")
    assert status == 0, running.server.log()
    assert "stopped" in running.server.log()


# ---------------------------------------------------------------------------------------------------
# the CPU image: what it is

@pytest.fixture(scope="module")
def image_info() -> dict[str, Any]:
    return inspect(IMAGE)


def test_image_config_is_what_the_manifests_expect(image_info: dict[str, Any]) -> None:
    config = image_info["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["onnx-serve"] and config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert config["StopSignal"] == "SIGTERM"
    environment = dict(item.split("=", 1) for item in config["Env"])
    assert environment["ONNX_SERVE_MODEL_REPOSITORY"] == "/models"
    assert (environment["ONNX_SERVE_HTTP_PORT"], environment["ONNX_SERVE_GRPC_PORT"],
            environment["ONNX_SERVE_METRICS_PORT"]) == ("8000", "8001", "8002")
    assert config["Labels"]["io.onnx-serve.variant"] == "cpu"


def test_image_size_is_within_budget(image_info: dict[str, Any]) -> None:
    size = int(image_info["Size"])
    print(f"{IMAGE}: {size / 1e6:.0f} MB uncompressed (budget {SIZE_BUDGET_BYTES / 1e6:.0f} MB)")
    assert size <= SIZE_BUDGET_BYTES


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    with working_container(IMAGE) as name:
        yield name


# Prints, as JSON, the user it runs as, the owners of every path under /models and /opt/venv, those paths
# that group or others may write, and how many of three writes (a new model, a model file, a config) failed.
READ_ONLY_CHECK = """if True:
    import json, os
    report = {"uid": os.getuid(), "owners": set(), "writable": [], "refused": 0}
    for root in ("/models", "/opt/venv"):
        for directory, _, files in os.walk(root):
            for path in [directory, *(os.path.join(directory, name) for name in files)]:
                info = os.lstat(path)
                report["owners"].add(info.st_uid)
                if info.st_mode & 0o022 and not os.path.islink(path):
                    report["writable"].append(path)
    for attempt in ("/models/new-model", "/models/mnist-cnn/1/model.onnx", "/models/mnist-cnn/config.yaml"):
        try:
            open(attempt, "ab").close()
            report["writable"].append(attempt)
        except PermissionError:
            report["refused"] += 1
    report["owners"] = sorted(report["owners"])
    print(json.dumps(report))
"""


def assert_read_only_to_the_server_user(container: str) -> None:
    found = python_in(container, READ_ONLY_CHECK)
    assert found["uid"] == IMAGE_UID
    assert found["owners"] == [0], "models and environment must be root's"
    assert found["writable"] == [] and found["refused"] == 3


def test_models_are_read_only_to_the_server_user(container: str) -> None:
    """Every path under /models (and the environment) is root's, and the image's user can change none of it,
    whatever the modes of the checkout it was built from."""
    assert_read_only_to_the_server_user(container)


def test_image_has_no_compiler_installer_or_source_tree(container: str) -> None:
    found = python_in(container, f"""if True:
        import importlib.metadata as metadata, importlib.util, json, os, shutil, sys, onnx_serve
        print(json.dumps({{
            "compilers": [name for name in {COMPILERS!r} if shutil.which(name)],
            "distributions": sorted(d.metadata["Name"].lower() for d in metadata.distributions()),
            "service_module": importlib.util.find_spec("service") is not None,
            "package": onnx_serve.__file__, "prefix": sys.prefix,
            "paths": [path for path in ("/src", "/tests", "/training", "/deploy", "/.git") if os.path.exists(path)],
        }}))
    """)
    assert found["compilers"] == []
    assert {"pip", "setuptools", "torch", "gcc", "setuptools-scm"}.isdisjoint(found["distributions"])
    assert {"onnx-serve", "onnxruntime"} <= set(found["distributions"])
    assert not found["service_module"], "the distribution must install onnx_serve alone, no top-level `service`"
    assert found["package"].startswith(found["prefix"] + "/") and found["prefix"] == "/opt/venv"
    assert found["paths"] == [], "the build context leaked into the runtime stage"


def test_entrypoint_answers_help(container: str, image_info: dict[str, Any]) -> None:
    result = run_in(container, *image_info["Config"]["Entrypoint"], "serve", "--help")
    assert result.returncode == 0 and "--model-repository" in result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------
# the CPU image, serving its bundled model (the last test stops it)

@pytest.fixture(scope="module")
def served(container: str) -> Iterator[ImageServer]:
    with entrypoint(container) as running:
        yield running


def test_server_runs_as_the_image_user(served: ImageServer) -> None:
    status = Path(f"/proc/{served.pid}/status").read_text()
    ids = {key: value.split() for key, value in re.findall(r"^(Uid|Gid|CapEff):\s*(.*)$", status, re.MULTILINE)}
    assert ids["Uid"] == [str(IMAGE_UID)] * 4 and ids["Gid"] == [str(IMAGE_UID)] * 4
    assert int(ids["CapEff"][0], 16) == 0, "no capabilities"


def test_grpc_health_and_readiness(served: ImageServer) -> None:
    for service in ("liveness", "", "mnist-cnn"):
        assert health(served.url, service) == "SERVING", service


def test_classify_an_image_file_over_grpc_and_http(served: ImageServer, tmp_path: Path) -> None:
    image_file = digit_one_png(tmp_path / "one.png")
    assert classify_over_grpc(served.url, image_file, "mnist-cnn") == "1"
    assert http("GET", f"{served.server.http_url}/v2/health/ready")[0] == 200
    assert http("GET", f"{served.server.http_url}/v2/health/live")[0] == 200
    assert classify_over_http(served.server, image_file, "mnist-cnn") == "1"


def test_metrics_scrape(served: ImageServer, tmp_path: Path) -> None:
    image_file = digit_one_png(tmp_path / "one.png")
    classify_over_grpc(served.url, image_file, "mnist-cnn")
    classify_over_http(served.server, image_file, "mnist-cnn")
    metrics = served.server.scrape()
    assert re.search(r'^onnx_serve_model_ready\{[^}]*model="mnist-cnn"[^}]*\} 1\.0$', metrics, re.MULTILINE)
    for api in ("classify", "http_classify"):
        counted = rf'^onnx_serve_requests_total{{[^}}]*api="{api}"[^}}]*code="OK"[^}}]*}} [1-9]'
        assert re.search(counted, metrics, re.MULTILINE), f"no OK {api} request counted"
    assert "onnx_serve_build_info{" in metrics


def test_sigterm_drains_and_exits_0(served: ImageServer) -> None:
    """Last of the module's tests on `served`: it stops the server."""
    assert_sigterm_exits_0(served)


# ---------------------------------------------------------------------------------------------------
# models from outside the image

def kserve_model_directory(path: Path) -> Path:
    """The bundled model as KServe's storage initializer leaves a model in /mnt/models: 1/model.onnx, its
    config and labels beside 1/; readable by anyone, as a volume's files are."""
    shutil.copytree(BUNDLED_MODEL, path, ignore=shutil.ignore_patterns("README.md"))
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


def test_a_single_model_volume_serves_under_its_model_name(tmp_path: Path) -> None:
    """What deploy/kserve/servingruntime.yaml runs: --model-repository /mnt/models --model-name <name>."""
    volume = kserve_model_directory(tmp_path / "mnt-models")
    with working_container(IMAGE) as name, entrypoint(
            name, env={"ONNX_SERVE_MODEL_REPOSITORY": "/mnt/models", "ONNX_SERVE_MODEL_NAME": "digits"},
            volumes={volume: "/mnt/models"}) as running:
        assert health(running.url, "digits") == "SERVING"
        assert classify_over_grpc(running.url, digit_one_png(tmp_path / "one.png"), "digits") == "1"
        assert_sigterm_exits_0(running)


@pytest.mark.skipif(not ADDED_IMAGE, reason="ONNX_SERVE_TEST_ADDED_IMAGE names no image (scripts/build-image.sh)")
def test_the_add_models_recipe_serves_its_model_and_the_bundled_one(tmp_path: Path) -> None:
    """deploy/examples/add-models: FROM the image, COPY models/ -> /models/, nothing else; the added files
    are as read-only to the server as the bundled ones."""
    assert inspect(ADDED_IMAGE)["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}", "the recipe keeps the user"
    image_file = digit_one_png(tmp_path / "one.png")
    with working_container(ADDED_IMAGE) as name:
        assert_read_only_to_the_server_user(name)
        with entrypoint(name) as running:
            for model in (ADDED_MODEL, "mnist-cnn"):
                assert health(running.url, model) == "SERVING", model
            assert classify_over_grpc(running.url, image_file, ADDED_MODEL) == "1"
            assert_sigterm_exits_0(running)


@pytest.mark.skipif(not GPU_IMAGE, reason="ONNX_SERVE_TEST_GPU_IMAGE names no image (scripts/build-image.sh)")
def test_the_gpu_variant_installs_onnxruntime_gpu_and_serves_on_its_cpu_fallback(tmp_path: Path) -> None:
    """The GPU variant's stages, built on the Debian base instead of the CUDA image (no GPU here): the
    onnxruntime-gpu swap, and a server that, asked for CUDA first, falls back to the CPU and serves."""
    assert inspect(GPU_IMAGE)["Config"]["Labels"]["io.onnx-serve.variant"] == "gpu"
    with working_container(GPU_IMAGE) as name:
        found = python_in(name, """if True:
            import importlib.metadata as metadata, json, onnxruntime
            names = {d.metadata["Name"].lower() for d in metadata.distributions()}
            print(json.dumps({"gpu": "onnxruntime-gpu" in names, "cpu": "onnxruntime" in names,
                              "providers": onnxruntime.get_available_providers()}))
        """)
        assert found["gpu"] and not found["cpu"], "install-gpu.sh swaps the CPU wheel for the GPU one"
        assert "CUDAExecutionProvider" in found["providers"]
        with entrypoint(name, env={"ONNX_SERVE_EXECUTION_PROVIDERS": "cuda,cpu"}) as running:
            assert "falling back to CPUExecutionProvider" in running.server.log()
            assert classify_over_grpc(running.url, digit_one_png(tmp_path / "one.png"), "mnist-cnn") == "1"
            assert_sigterm_exits_0(running)
