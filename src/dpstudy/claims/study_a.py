"""Study A (Cao & Shen 2023: LeNet, GPU utilization, data loading, large-batch lr): claims A1-A4."""

from __future__ import annotations

import math

import pandas as pd

from ..devices import cpu_count
from ..report.stats import mean_std, paired, per_seed, ratio, relative_fall, seed_order
from .claim import ACC, PCT, PCT1, SIGNED, UTIL, Claim, Effect, Evidence, Rule, Unit, X
from .query import (
    by,
    column,
    device_mean,
    evals,
    gpu_sampled,
    ms,
    runs,
    seeds_text,
    series_text,
    summarize,
    test_images,
)

PAPER = "Cao & Shen 2023"
GENERAL = Unit(".3g")  # a training loss: 3 significant digits
SAME_ON_ANY = "A ratio of utilizations means the same on any GPU"


def _utilization(t) -> pd.DataFrame:
    rows = runs(t, "train_dp", "lenet_utilization")
    return rows.assign(util=device_mean(rows, "utilization_pct"))


A1_FALL = Rule(
    "with the standard DataLoader, the relative fall of utilization from the smallest to the largest "
    "batch (1 - largest/smallest), in each mode (single, DP)",
    above=True,
    unit=PCT1,
    key="a1_min_relative_drop",
    bounds={"ge": 0, "lt": 1},
)


def a1(t, rules) -> Evidence:
    rows = _utilization(t)
    rows = rows[rows["loader"] == "standard"] if len(rows) else rows
    modes = by(rows, "mode")
    quote = "; ".join(f"{mode}: {series_text(group, group['util'], UTIL)}" for mode, group in modes.items())
    effects = []
    for mode, group in modes.items():
        batches = sorted(set(group["global_batch"]))
        if len(batches) < 2:
            continue
        small, big = (per_seed(group[group["global_batch"] == b], "util") for b in (batches[0], batches[-1]))
        effects.append(
            Effect(
                A1_FALL,
                f"{mode}, relative fall from batch {batches[0]} to {batches[-1]}",
                tuple(paired(small, big, relative_fall)),
            )
        )
    source = "GPU utilization (NVML)" if gpu_sampled(t) else "system CPU utilization, shown for context only"
    return Evidence(
        f"{source}: {quote or 'no runs'}", seeds_text(rows), tuple(effects), "lenet_utilization needs two batch sizes"
    )


A2_WAIT = Rule(
    "at the largest batch, the standard loader's data-wait share of each step (time blocked on the next "
    "batch / step time), in every mode",
    above=True,
    unit=PCT,
    key="a2_min_wait_fraction",
    bounds={"ge": 0, "le": 1},
)
A2_RESIDENT = Rule(
    "at the largest batch, the resident loader's wait over the standard loader's (resident/standard; "
    "data already on the device, augmented there), in every mode",
    above=False,
    unit=X,
    key="a2_resident_factor",
    bounds={"ge": 1},
    scale=lambda f: 1 / f,
)


def a2(t, rules) -> Evidence:
    rows = runs(t, "train_dp", "lenet_utilization")
    cells = by(rows, "mode", "loader")
    quote = "data-wait share of a step: " + "; ".join(
        f"{mode}, {loader} loader: {series_text(g, 'data_wait_fraction', PCT)}" for (mode, loader), g in cells.items()
    )
    if not gpu_sampled(t):
        quote += (
            ". No GPU: here the CPU computes and the loop waits for the loader as a GPU's would; the share "
            "is timed the same way as on a GPU, so A2 is tested on this run while A1 (device utilization) "
            "is not"
        )
    effects = []
    for mode in dict.fromkeys(m for m, _ in cells):
        std, res = cells.get((mode, "standard")), cells.get((mode, "resident"))
        if std is None or res is None:
            continue
        big = std["global_batch"].max()
        standard = per_seed(std[std["global_batch"] == big], "data_wait_fraction")
        resident = per_seed(res[res["global_batch"] == big], "data_wait_fraction")
        effects += [
            Effect(A2_WAIT, f"{mode}, standard loader's wait share at batch {big}", tuple(standard)),
            Effect(
                A2_RESIDENT, f"{mode}, resident/standard wait at batch {big}", tuple(paired(resident, standard, ratio))
            ),
        ]
    return Evidence(
        quote, seeds_text(rows), tuple(effects), "lenet_utilization.loaders must hold standard and resident"
    )


