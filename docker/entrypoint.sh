#!/usr/bin/env bash
# Container entry point: make the work tree usable by git and DVC, then exec the command
# (the image's default `dvc exp run -S preset=gpu`, or any `dpstudy`, `dvc`, `mlflow` command).
# Works on the image's own copy of the tree and on a checkout mounted over it from the host.
set -euo pipefail

# `docker run --user UID:GID` with a uid the image does not know leaves HOME=/ (not writable);
# git, DVC and matplotlib keep their config and caches under HOME.
if [[ ! -w "${HOME:-/}" ]]; then
    export HOME="${TMPDIR:-/tmp}/dpstudy-home"
    mkdir -p "$HOME"
fi

# A checkout mounted from the host belongs to another uid: git refuses it ("dubious ownership")
# unless it is listed as safe, and DVC and the MLflow commit tag both go through git.
if ! git config --global --get-all safe.directory | grep -qxF "$PWD"; then
    git config --global --add safe.directory "$PWD"
fi

# DVC needs a git repository with a commit (`dvc exp run` records experiments against it). A tree
# without .git (the image's copy, or a mounted export) gets one snapshot commit of its files.
if [[ ! -e .git ]]; then
    echo "dpstudy: no git repository in $PWD; making one snapshot commit for DVC" >&2
    git init --quiet --initial-branch=main
    git add --all
    git -c user.name=dpstudy -c user.email=dpstudy@localhost commit --quiet --no-verify \
        -m "dpstudy work tree snapshot (source revision: ${DPSTUDY_SOURCE_REVISION:-unknown})"
fi

exec "$@"
