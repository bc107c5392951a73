# syntax=docker/dockerfile:1
# dpstudy on any NVIDIA GPU host: the pipeline, DVC and MLflow in one image (docs/docker.md).
#   make image                       # docker, podman or buildah, whichever is here (docker/image.mk)
#   docker build --build-arg VCS_REF="$(git rev-parse HEAD)" -t dpstudy .
#   docker run --gpus all --rm --shm-size=8g --user "$(id -u):$(id -g)" -v "$PWD":/workspace/dpstudy dpstudy
#
# Base: requirements.lock pins torch 2.14.1, the CUDA 13.0 build (nvidia-cuda-runtime 13.0.*), so
# NVIDIA's CUDA 13.0.2 runtime image on Ubuntu 24.04 (Python 3.12; host driver >= 580). Any base
# with apt-get, Python >= 3.11 and python3-venv works (BASE_IMAGE): torch's wheels bring their own
# CUDA libraries, so `--build-arg BASE_IMAGE=ubuntu:24.04` is the smaller image (the ENV below sets
# the two variables the NVIDIA Container Toolkit reads, which the CUDA base would have set); not yet
# run on a GPU. `make image-test` builds on a Debian bookworm stand-in (docker/image_test.sh).
# For bit-for-bit rebuilds pin the base by digest too:
#   docker buildx imagetools inspect nvidia/cuda:13.0.2-runtime-ubuntu24.04   # prints the digest
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04@sha256:<digest> ...
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# The user the image runs as; match your own (--build-arg USER_UID="$(id -u)") to share a
# mounted checkout without `docker run --user`.
ARG USER_UID=1000
ARG USER_GID=1000

LABEL org.opencontainers.image.title="dpstudy" \
      org.opencontainers.image.description="Data-parallel CNN training studies (DP, DDP, adaptive batch) reproduced with DVC and MLflow" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# NVIDIA_*: which GPUs and driver libraries the NVIDIA Container Toolkit mounts in (the values
# nvidia/cuda images set; a plain ubuntu base needs them to see the GPUs).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Python for the venv, git and make for DVC and the Makefile, tini as PID 1 (forwards signals
# to dvc/torchrun, reaps DataLoader workers).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv git make ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000: make room for ours. /mlflow is where
# docker/compose.yaml's MLflow server keeps its store (a new named volume takes this ownership).
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && groupadd --gid "${USER_GID}" dpstudy \
    && useradd --no-log-init --create-home --shell /bin/bash --uid "${USER_UID}" --gid "${USER_GID}" dpstudy \
    && install -d -o dpstudy -g dpstudy /workspace/dpstudy /mlflow

WORKDIR /workspace/dpstudy

# Dependencies first (a cached layer until requirements.lock changes), through the same Makefile
# targets that `make test` and CI run; the venv lives outside the work tree, so a checkout
# mounted over /workspace/dpstudy uses it too (the editable install points into its src/).
COPY Makefile requirements.lock ./
COPY docker/image.mk docker/
RUN make deps VENV=/opt/venv

COPY --chown=${USER_UID}:${USER_GID} . .
RUN make env VENV=/opt/venv \
    && install -m 755 docker/entrypoint.sh /usr/local/bin/dpstudy-entrypoint

# Numeric, so Kubernetes can check runAsNonRoot; HOME resolves to /home/dpstudy through /etc/passwd.
USER ${USER_UID}:${USER_GID}

# The commit the build context came from. Declared this late because a new value re-runs every
# RUN after the declaration, and the dependency layers must not follow each commit.
ARG VCS_REF=unknown
LABEL org.opencontainers.image.revision="${VCS_REF}"
# .git stays out of the build context (.dockerignore); DVC needs a repository with a commit, so the
# image's own copy of the tree gets one snapshot commit, here, shared by every container that runs
# without a mounted checkout. At run time nothing is ever committed for you: a mounted tree must be
# a git clone (docker/entrypoint.sh refuses anything else).
RUN docker/snapshot.sh "${VCS_REF}"

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dpstudy-entrypoint"]
# The whole pipeline on the gpu preset (real MNIST and CIFAR-10, every claim's grid, sized for one
# H100-class GPU; docs/presets.md); DVC records the preset change as an experiment. Any
# `dpstudy ...`, `dvc ...` or `mlflow ...` command can be given instead (`dvc exp run -S preset=paper`).
CMD ["dvc", "exp", "run", "-S", "preset=gpu"]
