"""Draw the study figures and write the claims report (results/REPORT.md).

One PNG per claim group (figures.FIGURES), then REPORT.md: for each claim A1–A4, B1–B5, C1–C4 the
evidence this run measured, the figure, and the verdict its rule in params.yaml's plot.rules gives
(supported / not supported / not testable here, with why); the preset, hardware, versions, git
commit, dataset checksums and every assumption params.yaml marks.

Reads params: preset, plot. Reads the training stages' tables under <results>, evaluate's
evaluations.csv and <data>/*.pt (checksums). Writes <out>/figures/*.png and <out>/REPORT.md;
MLflow: a `plot` run in experiment dpstudy-claims-report with REPORT.md and figures/ as artifacts.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from ..config import as_dict, load_section
from ..console import format_table
from ..datasets import file_sha256, load_prepared
from ..devices import cpu_count, cpu_name
from ..errors import UserError
from ..figures import load_inputs, write_figures
from ..fsutil import write_text_atomic
from ..report import judge, render
from ..tracking import Tracker, git_commit

STAGE = "plot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument("--results", default="results", help="the training and evaluate stages' results (default: %(default)s)")
    p.add_argument("--data", default="data/prepared", help="prepared datasets, for their checksums (default: %(default)s)")
    p.add_argument("--out", default="results", help="where figures/ and REPORT.md go (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section(STAGE, args.params)
    results, out = Path(args.results), Path(args.out)
    tables = load_inputs(results)  # every input checked before anything is drawn
    evaluations, check = _evaluations(results / "evaluate")
    datasets = _datasets(Path(args.data))
    verdicts = judge(tables, evaluations, cfg.rules)

    figures = write_figures(tables, out / "figures")
    commit, dirty = git_commit()
    report = out / "REPORT.md"
    write_text_atomic(report, render(verdicts, preset=preset, commit=commit, dirty=dirty, hardware=_hardware(),
                                     datasets=datasets, evaluation_check=check,
                                     params_text=Path(args.params).read_text()))

    with Tracker("report", STAGE, preset=preset, params={"preset": preset, STAGE: as_dict(cfg)}) as tracker:
        tracker.parent.set_tags({f"verdict.{v.claim}": v.verdict for v in verdicts})
        tracker.parent.log_metrics({k: sum(v.verdict == k for v in verdicts)
                                    for k in ("supported", "not supported", "not testable here")}, step=0)
        tracker.parent.log_artifact(report)
        for figure in figures:
            tracker.parent.log_artifact(figure, "figures")

    print(f"\n{STAGE} ({preset} preset): claims report")
    print(format_table(["claim", "verdict", "figure"], [(v.claim, v.verdict, v.figure) for v in verdicts]))
    print(f"\nfiles: {report}, {out / 'figures'}/ ({len(figures)} PNGs); MLflow: dpstudy-claims-report / {STAGE}")
    return 0


def _evaluations(folder: Path) -> tuple[list[dict], dict]:
    rows_file, metrics_file = folder / "evaluations.csv", folder / "metrics.json"
    for f in (rows_file, metrics_file):
        if not f.is_file():
            raise UserError(f"{f} not found (written by the evaluate stage): run `dvc repro evaluate` first")
    with open(rows_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads(metrics_file.read_text())["checks"]


def _datasets(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise UserError(f"no prepared datasets in {folder}: run `dvc repro download` (or pass --data)")
    out = []
    for f in files:
        d = load_prepared(f)
        out.append({"name": d.name, "split": d.split, "train": len(d.train_labels), "test": len(d.test_labels),
                    "sha256": file_sha256(f), "source_md5": d.source_md5})
    return out


def _hardware() -> list[str]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"Machine that wrote this report: {cpu_name()}, {cpu_count()} CPU cores; GPUs: "
            + (", ".join(gpus) if gpus else "none visible")
            + (f" (CUDA {torch.version.cuda})" if gpus else "")]
