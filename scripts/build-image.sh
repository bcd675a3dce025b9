#!/usr/bin/env bash
# Build the container images from the real Dockerfile, then run them and check them.
#
#   scripts/build-image.sh             # base (if missing), CPU image, add-models recipe, GPU variant, checks
#   scripts/build-image.sh --no-gpu    # the same without the GPU variant (a 256 MB onnxruntime-gpu download)
#
# These machines have no Docker daemon and no registry; Debian's podman builds Dockerfiles as root in
# chroot isolation, and `podman run` cannot start a container (no CAP_SYS_RESOURCE for its rlimits), so
# the checks run the image with `buildah run` (tests/system/test_image.py). The steps:
#   1. the base: python:3.11-slim cannot be pulled, so mmdebstrap makes a Debian 12 root filesystem with
#      python3 (3.11, the image's Python) and python3-venv, without docs, man pages or locales, and
#      `podman import` makes it $BASE_IMAGE. Made once; `podman rmi $BASE_IMAGE` makes the next run refresh it.
#   2. the Dockerfile as it is, with --build-arg PYTHON_IMAGE=$BASE_IMAGE: $IMAGE.
#   3. deploy/examples/add-models FROM $IMAGE, its context holding one model (a copy of the bundled one under
#      another name): $IMAGE-added-models.
#   4. the GPU variant, VARIANT=gpu, with CUDA_IMAGE=$BASE_IMAGE (the CUDA image cannot be pulled): every
#      stage of it but the CUDA libraries, i.e. the apt steps, the onnxruntime-gpu swap and the runtime
#      stage: $IMAGE-gpu-on-debian.
#   5. pytest tests/system/test_image.py against the three: config, size budget, read-only models, no
#      compiler, then the entrypoint as UID 10001: gRPC health, Classify of an image file over gRPC and
#      HTTP, /metrics, SIGTERM exit 0; a /mnt/models volume in KServe's layout; the added model; the GPU
#      variant on its CPU fallback.
# Needs root, podman, buildah and mmdebstrap (apt-get; .ci/run installs them), PyPI and Debian's archive,
# and the project venv (.venv, for the checks). Prints each step's time and the images' sizes.
# Env: IMAGE (localhost/onnx-serve:dev), BASE_IMAGE (localhost/onnx-serve-base:bookworm), PYTHON (.venv/bin/python).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
image=${IMAGE:-localhost/onnx-serve:dev}
base_image=${BASE_IMAGE:-localhost/onnx-serve-base:bookworm}
python=${PYTHON:-$repo_root/.venv/bin/python}
build_gpu=1
case "${1:-}" in
    --no-gpu) build_gpu=0 ;;
    "") ;;
    *) echo "usage: scripts/build-image.sh [--no-gpu]" >&2; exit 2 ;;
esac

missing=()
for tool in podman buildah "$python"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "build-image.sh: missing: ${missing[*]} (apt-get install podman buildah mmdebstrap; bash scripts/test.sh makes .venv)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step_started=$SECONDS
step() {
    printf '== %s   (the step before took %d s)\n' "$*" $((SECONDS - step_started))
    step_started=$SECONDS
}

# ---- 1. the base --------------------------------------------------------------------------------------
if podman image exists "$base_image"; then
    step "base $base_image: present"
else
    command -v mmdebstrap >/dev/null || { echo "build-image.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 2; }
    step "base $base_image: mmdebstrap bookworm (minbase + python3, python3-venv, ca-certificates)"
    # Like the official slim images: no documentation but the licences, no man pages, no translations.
    mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        bookworm "$work/base.tar"
    podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$work/base.tar" "$base_image" >/dev/null
    rm -f "$work/base.tar"
fi

# ---- the build options ----------------------------------------------------------------------------------
build=(podman build --isolation chroot --pull=never
    # The Dockerfile's SHELL instruction exists in the Docker image format only (the OCI format drops it).
    --format docker
    # buildah 1.28 (Debian 12) does not see that `FROM builder-base-${VARIANT}` needs the stage
    # builder-base-cpu, skips it as unused and then fails ("image not known"): build every stage. The
    # GPU bases then come from CUDA_IMAGE, which is the local base too, so their apt steps run each time.
    --skip-unused-stages=false
    --build-arg "PYTHON_IMAGE=$base_image" --build-arg "CUDA_IMAGE=$base_image")
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    # pip in the build trusts what this host trusts (these machines reach PyPI through a proxy whose CA only
    # the host's bundle holds). A build-time mount: no layer keeps it.
    build+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi

# ---- 2. the image ---------------------------------------------------------------------------------------
step "podman build the Dockerfile -> $image"
"${build[@]}" --tag "$image" .

# ---- 3. the add-models recipe -------------------------------------------------------------------------
step "podman build deploy/examples/add-models FROM $image -> $image-added-models"
mkdir -p "$work/add-models/models"
cp deploy/examples/add-models/Dockerfile "$work/add-models/"
# The model tests/system/test_image.py asks for (ADDED_MODEL): the bundled one, as a model of one's own.
cp -r models/mnist-cnn "$work/add-models/models/added-digits"
chmod -R go-w "$work/add-models/models"  # as the recipe asks (COPY keeps modes)
podman build --isolation chroot --pull=never --format docker --build-arg "ONNX_SERVE_IMAGE=$image" \
    --tag "$image-added-models" "$work/add-models"

# ---- 4. the GPU variant ---------------------------------------------------------------------------------
gpu_image=
if ((build_gpu)); then
    gpu_image=$image-gpu-on-debian
    step "podman build --build-arg VARIANT=gpu (on the Debian base: no CUDA libraries) -> $gpu_image"
    "${build[@]}" --build-arg VARIANT=gpu --tag "$gpu_image" .
fi

# ---- 5. the checks --------------------------------------------------------------------------------------
step "sizes"
for name in "$base_image" "$image" "$image-added-models" ${gpu_image:+"$gpu_image"}; do
    printf '  %-48s %6d MB\n' "$name" $(($(podman image inspect --format '{{.Size}}' "$name") / 1000000))
done
step "pytest tests/system/test_image.py"
ONNX_SERVE_TEST_IMAGE=$image ONNX_SERVE_TEST_ADDED_IMAGE=$image-added-models ONNX_SERVE_TEST_GPU_IMAGE=$gpu_image \
    "$python" -m pytest -p no:cacheprovider -v -s tests/system/test_image.py
step "images built and checked"
