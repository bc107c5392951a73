"""dpstudy beyond the papers: claim X1, feeding the GPU fully (a claim of this package, not of the seeds)."""

from __future__ import annotations

import pandas as pd

from ..report.stats import paired, relative_fall
from .claim import PCT1, UTIL, Claim, Effect, Evidence, Rule
from .query import by, column, device_mean, series_text

PAPER = "dpstudy"

X1_FALL = Rule(
    "profile_dataloader's training probes with the resident loader and CUDA-graph steps: the relative fall "
    "of NVML utilization from the smallest to the largest batch (1 - largest/smallest); the eager probes' "
    "fall and the profiler's device busy share are quoted beside it",
    above=False,
    unit=PCT1,
    key="x1_max_relative_drop",
    bounds={"ge": 0, "lt": 1},
    per="repeat",
)


def _quote(t, cells: dict) -> str:
    """NVML utilization and the device busy share per batch: the resident probes, eager and graph, and
    train_dp's runs with CUDA-graph steps (over seeds)."""
    text = "; ".join(
        f"{loader} loader, {step} step: NVML "
        f"{series_text(g, 'utilization_pct', UTIL, key='batch_size')}; device busy "
        f"{series_text(g, 'device_busy_pct', UTIL, key='batch_size')}"
        for (loader, step), g in cells.items()
        if loader == "resident"
    )
    dp = t["train_dp/runs.csv"]
    trained = dp[dp["step"] == "graph"] if "step" in dp else dp.iloc[0:0]
    for sweep, g in by(trained, "sweep").items():
        text += (
            f"; train_dp {sweep} (CUDA-graph steps, resident data, over seeds): NVML "
            f"{series_text(g, device_mean(g, 'utilization_pct'), UTIL)}; device busy "
            f"{series_text(g, 'device_busy_pct', UTIL)}"
        )
    return text


def x1(t, rules) -> Evidence:
    probes = t["profile_dataloader/probes.csv"]
    if len(probes) and "step" not in probes:
        probes = probes.assign(step="eager")
    cells = by(probes, "loader", "step")
    quote = _quote(t, cells) or "no probes"
    repeats = max((int(r) + 1 for r in column(probes, "repeat").fillna(0)), default=0)
    seeds = f"{repeats} repeated probe{'s' if repeats != 1 else ''} per (loader, step, batch size)"
    graph = cells.get(("resident", "graph"), probes.iloc[0:0])
    batches = sorted({int(b) for b in graph["batch_size"]})
    if len(batches) < 2:
        return Evidence(
            quote,
            seeds,
            missing="needs resident probes with CUDA-graph steps at two batch sizes or "
            "more (profile_dataloader.probe.step must hold graph)",
        )
    util = column(graph, "utilization_pct")
    keys = graph["repeat"] if "repeat" in graph else pd.Series(range(len(graph)), index=graph.index)
    small, big = (
        {k: u for k, u, b in zip(keys, util, graph["batch_size"]) if int(b) == batch}
        for batch in (batches[0], batches[-1])
    )
    drops = paired(small, big, relative_fall)
    label = f"resident loader, graph step, relative fall from batch {batches[0]} to {batches[-1]}"
    return Evidence(quote, seeds, (Effect(X1_FALL, label, tuple(drops)),))


X1 = Claim(
    "X1",
    "X",
    PAPER,
    "(a dpstudy claim, beyond the papers) With data resident on the device and the step "
    "captured as a CUDA graph, utilization no longer falls as batch size grows.",
    "X1_graph_utilization.png",
    (X1_FALL,),
    x1,
    requires="gpu",
    untestable="X1 is about a GPU's utilization, and a CUDA graph needs a GPU (profile_dataloader.probe.step: "
    "[eager, graph] on a GPU tests it)",
    remark="A ratio of utilizations means the same on any GPU",
)
DECLARED = (X1,)
