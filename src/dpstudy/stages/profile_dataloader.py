"""Profile data loading (claims A1–A3): loader throughput over batch sizes × num_workers, and
short LeNet training probes that split every step into data-wait and compute time.

Reads params: preset, telemetry, profile_dataloader. Reads <data>/<dataset>.pt. Writes into <out>:
metrics.json (two headline ratios, for `dvc metrics show`), throughput.csv, workers.csv and probes.csv (for
`dvc plots show`), and logs everything to MLflow (experiment of study A).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import as_dict, flatten, load_section
from ..console import format_table, progress, say
from ..devices import device_names, resolve_device
from ..errors import UserError
from ..fsutil import csv_text, json_text, write_files_atomic
from ..measure.telemetry import utilization
from ..track.tracking import Tracker
from .args import data_stage_arguments

STAGE = "profile_dataloader"


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section(STAGE, args.params)
    _, telemetry = load_section("telemetry", args.params)
    # torch and the loaders: only once the params are known to be good
    from ..data.loaders import Augment, channel_stats
    from ..data.prepared import load_prepared
    from ..train.graphstep import refusal
    from ..train.models import input_spec

    device = resolve_device(cfg.device)
    for step in cfg.probe.step:  # before any work: a CUDA graph needs a GPU
        why = refusal(step, f"{STAGE}.probe.step", device)
        if why:
            raise UserError(why)
    data = load_prepared(Path(args.data) / f"{cfg.dataset}.pt")
    out = Path(args.out)

    spec = input_spec(cfg.model, data.channels)
    mean, std = channel_stats(data.train_images, spec)
    common = dict(
        spec=spec,
        mean=mean,
        std=std,
        seed=cfg.seed,
        device=device,
        augment=Augment(cfg.augment.crop_padding, cfg.augment.hflip),
    )
    images, labels = data.train_images, data.train_labels
    say(
        f"[{STAGE}] {cfg.dataset}: {len(labels)} training images as {spec.channels}×{spec.size}×{spec.size} on {device}"
    )

    params = {"preset": preset, "telemetry": as_dict(telemetry), STAGE: as_dict(cfg)}
    with Tracker("A", STAGE, preset=preset, params=params, devices=device_names(device)) as tracker:
        tracker.parent.set_tags({"dataset": cfg.dataset, "device": str(device)})
        throughput = _throughput_grid(cfg, images, labels, common, device, tracker)
        probes = _probes(cfg, telemetry, data, common, device, tracker)
        metrics = summarize(throughput, probes)
        write_files_atomic(
            {
                out / "throughput.csv": csv_text(_throughput_by_batch(throughput)),
                out / "workers.csv": csv_text(_throughput_by_workers(throughput)),
                out / "probes.csv": csv_text(probes),
                out / "metrics.json": json_text(headline(throughput)),
            }
        )
        tracker.parent.log_metrics({k: float(v) for k, v in flatten(metrics).items()}, step=0)
        for name in ("metrics.json", "throughput.csv", "workers.csv", "probes.csv"):
            tracker.parent.log_artifact(out / name)

    _print_summary(preset, device, throughput, probes, out)
    return 0


# --------------------------------------------------------------------------------------------
# The two measurements


def _throughput_grid(cfg, images, labels, common, device, tracker) -> list[dict]:
    from ..data.loaders import make_loader
    from ..measure.profiling import measure_throughput

    configs = [("standard", bs, nw) for bs in cfg.batch_sizes for nw in cfg.num_workers]
    configs += [("resident", bs, 0) for bs in cfg.batch_sizes]
    rows = []
    for kind, bs, nw in progress(configs, desc="throughput"):
        name = f"throughput {kind} bs={bs}" + (f" workers={nw}" if kind == "standard" else "")
        cfg_params = {"loader": kind, "batch_size": bs, "num_workers": nw, "pin_memory": cfg.pin_memory}
        with tracker.child(name, cfg_params, tags={"measurement": "throughput"}) as run:
            loader = make_loader(
                kind, images, labels, batch_size=bs, num_workers=nw, pin_memory=cfg.pin_memory, **common
            )
            for repeat in range(cfg.repeats):  # each a fresh pass: warm-up, then the timed batches
                result = measure_throughput(loader, device, cfg.warmup_batches, cfg.measure_batches)
                run.log_metrics({"images_per_s": result.images_per_s, "seconds": result.seconds}, step=repeat)
                rows.append(
                    {
                        "loader": kind,
                        "batch_size": bs,
                        "num_workers": nw,
                        "repeat": repeat,
                        "images_per_s": round(result.images_per_s, 1),
                    }
                )
            del loader  # ends its worker processes before the next configuration starts
        mean = _cell_means(rows[-cfg.repeats :])[0]["images_per_s"]
        say(f"[throughput] {kind:8s} batch {bs:5d} workers {nw}: {mean:12,.0f} images/s (mean of {cfg.repeats})")
    return rows


def _probes(cfg, telemetry, data, common, device, tracker) -> list[dict]:
    configs = [
        (kind, step, bs, repeat)
        for kind in ("standard", "resident")
        for step in cfg.probe.step
        for bs in cfg.batch_sizes
        for repeat in range(cfg.probe.repeats)
    ]
    rows = []
    for kind, step, bs, repeat in progress(configs, desc="probes"):
        nw = cfg.probe.num_workers if kind == "standard" else 0
        cfg_params = {
            "loader": kind,
            "step": step,
            "batch_size": bs,
            "num_workers": nw,
            "model": cfg.model,
            "steps": cfg.probe.steps,
            "min_seconds": cfg.probe.min_seconds,
            "repeat": repeat,
            "lr": cfg.probe.lr,
            "momentum": cfg.probe.momentum,
        }
        name = f"probe {_series(kind, step)} bs={bs}" + (f" #{repeat}" if cfg.probe.repeats > 1 else "")
        with tracker.child(name, cfg_params, tags={"measurement": "probe"}) as run:
            result = _probe(cfg, telemetry.interval_s, data, common, device, kind, step, bs, nw)
            util_key, util = _log_probe(run, result)
        rows.append(_probe_row(kind, step, nw, repeat, result, util_key, util))
        say(
            f"[probe]      {_series(kind, step):14s} batch {bs:5d}: data wait {result.data_wait_fraction:6.1%} of "
            f"the step, {util_key} {_percent(util)}, device busy {_percent(result.device_busy_pct)}"
        )
    return rows


def _probe(cfg, interval_s, data, common, device, kind, step, bs, nw):
    """One training probe (`run_probe`): a fresh model, seeded alike for every probe, on a fresh loader."""
    import torch

    from ..data.loaders import make_loader
    from ..measure.profiling import run_probe
    from ..train.models import build_model

    torch.manual_seed(cfg.seed)  # same initial weights for every probe
    model = build_model(cfg.model, data.channels, data.num_classes).to(device)
    loader = make_loader(
        kind, data.train_images, data.train_labels, batch_size=bs, num_workers=nw, pin_memory=cfg.pin_memory, **common
    )
    return run_probe(
        model,
        loader,
        device,
        batch_size=bs,
        steps=cfg.probe.steps,
        warmup_steps=cfg.probe.warmup_steps,
        lr=cfg.probe.lr,
        momentum=cfg.probe.momentum,
        sample_interval_s=interval_s,
        step=step,
        min_seconds=cfg.probe.min_seconds,
    )


def _log_probe(run, result) -> tuple[str, float]:
    """A probe's per-step series, samples and figures (a nan is left out) on its MLflow run; its
    utilization as (source, percent)."""
    run.log_series("data_wait_s", result.data_wait_s)
    run.log_series("compute_s", result.compute_s)
    run.log_series("loss", result.loss)
    run.log_samples(result.samples)
    util_key, util = utilization(result.utilization)
    figures = {
        "data_wait_fraction": result.data_wait_fraction,
        "images_per_s": result.images_per_s,
        util_key: util,
        "device_busy_pct": result.device_busy_pct,
    }
    run.log_metrics({k: v for k, v in figures.items() if not math.isnan(v)}, step=0)
    return util_key, util


def _probe_row(kind, step, nw, repeat, result, util_key, util) -> dict:
    """A probe's row of probes.csv."""
    return {
        "series": _series(kind, step),
        "loader": kind,
        "step": step,
        "batch_size": result.batch_size,
        "num_workers": nw,
        "repeat": repeat,
        "steps": len(result.compute_s),
        "window_s": round(result.total_s, 4),
        "data_wait_s": round(sum(result.data_wait_s), 6),
        "compute_s": round(sum(result.compute_s), 6),
        "data_wait_fraction": round(result.data_wait_fraction, 4),
        "images_per_s": round(result.images_per_s, 1),
        "utilization_pct": round(util, 1),
        "utilization_source": util_key,
        "device_busy_pct": round(result.device_busy_pct, 1),
    }


