"""REPORT.md: when the pipeline ran and its MLflow runs, the verdict table, the evidence per claim with
its effect, seeds and figure, then what the run was (preset, hardware, versions, commit, dataset
checksums) and every assumption params.yaml marks. Figures are linked as ``./figures/<name>.png``:
they resolve beside REPORT.md (and in the plot run's artifacts), and MLflow's Markdown viewer shows
such links inactive."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from .facts import assumptions, versions
from .report import CLAIMS, NOT_TESTABLE, STUDY_TITLES, VERDICTS, Verdict


@dataclass(frozen=True)
class StageRun:
    """A pipeline stage's latest execution as MLflow logged it (see stages/plot.py)."""

    stage: str
    run_ids: tuple[tuple[str, str], ...] = ()  # (study, parent run id): one per study it logged to
    start: float | None = None                  # seconds since the epoch; None: not logged
    end: float | None = None                    # None: still running (the plot stage itself)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pipeline(stage_runs: list[StageRun] | None, written: datetime | None) -> tuple[str, list[str]]:
    """(the pipeline's duration, the lines of its runs table) from the stages' MLflow runs."""
    logged = [s for s in stage_runs or [] if s.start is not None]
    if not logged:
        return "unknown", ["MLflow run of each stage: unknown (the tracking store could not be read, or holds no "
                           "runs of this pipeline)."]
    now = written.timestamp() if written else max(s.end or s.start for s in logged)
    ends = [s.end if s.end is not None else now for s in logged]
    duration = _duration(max(ends) - min(s.start for s in logged))
    lines = ["| stage | MLflow parent run (study) | started | duration |", "| --- | --- | --- | --- |"]
    for s in stage_runs or []:
        if s.start is None:
            lines.append(f"| {s.stage} | no run in the MLflow store | | |")
            continue
        ids = ", ".join(f"`{run_id}` ({study})" for study, run_id in s.run_ids)
        took = _duration((s.end if s.end is not None else now) - s.start)
        took += " (until this report)" if s.end is None else ""
        lines.append(f"| {s.stage} | {ids} | {_utc(s.start)} | {took} |")
    lines += ["", "The pipeline's duration runs from the first stage's start to the last stage's end as MLflow logged "
                  "them (each stage's latest execution; a stage DVC found up to date keeps an earlier run, and the "
                  "span then includes the time between)."]
    return duration, lines


# MLflow's Markdown viewer (3.x) shows an image with a relative address as its Markdown text and
# drops data: addresses; REPORT.html embeds the figures and reads the same in MLflow as anywhere.
MLFLOW_NOTE = ("*In MLflow, open REPORT.html beside this file: MLflow's Markdown viewer does not show these figures "
               "(it prints their Markdown instead), and REPORT.html carries them inside it.*")


def render(verdicts: list[Verdict], *, preset: str, commit: str, dirty: bool, hardware: list[str],
           datasets: list[dict], evaluation_check: dict, params_text: str, figures_dir: str = "figures",
           written: datetime | None = None, stage_runs: list[StageRun] | None = None,
           confidence: float = 0.95) -> str:
    counts = {v: sum(x.verdict == v for x in verdicts) for v in VERDICTS}
    duration, runs_table = _pipeline(stage_runs, written)
    lines = [
        "# dpstudy claims report",
        "",
        f"Report written {written.strftime('%Y-%m-%d %H:%M UTC') if written else 'unknown'} · preset **{preset}** · "
        f"commit `{commit[:12]}`{' (uncommitted changes)' if dirty else ''} · pipeline duration {duration}",
        "",
        "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()),
        "",
        MLFLOW_NOTE,
        "",
        "Each claim of the three studies, the evidence this run measured, and the verdict its stated rule gives "
        "(thresholds in params.yaml's `plot.rules`). Every rule works the same way: the claim's effect is computed "
        "once per seed, pairing configurations that share a seed, and its mean ± sample std and a "
        f"{confidence:.0%} t-interval over the seeds are set against the rule's threshold. **supported**: the whole "
        "interval lies on the claim's side of the threshold; **not supported**: the whole interval lies on the other "
        "side; **inconclusive**: the interval touches or straddles the threshold, or a single seed gives no interval; "
        "**not testable here**: the run lacks what the claim needs. Thresholds are relative (ratios of times, "
        "throughputs or utilizations, shares of a step, differences of test accuracy or PSNR), so a rule means the "
        "same on a laptop CPU and on an H100. A verdict holds for this preset and this hardware only.",
        "",
        *runs_table,
        "",
        "| claim | statement | verdict | seeds | figure |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in verdicts:
        fig = f"[{v.figure}]({_figure_path(figures_dir, v.figure)})" if v.figure else ""
        lines.append(f"| {v.claim} | {CLAIMS[v.claim]} | **{v.verdict}** | {seed_count(v.seeds)} | {fig} |")
    for study, title in STUDY_TITLES.items():
        lines += ["", f"## {study}. {title}"]
        shown = set()
        for v in (v for v in verdicts if v.claim.startswith(study)):
            lines += ["", f"### {v.claim}: {v.verdict}", "", f"*{CLAIMS[v.claim]}*", "",
                      f"- Evidence: {v.evidence}."]
            if v.effect:
                lines.append(f"- Effect judged: {v.effect}.")
            lines += [f"- Seeds: {v.seeds or 'none'}.", f"- Rule: {v.rule}."]
            if v.why:
                label = "Not testable because" if v.verdict == NOT_TESTABLE else "Inconclusive because"
                lines.append(f"- {label}: {v.why}.")
            if v.figure and v.figure not in shown:
                shown.add(v.figure)
                lines += ["", f"![{v.figure}]({_figure_path(figures_dir, v.figure)})"]
    lines += ["", "## The run", "", f"- Preset: `{preset}`", f"- Git commit: `{commit}`"
              + (" with uncommitted changes" if dirty else ""), *[f"- {h}" for h in hardware],
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              f"- Evaluation: {evaluation_check['checkpoints']} checkpoints scored again on their test splits; "
              f"{evaluation_check['agree_with_training']} agree with the figure training reported "
              f"(largest difference {evaluation_check['max_abs_difference']:g})",
              "", "### Datasets", "", "| dataset | split | train / test images | prepared file sha256 | source md5 |",
              "| --- | --- | --- | --- | --- |"]
    for d in datasets:
        md5 = "<br>".join(f"{k}: `{v}`" for k, v in d["source_md5"].items())
        lines.append(f"| {d['name']} | {d['split']} | {d['train']} / {d['test']} | `{d['sha256']}` | {md5} |")
    lines += ["", "### Assumptions", "",
              "What the papers do not fix, as params.yaml sets it (each marked ASSUMPTION there):", ""]
    lines += [f"- `{path}`: {text}" for path, text in assumptions(params_text)]
    return "\n".join(lines) + "\n"


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
        return (m.group(1) + (" repeats" if m.group(2) == "repeated" else "")
                + (" (no interval)" if m.group(1) == "1" else ""))
    return "1 (no interval)" if seeds.startswith("one measurement") else "—"