A3_GAIN = Rule(
    "at the largest batch (where loading starves the device most; the smaller batches are quoted), the "
    "images/s of the best worker count over num_workers = 0",
    above=True,
    unit=X,
    key="a3_min_gain",
    bounds={"ge": 0},
    scale=lambda g: 1 + g,
    per="measurement",
)


def _cells(rows: pd.DataFrame) -> dict[int, dict[int, dict]]:
    """images/s per (batch, num_workers) cell, per repeated measurement (its `repeat`, else its order)."""
    out: dict[int, dict[int, dict]] = {}
    for b, batch_rows in sorted(by(rows, "batch_size").items()):
        cell = out[int(b)] = {}
        for w, g in sorted(by(batch_rows, "num_workers").items()):
            keys = g["repeat"] if "repeat" in g else range(len(g))
            cell[int(w)] = dict(zip(keys, column(g, "images_per_s")))
    return out


def a3(t, rules) -> Evidence:
    rows = t["profile_dataloader/workers.csv"]
    if rows.empty:
        return Evidence("profile_dataloader measured no worker grid", "", missing="no data")
    cells = _cells(rows)
    quote = []
    for b, workers in cells.items():
        base = mean_std(workers.get(0, {}).values()).mean
        quote.append(
            f"batch {b}: "
            + ", ".join(
                f"{w} worker{'s' if w != 1 else ''} {mean_std(v.values()).mean:,.0f} images/s"
                + (f" ({mean_std(v.values()).mean / base:.2f}x)" if w and base > 0 else "")
                for w, v in workers.items()
            )
        )
    repeats = max(len(v) for workers in cells.values() for v in workers.values())
    seeds = (
        "one measurement per (batch size, num_workers) cell: profile_dataloader does not repeat its grid, so "
        "A3 has no interval"
        if repeats == 1
        else f"{repeats} repeated measurements per (batch size, num_workers) cell"
    )
    text = "; ".join(quote) + f"; {cpu_count()} CPU cores on this machine"
    big = max(cells)
    base, workers = cells[big].get(0), {w: v for w, v in cells[big].items() if w > 0}
    if not base or not workers:
        return Evidence(text, seeds, missing="the grid needs num_workers = 0 and some num_workers > 0")
    best = max(workers, key=lambda w: mean_std(workers[w].values()).mean)
    return Evidence(
        text, seeds, (Effect(A3_GAIN, f"batch {big}, {best} workers vs 0", tuple(paired(workers[best], base, ratio))),)
    )


A4_CHANGE = Rule(
    "the test accuracy of each larger batch trained with the linear rule (and warmup) minus the smallest "
    "batch's (same seed, linear rule; the rules coincide there), for every larger batch; a diverged seed "
    "counts against",
    above=True,
    unit=SIGNED,
    key="a4_accuracy_tolerance",
    bounds={"ge": 0, "le": 1},
    scale=lambda x: -x,
)


