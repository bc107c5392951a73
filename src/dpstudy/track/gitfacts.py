"""The commit a run was made from, for its tags."""

from __future__ import annotations

import os
import subprocess


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the repository at ``cwd``; ("unknown", False) outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty
