"""A training configuration's checkpoint file, and what happens to the files a change leaves.

``<out>/checkpoints/<configuration>.pt`` holds the latest epoch of a configuration of the current
grid (what a rerun resumes or reuses, and what evaluate scores). A finished checkpoint is never
deleted because params changed:

- a checkpoint whose configuration left the grid, or whose file name a configuration with other
  settings now uses (e.g. another base lr under the same name), moves to
  ``checkpoints/kept/<configuration>.<key>.pt`` (``key``: a digest of its settings and data) and
  moves back when those settings return, so switching back costs nothing;
- a file that cannot be read is renamed ``<configuration>.pt.corrupt`` (kept for inspection), with
  one warning line, and the configuration trains afresh;
- only a checkpoint made by other training code is replaced: no code can resume it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from ..console import say
from ..fsutil import atomic_path

KEPT = "kept"


def key(identity: dict, data_sha256: str) -> str:
    """What a kept file is found by: the configuration's settings and the data it trained on."""
    text = json.dumps([identity, data_sha256], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: Path) -> dict | None:
    """The checkpoint at ``path``; an unreadable file is set aside as ``*.corrupt`` (None)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("spec"), dict):
            raise ValueError(f"holds a {type(ckpt).__name__}, not a dpstudy checkpoint")
    except Exception as exc:  # torn write, disk error, foreign file: keep it, train afresh
        corrupt = path.with_name(path.name + ".corrupt")
        os.replace(path, corrupt)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        say(f"warning: checkpoint {path} not used ({reason}); kept as {corrupt.name}, training afresh")
        return None
    return ckpt


def open_for(path: Path, identity: dict, data_sha256: str, code_sha256: str, fmt: int) -> dict | None:
    """The checkpoint of exactly these settings, data and code: at ``path``, or brought back from
    ``kept/``; None when there is none. Another configuration's usable checkpoint at ``path`` is
    moved to ``kept/`` first, so training this one never overwrites it."""

    def ours(ckpt: dict) -> bool:
        return (
            ckpt.get("format") == fmt
            and ckpt.get("spec") == identity
            and ckpt.get("data_sha256") == data_sha256
            and ckpt.get("code_sha256") == code_sha256
        )

    if path.is_file():
        ckpt = read(path)
        if ckpt is not None and ours(ckpt):
            return ckpt
        if ckpt is not None and _keep_or_drop(path, ckpt, code_sha256, fmt):
            say(f"[checkpoint] {path.name} held other settings of {path.stem}; moved to {KEPT}/")
    kept = path.parent / KEPT / f"{path.stem}.{key(identity, data_sha256)}.pt"
    if kept.is_file():
        ckpt = read(kept)
        if ckpt is not None and ours(ckpt):
            os.replace(kept, path)
            say(f"[checkpoint] {path.stem}: these settings were trained before; reusing {KEPT}/{kept.name}")
            return ckpt
    return None


def set_aside(folder: Path, names: Iterable[str], code_sha256: str, fmt: int) -> int:
    """Move every checkpoint in ``folder`` whose configuration is not in ``names`` to ``kept/``
    (once, with one line saying where); returns how many moved."""
    keep = set(names)
    moved = 0
    for path in sorted(folder.glob("*.pt")):
        if path.stem in keep:
            continue
        ckpt = read(path)
        if ckpt is not None:
            moved += _keep_or_drop(path, ckpt, code_sha256, fmt)
    if moved:
        say(
            f"[checkpoint] {moved} checkpoint(s) of configurations not in the grid now moved to "
            f"{folder / KEPT}/ (used again if those settings return)"
        )
    return moved


def _keep_or_drop(path: Path, ckpt: dict, code_sha256: str, fmt: int) -> bool:
    """Move ``path`` to ``kept/`` under its own settings' key (True); a checkpoint of other
    training code or format can never be resumed and is removed instead (False)."""
    if ckpt.get("format") != fmt or ckpt.get("code_sha256") != code_sha256:
        path.unlink()
        return False
    target = path.parent / KEPT / f"{path.stem}.{key(ckpt['spec'], ckpt.get('data_sha256', ''))}.pt"
    target.parent.mkdir(exist_ok=True)
    os.replace(path, target)
    return True