def a4(t, rules) -> Evidence:
    scored = evals(t, "train_dp", "lenet_lr_scaling")
    cells = by(scored, "global_batch", "lr_rule")
    batches = sorted({b for b, _ in cells})
    if len(batches) < 2 or not any(lr == "linear" for _, lr in cells):
        return Evidence(
            "the lr-scaling grid needs two batch sizes and the linear rule",
            seeds_text(scored),
            missing="lenet_lr_scaling grid too small",
        )
    small = batches[0]
    ref_rows = cells.get((small, "linear"))
    ref = per_seed(ref_rows if ref_rows is not None else scored[scored["global_batch"] == small], "test_metric")
    acc = {k: mean_std(g["test_metric"]) for k, g in cells.items()}
    quote = [
        f"test accuracy{test_images(scored)}, mean ± std over seeds: "
        + "; ".join(f"batch {b}: " + rules_text(acc, b, ACC) for b in batches),
        *_a4_training(t),
    ]
    effects = []
    for b in batches[1:]:
        rows = cells.get((b, "linear"), scored.iloc[0:0])
        failed = rows[
            (rows.get("outcome", pd.Series("", index=rows.index)) == "diverged")
            | ~rows["test_metric"].astype(float).map(math.isfinite)
        ]
        diverged = sorted({str(s) for s in failed["seed"]}, key=seed_order)
        effects.append(
            Effect(
                A4_CHANGE,
                f"batch {b} (linear) minus batch {small}",
                tuple(paired(ref, per_seed(rows, "test_metric"), lambda s, large: large - s)),
                against=f"seed {', '.join(diverged)} diverged" if diverged else "",
            )
        )
    return Evidence(". ".join(quote), seeds_text(scored), tuple(effects))


def _a4_training(t) -> list[str]:
    """The lr-scaling runs' optimizer steps and final training loss, quoted beside the accuracies."""
    trained, out = runs(t, "train_dp", "lenet_lr_scaling"), []
    steps = summarize(trained, "global_batch", "steps")
    epochs = {int(e) for e in column(trained, "epochs") if math.isfinite(e)}
    if any(math.isfinite(s.mean) for s in steps.values()):
        out.append(
            "Optimizer steps per run"
            + (f" ({epochs.pop()} epochs for every batch)" if len(epochs) == 1 else "")
            + ": "
            + ", ".join(f"{s.mean:,.0f} at batch {b}" for b, s in steps.items())
        )
    linear = trained[trained["lr_rule"] == "linear"] if "lr_rule" in trained else trained.iloc[0:0]
    loss = summarize(linear, "global_batch", "train_loss")
    if any(math.isfinite(s.mean) for s in loss.values()):
        out.append(
            "Final training loss, linear rule (the end of the figure's loss curves): "
            + ", ".join(f"{ms(s, GENERAL)} at batch {b}" for b, s in loss.items())
        )
    return out


def rules_text(stats: dict, key, fmt) -> str:
    """``linear 0.975 ± 0.002, none 0.972 ± 0.003``: the test figure of each lr rule at one key."""
    return ", ".join(f"{lr} {ms(stats[(k, lr)], fmt)}" for k, lr in sorted(stats) if k == key)


A1 = Claim(
    "A1",
    "A",
    PAPER,
    "GPU utilization falls as batch size grows, with and without nn.DataParallel.",
    "A1_A2_data_wait_utilization.png",
    (A1_FALL,),
    a1,
    requires="gpu",
    untestable="the claim is about an accelerator's utilization, and here the CPU both loads and computes, so "
    "its utilization cannot show a device idling while it waits for data. What a CPU run can show "
    "is A2's data-wait share, timed the same way on any device",
    remark=SAME_ON_ANY,
)
A2 = Claim(
    "A2",
    "A",
    PAPER,
    "The cause is data-loading speed: the GPU waits for the next batch.",
    "A1_A2_data_wait_utilization.png",
    (A2_WAIT, A2_RESIDENT),
    a2,
    remark="Shares and ratios of time mean the same on any hardware",
)
A3 = Claim(
    "A3",
    "A",
    PAPER,
    "More DataLoader num_workers raises utilization.",
    "A3_workers.png",
    (A3_GAIN,),
    a3,
    remark="A ratio of throughputs means the same on any machine",
)
A4 = Claim(
    "A4",
    "A",
    PAPER,
    "With large batches, scaling the learning rate (linear, with warmup) gives loss curves "
    "and accuracy comparable to small batches.",
    "A4_lr_scaling.png",
    (A4_CHANGE,),
    a4,
    remark="A difference of test accuracy does not depend on the hardware",
)
DECLARED = (A1, A2, A3, A4)
