"""Draw the study figures and write the claims report (results/REPORT.md and results/REPORT.html).

One PNG per claim group (figures.FIGURES), then REPORT.md: a header with the date, the pipeline's
duration and each stage's MLflow run (read from the store; "unknown" if it cannot be read); for each
claim A1–A4, B1–B5, C1–C4 the evidence this run measured, the effect over seeds with its 95%
interval, the figure, and the verdict its rule in params.yaml's plot.rules gives (supported / not
supported / inconclusive / not testable here, with why); the preset, hardware, versions, git
commit, dataset checksums and every assumption params.yaml marks.

REPORT.html is REPORT.md's content as one self-contained page (the figures embedded as data URIs,
nothing fetched): MLflow's Markdown viewer shows neither relative images nor relative links, its HTML
viewer shows this page as it is.

Reads params: preset, plot. Reads the training stages' tables under <results>, evaluate's
evaluations.csv and <data>/*.pt (checksums, test-set sizes). Writes <out>/figures/*.png,
<out>/REPORT.md and <out>/REPORT.html. MLflow: a `plot` run in experiment dpstudy-claims-report with
REPORT.md, REPORT.html and figures/*.png as artifacts (figures/ beside REPORT.md as in <out>, so a
downloaded copy's relative links hold; MLflow's own Markdown viewer shows them inactive), and each
figure also logged as a run image (`log_image`, key: the figure's name), which the run page shows on
its Model metrics tab.
"""

from __future__ import annotations

import argparse
import csv
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import as_dict, load_section
from ..console import format_table
from ..devices import cpu_count, cpu_name
from ..errors import UserError
from ..fsutil import write_files_atomic
from ..track.gitfacts import git_commit
from ..track.tracking import STUDIES, Tracker

if TYPE_CHECKING:
    import pandas as pd

    from ..report.render import StageRun

