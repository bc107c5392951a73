"""The run's facts for the report: every ASSUMPTION params.yaml marks, and the library versions."""

from __future__ import annotations

import platform
import re
from importlib import metadata

_ASSUMPTION = re.compile(r"ASSUMPTION\s*(\([^)]*\))?\s*[:,]\s*")


def assumptions(params_text: str) -> list[tuple[str, str]]:
    """(key path, text) of every ``ASSUMPTION:`` comment in params.yaml. A comment block names the
    key below it (the block goes on over deeper-indented lines, or same-indented ones until a
    sentence ends); an end-of-line comment names its own line's key."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    pending: list[list] = []  # [comment column, text] of blocks waiting for their key
    for line in params_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:]
            column, text = len(body) - len(body.lstrip()), body.strip()
            found = _ASSUMPTION.search(text)
            if found:
                pending.append([column, (found.group(1) or "") + " " + text[found.end() :]])
            elif (
                pending
                and text
                and (
                    column > pending[-1][0] or (column == pending[-1][0] and not pending[-1][1].rstrip().endswith("."))
                )
            ):
                pending[-1][1] += " " + text
            elif pending and pending[-1][0] >= 0:
                pending[-1][0] = -1  # the block has ended; it still waits for its key
            continue
        m = re.match(r"(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
        path = ".".join(k for _, k in stack)
        out += [(path, text) for _, text in pending]
        pending = []
        found = _ASSUMPTION.search(line.split("#", 1)[1]) if "#" in line else None
        if found:
            comment = line.split("#", 1)[1]
            out.append((path, (found.group(1) or "") + " " + comment[found.end() :]))
    return [(path, " ".join(text.split())) for path, text in out]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dpstudy", "torch", "torchvision", "dvc", "mlflow", "numpy", "nvidia-ml-py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
