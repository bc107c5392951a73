#!/usr/bin/env bash
# Container entry point: make the work tree usable by git and DVC for whichever uid runs the
# container, then exec the command (the image's default `dvc exp run -S preset=gpu`, or any
# `dpstudy`, `dvc`, `mlflow` command). Works in the image's own copy of the tree (one snapshot commit,
# made at build time by docker/snapshot.sh) and in a git clone mounted over it from the host. It
# writes nothing into the work tree: its settings live in the environment and in a HOME of its own.
set -euo pipefail

# `docker run --user UID:GID` with a uid the image does not know: no passwd entry. Python's
# getpass.getuser() (DVC, MLflow) falls back to the passwd file and fails ("getpwuid(): uid not
# found"), so name the user in the environment, as a login would.
if ! id -un >/dev/null 2>&1; then
    export USER="${USER:-uid$(id -u)}"
    export LOGNAME="${LOGNAME:-$USER}"
fi

# Such a uid also gets HOME=/ (not writable); git, DVC and matplotlib keep config and caches there.
if [[ ! -w "${HOME:-/}" ]]; then
    export HOME="${TMPDIR:-/tmp}/dpstudy-home"
    mkdir -p "$HOME"
fi

# DVC needs a git repository with a commit. The image's copy has one; a tree mounted without .git
# (an export, a copy) is refused rather than given a repository and a commit in the user's folder.
if [[ ! -e .git ]]; then
    echo "dpstudy: $PWD is not a git clone (no .git); mount a git clone of dpstudy there: git clone <repo> && cd dpstudy && docker run ... -v \"\$PWD\":$PWD ..." >&2
    exit 2
fi

# A checkout mounted from the host belongs to another uid: git (and DVC's libgit2) refuse it
# ("dubious ownership") unless it is listed as safe; DVC and the MLflow commit tag go through git.
# The list lives in HOME's .gitconfig: the container's, never the checkout's.
if ! git config --global --get-all safe.directory 2>/dev/null | grep -qxF "$PWD"; then
    git config --global --add safe.directory "$PWD"
fi

# `dvc exp run` commits: a run that finds a tracked file modified (params.yaml after the image's own
# `-S preset=gpu`) stashes it first, and without a git identity that fails ("Git user name and email
# must be configured"), so every run after the first would. The repository's or
# the user's own identity wins (git config, or GIT_AUTHOR_*/GIT_COMMITTER_* passed with -e); only
# where none is configured does the container name itself, in the environment, never in a file.
me="${USER:-$(id -un 2>/dev/null || echo "uid$(id -u)")}"
if ! git config user.name >/dev/null 2>&1; then
    export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-dpstudy container ($me)}"
    export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
fi
if ! git config user.email >/dev/null 2>&1; then
    export GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-${EMAIL:-$me@dpstudy.invalid}}"
    export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
fi

exec "$@"