STAGE = "plot"
# The stages before plot, in dvc.yaml's order (download logs nothing to MLflow).
PIPELINE = ("download", "profile_dataloader", "train_dp", "train_ddp", "train_adaptive", "evaluate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument(
        "--results", default="results", help="the training and evaluate stages' results (default: %(default)s)"
    )
    p.add_argument(
        "--data", default="data/prepared", help="prepared datasets, for their checksums (default: %(default)s)"
    )
    p.add_argument(
        "--out", default="results", help="where figures/, REPORT.md and REPORT.html go (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    started = time.time()
    from ..claims import PLOT_SECTION  # plot.rules: the thresholds the claims declare

    preset, cfg = load_section(STAGE, args.params, model=PLOT_SECTION)
    # matplotlib and torch (prepared files): only once the params are known to be good
    from ..claims import judge
    from ..report.figures import write_figures
    from ..report.html import render_html
    from ..report.render import StageRun, render, seed_count
    from ..report.stats import VERDICTS
    from ..report.tables import load_tables

    results, out = Path(args.results), Path(args.out)
    tables = load_tables(results)  # every input checked before anything is drawn
    evaluations, check = _evaluations(results / "evaluate")
    datasets = _datasets(Path(args.data))
    verdicts = judge(tables, evaluations, cfg.rules)

    figures = write_figures(tables, out / "figures", {d["name"]: d["test"] for d in datasets})
    commit, dirty = git_commit()
    report, page = out / "REPORT.md", out / "REPORT.html"
    with Tracker("report", STAGE, preset=preset, params={"preset": preset, STAGE: as_dict(cfg)}) as tracker:
        stage_runs = _stage_runs(tracker.uri)
        if stage_runs is not None and tracker.parent.run_id:
            stage_runs.append(StageRun(STAGE, (("report", tracker.parent.run_id),), started, None))
        text = render(
            verdicts,
            preset=preset,
            commit=commit,
            dirty=dirty,
            hardware=_hardware(),
            datasets=datasets,
            evaluation_check=check,
            params_text=Path(args.params).read_text(),
            written=datetime.now(UTC),
            stage_runs=stage_runs,
            confidence=cfg.rules.confidence,
        )
        write_files_atomic({report: text, page: render_html(text, out / "figures")})  # the two agree
        tracker.parent.set_tags({f"verdict.{v.claim}": v.verdict for v in verdicts})
        tracker.parent.log_metrics({k: sum(v.verdict == k for v in verdicts) for k in VERDICTS}, step=0)
        tracker.parent.log_artifact(report)
        tracker.parent.log_artifact(page)
        for figure in figures:
            tracker.parent.log_artifact(figure, "figures")
        _log_images(tracker, figures)

    print(f"\n{STAGE} ({preset} preset): claims report")
    print(
        format_table(
            ["claim", "verdict", "seeds", "figure"],
            [(v.claim, v.verdict, seed_count(v.seeds), v.figure) for v in verdicts],
        )
    )
    print(
        f"\nfiles: {report}, {page}, {out / 'figures'}/ ({len(figures)} PNGs); "
        f"MLflow: dpstudy-claims-report / {STAGE} (open REPORT.html)"
    )
    return 0


def _log_images(tracker: Tracker, figures: list[Path]) -> None:
    """Each figure as an MLflow run image (key: its name without .png, step 0), which the run page
    previews beside its charts; the PNGs themselves are artifacts under figures/ too."""
    if not tracker.parent.active:
        return
    from mlflow.tracking import MlflowClient
    from PIL import Image

    client = MlflowClient(tracking_uri=tracker.uri)
    for figure in figures:
        with Image.open(figure) as image:
            client.log_image(tracker.parent.run_id, image.convert("RGB"), key=figure.stem, step=0, synchronous=True)


def _stage_runs(uri: str) -> list[StageRun] | None:
    """Each earlier stage's latest execution in the MLflow store: its parent run per study (a stage that
    logs to several studies has one in each, all from one process), start and end. None when the
    store cannot be read or holds no run of this pipeline (the report then says "unknown")."""
    from ..report.render import StageRun

    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiments = {
            e.experiment_id: study
            for study, name in STUDIES.items()
            if (e := client.get_experiment_by_name(name)) is not None
        }
        out = []
        for stage in PIPELINE:
            query = f"attributes.run_name = '{stage}' and tags.dvc_stage = '{stage}'"
            runs = (
                client.search_runs(list(experiments), query, order_by=["attributes.start_time DESC"], max_results=50)
                if experiments
                else []
            )
            parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            if not parents:
                out.append(StageRun(stage))
                continue
            process = lambda r: (r.data.tags.get("host"), r.data.tags.get("pid"))  # noqa: E731
            latest, mine = parents[0], {}
            for r in parents:  # newest first: the latest run in each study from the latest run's process
                if process(r) == process(latest) and r.info.experiment_id not in mine:
                    mine[r.info.experiment_id] = r
            chosen = sorted(mine.values(), key=lambda r: r.info.start_time)
            ends = [r.info.end_time for r in chosen]
            out.append(
                StageRun(
                    stage,
                    tuple((experiments[r.info.experiment_id], r.info.run_id) for r in chosen),
                    min(r.info.start_time for r in chosen) / 1000,
                    max(ends) / 1000 if all(ends) else None,
                )
            )
        return out if any(s.start is not None for s in out) else None
    except Exception:
        return None


def _evaluations(folder: Path) -> tuple[pd.DataFrame, dict]:
    rows_file, metrics_file = folder / "evaluations.csv", folder / "metrics.json"
    for f in (rows_file, metrics_file):
        if not f.is_file():
            raise UserError(f"{f} not found (written by the evaluate stage): run `dvc repro evaluate` first")
    from ..evaluation import Evaluation, checks
    from ..report.tables import frame

    with open(rows_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the agreement check, from each checkpoint's row (metrics.json holds only the mismatch count)
    return frame(rows, rows_file.name), checks([Evaluation.from_row(r) for r in rows])


def _datasets(folder: Path) -> list[dict]:
    from ..data.prepared import file_sha256, load_prepared

    files = sorted(folder.glob("*.pt"))
    if not files:
        raise UserError(f"no prepared datasets in {folder}: run `dvc repro download` (or pass --data)")
    out = []
    for f in files:
        d = load_prepared(f)
        out.append(
            {
                "name": d.name,
                "split": d.split,
                "train": len(d.train_labels),
                "test": len(d.test_labels),
                "sha256": file_sha256(f),
                "source_md5": d.source_md5,
            }
        )
    return out


def _hardware() -> list[str]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [
        f"Machine that wrote this report: {cpu_name()}, {cpu_count()} CPU cores; GPUs: "
        + (", ".join(gpus) if gpus else "none visible")
        + (f" (CUDA {torch.version.cuda})" if gpus else "")
    ]
