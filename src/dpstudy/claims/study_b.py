"""Study B (Xue 2023: VGG16, DataParallel vs DistributedDataParallel): claims B1-B5."""

from __future__ import annotations

import math

import pandas as pd

from ..report import tables as tb
from ..report.stats import mean_of_finite, mean_std, paired, per_seed, ratio, ratios
from .claim import ACC, SIGNED, Claim, Effect, Evidence, Rule, Unit, X
from .query import Capacity, by, column, evals, ms, runs, seeds_text, test_images
from .study_a import rules_text

PAPER = "Xue 2023"
SECONDS = Unit(".2f", " s")
EPOCH = "epoch_time_s"


def _vgg(t) -> tuple[pd.DataFrame, pd.DataFrame, dict, list]:
    """train_dp's and train_ddp's VGG runs, epoch time per seed per (mode, global batch), and the
    batches both single and DP ran."""
    vgg, ddp = runs(t, "train_dp", "vgg"), runs(t, "train_ddp", "vgg")
    cell = {k: per_seed(g, EPOCH) for k, g in by(vgg, "mode", "global_batch").items()}
    batches = sorted(b for m, b in cell if m == "dp" and ("single", b) in cell)
    return vgg, ddp, cell, batches


def _times(cell: dict, batches: list) -> str:
    return "; ".join(
        f"batch {b}: single {ms(mean_std(cell[('single', b)]), SECONDS)}, DP "
        f"{ms(mean_std(cell[('dp', b)]), SECONDS)} per epoch"
        for b in batches
    )


def _speedups(cell: dict, batches: list) -> dict:
    """single / DP epoch time per seed, per batch."""
    return {b: paired(cell[("single", b)], cell[("dp", b)], ratio) for b in batches}


B1_SPEEDUP = Rule(
    "the speed-up of DataParallel over N >= 2 GPUs against one GPU (epoch time single / DP, averaged "
    "over the batch sizes)",
    above=False,
    unit=X,
    key="b1_max_speedup",
    bounds={"gt": 0},
)
B3_SPEEDUP = Rule(
    "the same speed-up at each batch size separately (no batch size fixes it)",
    above=False,
    unit=X,
    key="b1_max_speedup",
    bounds={"gt": 0},
)


def b1(t, rules) -> Evidence:
    vgg, ddp, cell, batches = _vgg(t)
    gpus = Capacity.of(t).gpus
    per_seed_mean = [mean_std(v).mean for v in zip(*_speedups(cell, batches).values())]  # over batch sizes
    effect = Effect(B1_SPEEDUP, f"DP over {gpus} GPUs vs one, mean over batch sizes", tuple(per_seed_mean))
    what = f"DP over {gpus} GPUs vs one" if gpus >= 2 else "epoch time per batch size"
    return Evidence(f"{what}: {_times(cell, batches)}", seeds_text(vgg, ddp), (effect,))


def b3(t, rules) -> Evidence:
    vgg, ddp, cell, batches = _vgg(t)
    what = "DP speed-up per batch size" if Capacity.of(t).gpus >= 2 else "epoch time per batch size"
    effects = tuple(Effect(B3_SPEEDUP, f"batch {b}", tuple(s)) for b, s in _speedups(cell, batches).items())
    return Evidence(f"{what}: {_times(cell, batches)}", seeds_text(vgg, ddp), effects)


B2_IMBALANCE = Rule(
    "DataParallel's device 0 memory over the other devices' mean (averaged over batch sizes)",
    above=True,
    unit=X,
    key="b2_min_imbalance",
    bounds={"ge": 1},
)


def _imbalance(dp: pd.DataFrame) -> pd.DataFrame:
    """Per DataParallel run: device 0's memory over the other devices' mean (nan with one device)."""
    long = tb.per_device(dp.assign(_row=range(len(dp))), "device_mem_mib")
    out = []
    for i in range(len(dp)):
        mem = long[long["_row"] == i]["device_mem_mib"].tolist()
        out.append(mem[0] / mean_of_finite(mem[1:]) if len(mem) > 1 else math.nan)
    return dp.assign(imbalance=out)


