"""REPORT.md: when the pipeline ran and its MLflow runs, the verdict table, the evidence per claim with
its effect, seeds and figure, then what the run was (preset, hardware, versions, commit, dataset
checksums) and every assumption params.yaml marks. The document's shape is the template
``templates/REPORT.md.j2``; this module gathers what goes into it and draws its tables (tabulate).
Figures are linked as ``./figures/<name>.png``: they resolve beside REPORT.md (and in the plot run's
artifacts), and MLflow's Markdown viewer shows such links inactive."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import jinja2
from tabulate import tabulate

from ..claims import CLAIMS, STUDY_TITLES, Verdict
from .facts import assumptions, versions
from .stats import NOT_TESTABLE, VERDICTS


@dataclass(frozen=True)
class StageRun:
    """A pipeline stage's latest execution as MLflow logged it (see stages/plot.py)."""

    stage: str
    run_ids: tuple[tuple[str, str], ...] = ()  # (study, parent run id): one per study it logged to
    start: float | None = None  # seconds since the epoch; None: not logged
    end: float | None = None  # None: still running (the plot stage itself)


# MLflow's Markdown viewer (3.x) shows an image with a relative address as its Markdown text and
# drops data: addresses; REPORT.html embeds the figures and reads the same in MLflow as anywhere.
MLFLOW_NOTE = (
    "*In MLflow, open REPORT.html beside this file: MLflow's Markdown viewer does not show these figures "
    "(it prints their Markdown instead), and REPORT.html carries them inside it.*"
)


def render(
    verdicts: list[Verdict],
    *,
    preset: str,
    commit: str,
    dirty: bool,
    hardware: list[str],
    datasets: list[dict],
    evaluation_check: dict,
    params_text: str,
    figures_dir: str = "figures",
    written: datetime | None = None,
    stage_runs: list[StageRun] | None = None,
    confidence: float = 0.95,
) -> str:
    """REPORT.md's text: ``templates/REPORT.md.j2`` filled with the verdicts and the run's facts."""
    duration, runs_table = _pipeline(stage_runs, written)
    figure_path = {v.figure: _figure_path(figures_dir, v.figure) for v in verdicts if v.figure}
    statements = {v.claim: CLAIMS[v.claim].statement for v in verdicts}
    return _TEMPLATES.get_template("REPORT.md.j2").render(
        written=written.strftime("%Y-%m-%d %H:%M UTC") if written else "unknown",
        preset=preset,
        commit=commit,
        dirty=dirty,
        duration=duration,
        counts={v: sum(x.verdict == v for x in verdicts) for v in VERDICTS},
        mlflow_note=MLFLOW_NOTE,
        confidence=confidence,
        runs_table=runs_table,
        verdict_table=_verdict_table(verdicts, statements, figure_path),
        studies=_studies(verdicts),
        statements=statements,
        not_testable=NOT_TESTABLE,
        figure_path=figure_path,
        hardware=hardware,
        versions=versions(),
        evaluation=evaluation_check,
        datasets_table=_datasets_table(datasets),
        assumptions=assumptions(params_text),
    )


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; cells are taken as written (no number parsing or alignment)."""
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def _verdict_table(verdicts: list[Verdict], statements: dict[str, str], figure_path: dict[str, str]) -> str:
    rows = [
        [
            v.claim,
            statements[v.claim],
            f"**{v.verdict}**",
            seed_count(v.seeds),
            f"[{v.figure}]({figure_path[v.figure]})" if v.figure else "",
        ]
        for v in verdicts
    ]
    return _markdown_table(["claim", "statement", "verdict", "seeds", "figure"], rows)


def _datasets_table(datasets: list[dict]) -> str:
    rows = [
        [
            d["name"],
            d["split"],
            f"{d['train']} / {d['test']}",
            f"`{d['sha256']}`",
            "<br>".join(f"{k}: `{v}`" for k, v in d["source_md5"].items()),
        ]
        for d in datasets
    ]
    return _markdown_table(["dataset", "split", "train / test images", "prepared file sha256", "source md5"], rows)


def _studies(verdicts: list[Verdict]) -> list[dict]:
    """Each study's title and its claims, in order; a figure is shown once, under the first claim
    that names it (``show_figure``), even where a claim of a later study names it too."""
    out = []
    shown: set[str] = set()
    for study, title in STUDY_TITLES.items():
        claims = []
        for v in (v for v in verdicts if v.claim.startswith(study)):
            claims.append({"verdict": v, "show_figure": bool(v.figure) and v.figure not in shown})
            shown.add(v.figure)
        out.append({"study": study, "title": title, "claims": claims})
    return out


def _pipeline(stage_runs: list[StageRun] | None, written: datetime | None) -> tuple[str, str | None]:
    """(the pipeline's duration, the table of its stages' runs) from the stages' MLflow runs; the
    table is None when no stage's run is known."""
    logged = [s for s in stage_runs or [] if s.start is not None]
    if not logged:
        return "unknown", None
    now = written.timestamp() if written else max(s.end or s.start for s in logged)
    ends = [s.end if s.end is not None else now for s in logged]
    rows = []
    for s in stage_runs or []:
        if s.start is None:
            rows.append([s.stage, "no run in the MLflow store", "", ""])
            continue
        took = _duration((s.end if s.end is not None else now) - s.start)
        rows.append(
            [
                s.stage,
                ", ".join(f"`{run_id}` ({study})" for study, run_id in s.run_ids),
                _utc(s.start),
                took + (" (until this report)" if s.end is None else ""),
            ]
        )
    table = _markdown_table(["stage", "MLflow parent run (study)", "started", "duration"], rows)
    return _duration(max(ends) - min(s.start for s in logged)), table


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _figure_path(figures_dir: str, name: str) -> str:
    """``./figures/A3_workers.png``: relative links resolve beside REPORT.md (in the results folder and in
    the plot run's artifacts alike); the leading ``./`` makes MLflow's Markdown viewer show the link
    inactive instead of sending it to the server's root, where it is a 404."""
    path = f"{figures_dir}/{name}"
    return path if path.startswith(("/", "./", "../")) or "://" in path else f"./{path}"


def seed_count(seeds: str) -> str:
    """The verdict table's short form of a claim's seeds: ``3`` or ``1 (no interval)``."""
    m = re.match(r"(\d+) (seed|repeated)", seeds)
    if m:
        return (
            m.group(1)
            + (" repeats" if m.group(2) == "repeated" else "")
            + (" (no interval)" if m.group(1) == "1" else "")
        )
    return "1 (no interval)" if seeds.startswith("one measurement") else "—"


def _oneline(text: str) -> str:
    """A paragraph the template writes over several lines, as the one line REPORT.md holds."""
    return " ".join(text.split())


# Markdown, not HTML: nothing is escaped; a name the template uses but is not given is an error.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("dpstudy.report", "templates"),
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["oneline"] = _oneline
