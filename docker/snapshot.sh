#!/usr/bin/env bash
# Build time only (Dockerfile): one git commit of the image's own copy of the work tree, so that
# DVC has a repository with a commit to run experiments in when no checkout is mounted (.git stays
# out of the build context, see .dockerignore). Never run at container start: a tree mounted from
# the host is the user's, and docker/entrypoint.sh refuses one without .git instead of committing.
#   docker/snapshot.sh <source revision>      # in the work tree; the revision goes in the message
set -euo pipefail

if [[ -e .git ]]; then
    echo "snapshot.sh: $PWD already has .git; this is for the image's copy of the tree only" >&2
    exit 2
fi
git init --quiet --initial-branch=main
git add --all
git -c user.name=dpstudy -c user.email=dpstudy@localhost -c commit.gpgsign=false \
    commit --quiet --no-verify -m "dpstudy work tree snapshot (source revision: ${1:-unknown})"
echo "snapshot.sh: $PWD is commit $(git rev-parse --short HEAD) (source revision: ${1:-unknown})"