def b2(t, rules) -> Evidence:
    vgg, ddp, _, _ = _vgg(t)
    dp = _imbalance(vgg[vgg["mode"] == "dp"] if "mode" in vgg else vgg)
    long = tb.per_device(dp, "device_mem_mib") if len(dp) else dp
    cells = "; ".join(
        f"batch {b}: "
        + " / ".join(f"{m:,.0f}" for m in g.groupby("device")["device_mem_mib"].agg(mean_of_finite))
        + " MiB"
        for b, g in sorted(by(long, "global_batch").items())
    )
    ratio_all = mean_std(dp["imbalance"])
    quote = f"DataParallel peak memory per device (device 0 / 1 / ..., mean over seeds): {cells or 'none'}" + (
        f"; device 0 / others: {ms(ratio_all, X)}" if math.isfinite(ratio_all.mean) else "; one device: no ratio"
    )
    return Evidence(
        quote, seeds_text(vgg, ddp), (Effect(B2_IMBALANCE, "device 0 / others", tuple(per_seed(dp, "imbalance"))),)
    )


B4_SPEEDUP = Rule(
    "at each global batch that DataParallel and DDP both ran on the same N >= 2 GPUs, DP epoch time / DDP epoch time",
    above=True,
    unit=X,
    key="b4_min_speedup",
    bounds={"gt": 0},
)


def b4(t, rules) -> Evidence:
    vgg, ddp, cell, _ = _vgg(t)
    gpus = Capacity.of(t).gpus
    ddp_cell = {(int(w), b): per_seed(g, EPOCH) for (w, b), g in by(ddp, "world", "global_batch").items()}
    shared = [(w, b) for (w, b) in sorted(ddp_cell) if w == gpus >= 2 and ("dp", b) in cell]
    effects = tuple(
        Effect(
            B4_SPEEDUP, f"global batch {b} on {w} GPUs, DP/DDP", tuple(paired(cell[("dp", b)], ddp_cell[(w, b)], ratio))
        )
        for w, b in shared
    )
    times = "; ".join(
        f"global batch {b}: DDP on {w} GPUs {ms(mean_std(ddp_cell[(w, b)]), SECONDS)} vs DP "
        f"{ms(mean_std(cell[('dp', b)]), SECONDS)} per epoch"
        for w, b in shared
    )
    context = _b4_context(ddp, vgg)
    return Evidence(
        f"{times}. {context}" if effects else context,
        seeds_text(vgg, ddp),
        effects,
        "train_ddp and train_dp share no (devices, global batch) pair",
    )


def _per_rank_batch(ddp: pd.DataFrame) -> pd.Series:
    """A DDP run's batch per process (its global batch over the world size where not recorded)."""
    fallback = column(ddp, "global_batch") / column(ddp, "world")
    return column(ddp, "batch").where(column(ddp, "batch").map(math.isfinite), fallback).astype(int)


def _b4_context(ddp: pd.DataFrame, vgg: pd.DataFrame) -> str:
    """DDP's epoch time by world size, and its speed-up against both baselines: DDP with 1 process and
    the single-device run (train_dp) at the same per-process batch. Each seed's time is its mean over
    the lr rules first, so every ± is a spread over seeds."""
    if ddp.empty:
        return "no DDP runs"
    out = []
    for b, rows in sorted(by(ddp.assign(per_rank=_per_rank_batch(ddp)), "per_rank").items()):
        by_world = {int(w): per_seed(g, EPOCH) for w, g in sorted(by(rows, "world").items())}
        text = (
            f"DDP epoch time by processes, batch {b:g} per process (each seed's mean over its lr rules, then "
            "mean ± std over seeds): " + ", ".join(f"{w}: {ms(mean_std(s), SECONDS)}" for w, s in by_world.items())
        )
        single = per_seed(vgg[(vgg["mode"] == "single") & (vgg["global_batch"] == b)], EPOCH)
        one, most = by_world.get(1), max(by_world)
        against = []
        if one is not None and len(one) and most > 1:
            against.append(f"{ms(ratios(one, by_world[most]), X)} against DDP with 1 process")
        if len(single) and most > 1:
            against.append(
                f"{ms(ratios(single, by_world[most]), X)} against the single-device run (train_dp, "
                f"batch {b:g}: {ms(mean_std(single), SECONDS)} per epoch)"
            )
        if against:
            text += f"; speed-up at {most} processes, seed by seed: " + " and ".join(against)
        if one is not None and len(one) and len(single):
            slower = ratios(one, single)
            text += (
                f"; DDP with 1 process carries DDP's own overheads (process group, gradient all-reduce) and "
                f"takes {ms(slower, X)} the single-device run's epoch time"
                + (", so a speed-up against it alone flatters DDP" if slower.mean > 1 else "")
            )
        out.append(text)
    return ". ".join(out)


