"""Command-line arguments shared by the stages that read prepared data and write results."""

from __future__ import annotations

import argparse


def data_stage_arguments(p: argparse.ArgumentParser, stage: str) -> None:
    """--params, --data (prepared datasets) and --out (default results/<stage>)."""
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument("--data", default="data/prepared", help="folder of prepared datasets (default: %(default)s)")
    p.add_argument("--out", default=f"results/{stage}", help="output folder (default: %(default)s)")
