"""Fetch, verify (MD5) and prepare every dataset the preset needs into one compact file each.

Reads params: preset, download. Writes <out>/<dataset>.pt atomically; raw files are cached in
<raw> so a rerun does not download again. Later stages read only the prepared files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_section
from ..console import format_table, progress, say


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument("--out", default="data/prepared", help="folder of prepared files (default: %(default)s)")
    p.add_argument("--raw", default="data/raw", help="cache of downloaded raw files (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section("download", args.params)
    from ..data import fetch, prepared  # torch: only once the params are known to be good

    fetch.check_mirror(cfg.mirror)  # before any dataset is fetched
    rows = []
    for name in progress(cfg.datasets, desc="download"):
        path = prepared.prepare(
            name,
            raw_dir=Path(args.raw),
            out_dir=Path(args.out),
            mirror=cfg.mirror,
            upstream_split=cfg.upstream_split,
            split_seed=cfg.split_seed,
            test_fraction=cfg.test_fraction,
            timeout_s=cfg.timeout_s,
        )
        p = prepared.load_prepared(path)
        shape = "×".join(map(str, p.train_images.shape[1:]))
        say(
            f"[download] {name}: {len(p.train_labels)} train + {len(p.test_labels)} test images "
            f"{shape}, split {p.split} -> {path}"
        )
        rows.append(
            (name, len(p.train_labels), len(p.test_labels), shape, p.split, prepared.file_sha256(path)[:12], str(path))
        )
    print(f"\ndownload ({preset} preset): prepared {len(rows)} dataset(s)")
    print(format_table(["dataset", "train", "test", "C×H×W", "split", "sha256", "file"], rows))
    return 0
