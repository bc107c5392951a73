# syntax=docker/dockerfile:1
# dpstudy in a CUDA image: `dvc repro` inside, `docker run --gpus all` on any GPU host.
#
# The base matches the pinned torch build: requirements.lock has torch 2.14.1 (+cu130), so
# CUDA 13.0 runtime on Ubuntu 24.04 (Python 3.12; the lock is universal for Python >= 3.11).
# For bit-for-bit rebuilds pin the digest as well:
#   docker buildx imagetools inspect nvidia/cuda:13.0.1-runtime-ubuntu24.04   # prints the digest
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:<digest> .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/dpstudy

# Dependencies first (a cached layer until requirements.lock changes), through the same Makefile
# target `make test` and CI use; the venv lives outside the work tree so a mounted repo keeps it.
COPY Makefile requirements.lock ./
RUN make deps VENV=/opt/venv

COPY . .
RUN make env VENV=/opt/venv

ENTRYPOINT ["/workspace/dpstudy/docker/entrypoint.sh"]
CMD ["dvc", "repro"]
