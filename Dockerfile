# syntax=docker/dockerfile:1
#
# onnx-serve container image, with the bundled model repository in /models.
#
#   docker build -t onnx-serve:0.1.0 .                                # CPU (default)
#   docker build --build-arg VARIANT=gpu -t onnx-serve:0.1.0-gpu .    # CUDA 13 + cuDNN 9, onnxruntime-gpu
#
# The builder stage installs the locked dependencies (constraints.txt, made by
# scripts/lock-constraints.sh) and onnx-serve into the virtual environment /opt/venv; the runtime
# stage gets that environment and the models, and no compiler, installer, pip cache or source tree.
# scripts/build-image.sh builds this file for real (podman, in CI) and runs and checks the image
# (tests/system/test_image.py); deploy/README.md has the figures.
#
# No HEALTHCHECK: Kubernetes probes the gRPC health service itself (deploy/k8s); for `docker run`,
# see deploy/README.md.
# checkov:skip=CKV_DOCKER_2:health is probed over gRPC by the orchestrator (grpc.health.v1), not by Docker
# checkov:skip=CKV_DOCKER_7:base images come from ARGs whose defaults are pinned tags, which checkov does not expand

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# onnxruntime-gpu 1.31 links CUDA 13 (libcudart.so.13, libcublas.so.13) and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- runtime bases: a Python interpreter and the shared libraries, one per variant ----------------
FROM ${PYTHON_IMAGE} AS runtime-base-cpu

FROM ${CUDA_IMAGE} AS runtime-base-gpu
# Ubuntu 24.04's Python (3.12). Package versions follow the Ubuntu release fixed by the CUDA image tag
# (pinning them exactly breaks the build whenever Ubuntu publishes a security update).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*

# ---- builder bases: what creating a venv needs on top ---------------------------------------------
FROM runtime-base-cpu AS builder-base-cpu

FROM runtime-base-gpu AS builder-base-gpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

# ---- builder -----------------------------------------------------------------------------------------
# A stage of this file, picked by VARIANT (hadolint reads it as an untagged image).
# hadolint ignore=DL3006
FROM builder-base-${VARIANT} AS builder
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
SHELL ["/bin/sh", "-eu", "-c"]
RUN python3 -m venv /opt/venv
# Dependencies first, from the lock alone: this layer is reused until constraints.txt changes.
COPY constraints.txt /src/constraints.txt
RUN /opt/venv/bin/pip install --no-cache-dir --requirement /src/constraints.txt
# Then onnx-serve itself, without resolving again: every dependency must already be there (pip check).
# The models' modes are made u=rwX,go=rX here: COPY keeps a checkout's modes, and one made with umask
# 002 has group-writable files (and group 0, which OpenShift adds to every pod, owns them here).
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /src \
 && /opt/venv/bin/pip check \
 && chmod -R u=rwX,go=rX /src/models
# The GPU variant swaps in onnxruntime-gpu. Then nothing at run time installs code: pip and setuptools
# leave the environment (25 MB less, and no installer in the image); packages of your own go in before.
RUN if [ "$VARIANT" = gpu ]; then sh /src/scripts/install-gpu.sh /opt/venv/bin/python; fi \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# ---- runtime -----------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM runtime-base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="onnx-serve" \
      org.opencontainers.image.description="gRPC and HTTP model server for ONNX image classifiers (KServe V2, Classify)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.onnx-serve.variant="${VARIANT}"
# A named user for tools that look the UID up; Kubernetes refers to it by number (runAsUser: 10001).
RUN groupadd --system --gid 10001 onnxserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin onnxserve
COPY --from=builder /opt/venv /opt/venv
# Models stay owned by root: the server reads them and must not be able to change them.
COPY --from=builder /src/models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ONNX_SERVE_MODEL_REPOSITORY=/models
WORKDIR /tmp
USER 10001:10001
# 8000 HTTP/REST (KServe V2 REST with Triton's extensions, Classify; /v2/health/ready and /live),
# 8001 gRPC (KServe V2, Classify, health, reflection), 8002 Prometheus metrics (/metrics): the server's
# defaults, set here so that `docker run -e` and the manifests name the ports the image documents.
ENV ONNX_SERVE_HTTP_PORT=8000 \
    ONNX_SERVE_GRPC_PORT=8001 \
    ONNX_SERVE_METRICS_PORT=8002
EXPOSE 8000 8001 8002
# The server answers SIGTERM by failing health, draining for --grace-period, and exiting 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["onnx-serve"]
CMD ["serve"]