def _percent(value: float) -> str:
    """A utilization for the console: nan is a window too short for NVML or no GPU, never a number."""
    return "  n/a" if math.isnan(value) else f"{value:5.1f}"


# --------------------------------------------------------------------------------------------
# Outputs


def _cell_means(rows: list[dict]) -> list[dict]:
    """One row per (loader, batch, workers): images/s averaged over its repeats."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["loader"], r["batch_size"], r["num_workers"]), []).append(r["images_per_s"])
    return [
        {"loader": k[0], "batch_size": k[1], "num_workers": k[2], "images_per_s": round(sum(v) / len(v), 1)}
        for k, v in cells.items()
    ]


def headline(throughput: list[dict]) -> dict:
    """metrics.json, what `dvc metrics show` prints: two ratios of images/s (the CSVs hold the rest).

    resident_speedup: the resident loader's best images/s over the standard DataLoader's best (any
    batch size and num_workers); A3_workers_gain: at the largest batch, the standard loader's best
    num_workers > 0 over num_workers = 0 (claim A3; nan without both)."""
    cells = _cell_means(throughput)
    best = {
        loader: max((r["images_per_s"] for r in cells if r["loader"] == loader), default=math.nan)
        for loader in ("standard", "resident")
    }
    standard = [r for r in cells if r["loader"] == "standard"]
    big = max((r["batch_size"] for r in standard), default=None)
    at_big = {r["num_workers"]: r["images_per_s"] for r in standard if r["batch_size"] == big}
    workers = max((v for w, v in at_big.items() if w > 0), default=math.nan)
    return {
        "resident_speedup": _ratio(best["resident"], best["standard"]),
        "A3_workers_gain": _ratio(workers, at_big.get(0, math.nan)),
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 and math.isfinite(a) else math.nan


def summarize(throughput: list[dict], probes: list[dict]) -> dict:
    """Best loader throughput and data-wait and utilisation per batch: the parent MLflow run's metrics."""
    throughput = _cell_means(throughput)
    standard = [r for r in throughput if r["loader"] == "standard"]
    resident = [r for r in throughput if r["loader"] == "resident"]
    best_std = max(standard, key=lambda r: r["images_per_s"])
    best_res = max(resident, key=lambda r: r["images_per_s"])
    metrics = {
        "throughput": {
            "standard_best_images_per_s": best_std["images_per_s"],
            "standard_best_num_workers": best_std["num_workers"],
            "standard_best_batch_size": best_std["batch_size"],
            "resident_best_images_per_s": best_res["images_per_s"],
            "resident_best_batch_size": best_res["batch_size"],
            "resident_speedup": round(best_res["images_per_s"] / best_std["images_per_s"], 2),
        },
        "data_wait_fraction": {},
        "utilization_pct": {},
    }
    cells: dict[tuple, list[dict]] = {}
    for r in probes:
        cells.setdefault((r["loader"] + ("_graph" if r["step"] == "graph" else ""), f"bs{r['batch_size']}"), []).append(
            r
        )
    for (probe, key), repeats in cells.items():  # the mean over repeats; nan (too short, no GPU) is not logged
        for name in ("data_wait_fraction", "utilization_pct", "device_busy_pct"):
            values = [r[name] for r in repeats if not math.isnan(r[name])]
            if values:
                metrics.setdefault(name, {}).setdefault(probe, {})[key] = round(sum(values) / len(values), 4)
    return metrics


