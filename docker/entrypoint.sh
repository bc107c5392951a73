#!/usr/bin/env bash
# Container entry point: make the work tree usable by git/DVC, then run the given command
# (default: `dvc repro`; any `dpstudy ...` or `dvc ...` command can be passed instead).
set -euo pipefail
# A repo mounted from the host belongs to another uid; git (and so DVC) refuses it otherwise.
git config --global --add safe.directory "$PWD"
exec "$@"