B5_CHANGE = Rule(
    "the change of test accuracy from world size 1 to the largest world size without lr scaling (largest "
    "minus 1; negative: accuracy fell); the per-process batch is fixed, so the global batch grows",
    above=False,
    unit=SIGNED,
    key="b5_accuracy_drop",
    bounds={"ge": 0, "le": 1},
    scale=lambda d: -d,
)


def b5(t, rules) -> Evidence:
    scored = evals(t, "train_ddp", "vgg")
    cells = {(int(w), lr): g for (w, lr), g in by(scored, "world", "lr_rule").items()}
    worlds = sorted({w for w, _ in cells})
    acc = {k: mean_std(g["test_metric"]) for k, g in cells.items()}
    quote = f"test accuracy{test_images(scored)}: " + "; ".join(
        f"{w} process{'es' if w != 1 else ''}: " + rules_text(acc, w, ACC) for w in worlds
    )
    if len(worlds) < 2:
        return Evidence(
            quote if len(scored) else "no DDP runs",
            seeds_text(scored),
            missing=f"only world size {worlds[0] if worlds else 0} ran: needs 2+ GPUs (or CPU processes)",
        )
    one, most, effects = worlds[0], worlds[-1], []
    for lr in ("none", "linear"):
        if (one, lr) in cells and (most, lr) in cells:
            change = paired(
                per_seed(cells[(one, lr)], "test_metric"),
                per_seed(cells[(most, lr)], "test_metric"),
                lambda a, b: b - a,
            )
            if lr == "none":
                effects.append(Effect(B5_CHANGE, f"change from {one} to {most} processes, lr rule none", tuple(change)))
            else:
                quote += (
                    f". With the linear rule, for comparison: change {ms(mean_std(change), SIGNED)} "
                    f"from {one} to {most} processes"
                )
    return Evidence(quote, seeds_text(scored), tuple(effects), "no runs without lr scaling (lr rule none) at both ends")


B1 = Claim(
    "B1",
    "B",
    PAPER,
    "Multi-GPU training under DataParallel is poor: little or no speed-up over one GPU.",
    "B1_B3_B4_epoch_time.png",
    (B1_SPEEDUP,),
    b1,
    requires="2 gpus",
    remark="A ratio of times means the same on any GPU",
)
B2 = Claim(
    "B2",
    "B",
    PAPER,
    "DataParallel loads GPUs unevenly: device 0 holds more memory and work.",
    "B2_device_balance.png",
    (B2_IMBALANCE,),
    b2,
    requires="2 gpus",
)
B3 = Claim(
    "B3",
    "B",
    PAPER,
    "Hardware and hyperparameters (batch size, workers) are not the main cause.",
    "B1_B3_B4_epoch_time.png",
    (B3_SPEEDUP,),
    b3,
    requires="2 gpus",
)
B4 = Claim(
    "B4",
    "B",
    PAPER,
    "DDP trains faster than DataParallel.",
    "B1_B3_B4_epoch_time.png",
    (B4_SPEEDUP,),
    b4,
    requires="2 gpus",
)
B5 = Claim(
    "B5",
    "B",
    PAPER,
    "DDP needs care to keep accuracy as GPUs are added (the effective batch grows).",
    "B5_ddp_accuracy.png",
    (B5_CHANGE,),
    b5,
    requires="2 processes",
    remark="A difference of test accuracy does not depend on the hardware",
)
DECLARED = (B1, B2, B3, B4, B5)