def _throughput_by_batch(rows: list[dict]) -> list[dict]:
    """Long format for the `series` plot template: one line per loader (and worker count), the
    mean over repeats."""
    return [
        {"series": _throughput_series(r), "batch_size": r["batch_size"], "images_per_s": r["images_per_s"]}
        for r in _cell_means(rows)
    ]


def _throughput_by_workers(rows: list[dict]) -> list[dict]:
    """Standard loader images/s against num_workers, one line per batch size (claim A3), every
    repeat (the report's interval for A3 pairs them by ``repeat``)."""
    return [
        {
            "series": f"batch {r['batch_size']}",  # the line `dvc plots` draws
            "batch_size": r["batch_size"],
            "num_workers": r["num_workers"],
            "repeat": r.get("repeat", 0),
            "images_per_s": r["images_per_s"],
        }
        for r in rows
        if r["loader"] == "standard"
    ]


def _series(loader: str, step: str) -> str:
    """A probe's line in the figures: its loader, and its step kind when that is a CUDA graph."""
    return loader if step == "eager" else f"{loader}, graph"


def _throughput_series(row: dict) -> str:
    if row["loader"] != "standard":
        return row["loader"]
    workers = row["num_workers"]
    return f"standard, {workers} worker{'' if workers == 1 else 's'}"


def _print_summary(preset, device, throughput, probes, out: Path) -> None:
    print(f"\n{STAGE} ({preset} preset, {device}): loader throughput, images/s")
    print(
        format_table(
            ["loader", "batch", "workers", "images/s (mean)"],
            [(r["loader"], r["batch_size"], r["num_workers"], r["images_per_s"]) for r in _cell_means(throughput)],
        )
    )
    print("\ntraining probes: share of each step spent waiting for data")
    print(
        format_table(
            ["probe", "batch", "steps", "data wait", "images/s", "utilization %", "device busy %"],
            [
                (
                    r["series"],
                    r["batch_size"],
                    r["steps"],
                    f"{r['data_wait_fraction']:.1%}",
                    r["images_per_s"],
                    f"{_percent(r['utilization_pct']).strip()} ({r['utilization_source'].split('_')[0]})",
                    _percent(r["device_busy_pct"]).strip(),
                )
                for r in probes
            ],
        )
    )
    print("n/a: no number (a window shorter than NVML's averaging period, or no GPU for the busy share)")
    print(f"\nfiles: {out}/metrics.json, throughput.csv, workers.csv, probes.csv; runs in MLflow")
