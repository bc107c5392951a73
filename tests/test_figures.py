"""The study figures, drawn from result files that the stages' own writers produce from fabricated
runs (two seeds, two GPUs per DataParallel run, a diverged run, a schedule that misses its target),
so the layouts the figures read are the layouts the pipeline writes."""

from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import png_size, recipe

from dpstudy.claims import CLAIMS
from dpstudy.errors import UserError
from dpstudy.fsutil import write_csv_atomic, write_files_atomic
from dpstudy.grid.adaptive import run_figures, schedule_summary, summary_files, target
from dpstudy.grid.tables import results_files, tables
from dpstudy.report.figures import EPOCH_LABEL, FIGURES, INPUTS, draw, make_figures, reached
from dpstudy.report.figures.common import seeds_note, stats_by
from dpstudy.report.stats import Stat, mean_std, per_seed, ratios
from dpstudy.report.tables import frame, load_tables, per_device, read_table, with_runs
from dpstudy.stages import profile_dataloader, train_ddp, train_dp
from dpstudy.train.engine import Result, RunSpec
from dpstudy.train.tasks import TASKS

RECIPE = recipe(epochs=4, lr=0.01, ref_batch=16)
SEEDS = (0, 1)


# --------------------------------------------------------------------------------------------
# Fabricated runs, written by the real writers


def wait_of(loader: str, batch: int, seed: int) -> float:
    """Data-wait fraction of a lenet_utilization run: grows with the batch for the standard loader."""
    return (0.4 + 0.05 * math.log2(batch / 16) if loader == "standard" else 0.05) + 0.02 * seed


def history(
    epochs: int,
    batches: list[int],
    *,
    metric: str = "accuracy",
    final: float = 0.9,
    wait: float = 0.3,
    mem: tuple[float, ...] = (900.0,),
    util: tuple[float, ...] = (90.0,),
    lr: float = 0.01,
    seconds: float = 1.0,
    ddp: bool = False,
    noise: bool = False,
    diverge: bool = False,
) -> list[dict]:
    """Epoch rows as the engine records them (GPU telemetry keys, one value per device)."""
    rows = []
    for e in range(epochs):
        frac, b = (e + 1) / epochs, batches[min(e, len(batches) - 1)]
        steps = math.ceil(1000 / b)
        score = final * frac if metric == "accuracy" else 15 + (final - 15) * frac
        rows.append(
            {
                "epoch": e,
                "steps": steps,
                "global_batch": b,
                "samples": 1000.0,
                "lr": lr * b / batches[0],
                "train_loss": math.nan if diverge and e == epochs - 1 else 2.0 / (e + 1),
                f"train_{metric}": score,
                "test_loss": 1.0 / (e + 1),
                f"test_{metric}": score,
                **({"test_psnr_bicubic": 13.5} if metric == "psnr" else {}),
                "epoch_time_s": seconds,
                "eval_time_s": 0.05,
                "images_per_s": 1000 / seconds,
                "data_wait_s": wait * seconds,
                "compute_s": (1 - wait) * seconds,
                "data_wait_fraction": wait,
                "allreduce_s": 0.1 if ddp else math.nan,
                "allreduce_fraction": 0.1 if ddp else math.nan,
                "allreduces": steps if ddp else 0,
                **({"noise_scale": 40.0 * (e + 1)} if noise else {}),
                "device_mem_mib": list(mem),
                **{f"gpu{i}_util_pct_mean": u for i, u in enumerate(util)},
            }
        )
    return rows


def result(spec: RunSpec, hist: list[dict], devices: int = 1, diverged: bool = False) -> Result:
    return Result(spec, "diverged" if diverged else "finished", hist, [], [f"cuda:{i}" for i in range(devices)])


def dp_results() -> list[Result]:
    out = []
    for mode in ("single", "dp"):
        gpus = 2 if mode == "dp" else 1
        for loader in ("standard", "resident"):
            for batch in (16, 64, 256):
                for seed in SEEDS:
                    spec = RunSpec(
                        "lenet_utilization",
                        "lenet",
                        1.0,
                        32,
                        "digits",
                        mode,
                        1,
                        loader,
                        0,
                        batch,
                        "linear",
                        seed,
                        RECIPE,
                    )
                    util = (95.0 - 10 * math.log2(batch / 16),) * gpus
                    out.append(
                        result(
                            spec,
                            history(3, [batch], wait=wait_of(loader, batch, seed), mem=(900.0,) * gpus, util=util),
                            gpus,
                        )
                    )
    for rule in ("none", "linear", "sqrt"):
        for batch in (16, 64, 256):
            for seed in SEEDS:
                spec = RunSpec(
                    "lenet_lr_scaling",
                    "lenet",
                    1.0,
                    32,
                    "digits",
                    "single",
                    1,
                    "resident",
                    0,
                    batch,
                    rule,
                    seed,
                    RECIPE,
                )
                diverge = (rule, batch, seed) == ("linear", 256, 1)
                final = 0.95 - (0.3 if rule == "none" and batch == 256 else 0.0) + 0.01 * seed
                out.append(result(spec, history(4, [batch], final=final, diverge=diverge), diverged=diverge))
    for mode in ("single", "dp"):
        gpus = 2 if mode == "dp" else 1
        for batch in (32, 128):
            for seed in SEEDS:
                spec = RunSpec(
                    "vgg", "vgg16", 0.125, 32, "digits", mode, 1, "standard", 0, batch, "linear", seed, RECIPE
                )
                mem = (1200.0 + 10 * seed, 700.0 + 10 * seed) if gpus == 2 else (1000.0,)
                util = (97.0, 55.0) if gpus == 2 else (90.0,)
                out.append(
                    result(
                        spec,
                        history(3, [batch], mem=mem, util=util, seconds=2.0 if mode == "single" else 1.8 + 0.1 * seed),
                        gpus,
                    )
                )
    return out


def ddp_results() -> list[Result]:
    out = []
    for world in (1, 2, 4):
        for rule in ("none", "linear"):
            for seed in SEEDS:
                spec = RunSpec("vgg", "vgg16", 0.125, 32, "digits", "ddp", world, "standard", 0, 32, rule, seed, RECIPE)
                final = 0.97 - (0.02 * math.log2(world) if rule == "none" else 0.0)
                out.append(
                    result(
                        spec,
                        history(
                            3,
                            [32 * world],
                            final=final,
                            mem=(950.0,) * world,
                            util=(92.0,) * world,
                            seconds=2.0 / world**0.8,
                            ddp=True,
                        ),
                    )
                )
    return out


def adaptive_results(task: str) -> list[Result]:
    model, metric = ("resnet20", "accuracy") if task == "classification" else ("srnet", "psnr")
    small, large = (32, 256) if task == "classification" else (16, 64)
    growth = [small * 2**i for i in range(4) if small * 2**i <= large]
    finals = (
        {"fixed_small": 0.98, "fixed_large": 0.90, "step_growth": 0.985, "noise_scale": 0.99}
        if metric == "accuracy"
        else {"fixed_small": 18.5, "fixed_large": 18.0, "step_growth": 18.5, "noise_scale": 18.45}
    )
    out = []
    for schedule, final in finals.items():
        for seed in SEEDS:
            batches = {
                "fixed_small": [small],
                "fixed_large": [large],
                "step_growth": growth,
                "noise_scale": [small] * (1 + seed) + growth[1:],
            }[schedule]
            rule = "none" if schedule == "fixed_small" else "sqrt"
            spec = RunSpec(
                task,
                model,
                1.0,
                16,
                "digits",
                "ddp",
                2,
                "resident",
                0,
                batches[0] // 2,
                rule,
                seed,
                RECIPE,
                schedule=schedule,
            )
            out.append(
                result(
                    spec,
                    history(
                        6,
                        batches,
                        metric=metric,
                        final=final + 0.005 * seed,
                        ddp=True,
                        noise=True,
                        mem=(900.0, 750.0),
                        seconds=32 / batches[0] ** 0.5,
                    ),
                )
            )
    return out


def write_results_tree(root: Path) -> Path:
    """A results/ folder as the pipeline leaves it, from the fabricated runs above."""
    pd = root / "profile_dataloader"
    throughput = [
        {"loader": "standard", "batch_size": b, "num_workers": w, "images_per_s": 8000.0 + 2000 * w + b}
        for b in (16, 64, 256)
        for w in (0, 1, 2)
    ]
    throughput += [
        {"loader": "resident", "batch_size": b, "num_workers": 0, "images_per_s": 300000.0 + 1000 * b}
        for b in (16, 64, 256)
    ]
    write_csv_atomic(pd / "throughput.csv", profile_dataloader._throughput_by_batch(throughput))
    write_csv_atomic(pd / "workers.csv", profile_dataloader._throughput_by_workers(throughput))
    write_csv_atomic(
        pd / "probes.csv",
        [
            {
                "series": loader + (", graph" if step == "graph" else ""),
                "loader": loader,
                "step": step,
                "batch_size": b,
                "num_workers": 0,
                "repeat": rep,
                "steps": 12,
                "data_wait_s": 0.1,
                "compute_s": 0.1,
                "data_wait_fraction": wait_of(loader, b, 0),
                "images_per_s": 5000.0,
                "utilization_pct": (90.0 if step == "graph" else 80.0 - b / 8) + rep,
                "device_busy_pct": 85.0 + rep,
                "utilization_source": "gpu_util_pct",
            }
            for loader in ("standard", "resident")
            for step in ("eager", "graph")
            for b in (16, 64, 256)
            for rep in range(2)
        ],
    )
    write_files_atomic(results_files(dp_results(), root / "train_dp", train_dp.headline))
    write_files_atomic(results_files(ddp_results(), root / "train_ddp", train_ddp.headline))
    summaries = {}
    for task in TASKS:
        runs = adaptive_results(task)
        goal = target(runs, 0.01 if task == "classification" else 0.1)
        rows, files = tables(runs, root / "train_adaptive" / task, extra=lambda r, goal=goal: run_figures(r, goal))
        write_files_atomic(files)
        summaries[task] = schedule_summary(rows, TASKS[task].metric)
    write_files_atomic(summary_files(summaries, root / "train_adaptive"))
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return write_results_tree(tmp_path_factory.mktemp("results"))


def container(ax, label: str):
    """The errorbar or bar container drawn with ``label``."""
    found = [c for c in ax.containers if c.get_label() == label]
    assert found, f"no series {label!r} in {[c.get_label() for c in ax.containers]}"
    return found[0]


# --------------------------------------------------------------------------------------------
# The figure set


@pytest.fixture(scope="module")
def drawn(results, tmp_path_factory) -> tuple[Path, list[Path], float]:
    """Every figure drawn once into a nested folder that already holds a stale figure."""
    out = tmp_path_factory.mktemp("figures") / "nested"
    out.mkdir()
    (out / "A3_workers.png").write_bytes(b"stale")
    start = time.perf_counter()
    paths = make_figures(results, out)
    return out, paths, time.perf_counter() - start


def test_every_figure_is_written_as_a_sane_png(drawn):
    out, paths, elapsed = drawn
    assert paths == [out / name for name in FIGURES]
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURES)  # no temporary files left behind
    for path in paths:  # the stale file was replaced too
        width, height = png_size(path.read_bytes(), path.name)
        assert 700 <= width <= 2400 and 400 <= height <= 1400, (path.name, width, height)
        assert path.stat().st_size > 30_000, f"{path.name} looks empty"
    assert elapsed < 30, f"drawing took {elapsed:.1f} s"


def test_figures_map_to_the_studies_claims():
    claims = [c for ids in FIGURES.values() for c in ids]
    assert sorted(claims) == sorted(CLAIMS)  # every claim is shown by exactly one figure
    assert all(name.endswith(".png") and name.startswith(ids[0]) for name, ids in FIGURES.items())


def test_drawing_is_deterministic(results, drawn, tmp_path):
    again = make_figures(results, tmp_path)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in drawn[1]]


def test_grids_without_runs_say_so(results, tmp_path):
    """A stage that trained nothing (e.g. every DDP world size skipped) writes header-less files."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for rel in (
        "train_ddp/runs.csv",
        "train_ddp/epochs.csv",
        "train_adaptive/restoration/runs.csv",
        "train_adaptive/restoration/epochs.csv",
    ):
        write_csv_atomic(copy / rel, [])
    tables = load_tables(copy)
    assert tables["train_ddp/runs.csv"].empty and "name" in tables["train_ddp/runs.csv"]  # declared columns kept
    for name in ("B5_ddp_accuracy.png", "C4_adaptive_restoration.png"):
        fig = draw(name, tables)
        assert any(t.get_text().startswith("no data") for ax in fig.axes for t in ax.texts), name
        fig.savefig(tmp_path / name, format="png")
    # the DataParallel half of B2 stays, without DDP bars
    labels = [
        c.get_label()
        for c in draw("B2_device_balance.png", tables).axes[0].containers
        if not c.get_label().startswith("_")
    ]
    assert labels == ["DataParallel ×2, batch 32", "DataParallel ×2, batch 128"]


# --------------------------------------------------------------------------------------------
# Bad input: one line, before any drawing


def test_missing_input_names_file_and_stage(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "train_ddp" / "runs.csv").unlink()
    (copy / "train_adaptive" / "summary.csv").unlink()
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        make_figures(copy, out)
    message = str(err.value)
    assert "\n" not in message
    assert str(copy / "train_ddp" / "runs.csv") in message and "train_ddp stage" in message
    assert str(copy / "train_adaptive" / "summary.csv") in message and "train_adaptive stage" in message
    assert "dvc repro train_ddp train_adaptive" in message
    assert not out.exists()  # nothing drawn, not even the folder


def test_missing_results_folder(tmp_path):
    with pytest.raises(UserError, match=r"does not exist: run the training stages first"):
        make_figures(tmp_path / "nowhere", tmp_path / "out")


def test_missing_column_names_the_stage_to_rerun(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    path = copy / "profile_dataloader" / "probes.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop utilization_source
    with pytest.raises(UserError) as err:
        make_figures(copy, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert "no column utilization_source" in str(err.value) and "dvc repro -f profile_dataloader" in str(err.value)


def test_every_input_is_a_file_a_stage_writes(results):
    assert set(load_tables(results)) == set(INPUTS)
    assert all((results / rel).is_file() for rel in INPUTS)


# --------------------------------------------------------------------------------------------
# Aggregation and what the figures show


def test_mean_std_ignores_unmeasured_values():
    assert mean_std([1.0, 2.0, 3.0, math.nan]) == Stat(2.0, 1.0, 3)
    one = mean_std([0.7])
    assert (one.mean, one.n) == (0.7, 1) and math.isnan(one.std)  # one seed: no error bar
    none = mean_std([math.nan])
    assert math.isnan(none.mean) and none.n == 0


def test_stats_by_groups_and_sorts_by_key():
    df = frame([{"b": "64", "v": "0.5"}, {"b": "16", "v": "0.1"}, {"b": "64", "v": "0.7"}, {"b": "16", "v": "nan"}])
    stats = stats_by(df, "b", "v")
    assert list(stats) == [16, 64]
    assert stats[16].mean == 0.1 and stats[16].n == 1
    assert stats[64].mean == pytest.approx(0.6) and stats[64].std == pytest.approx(math.sqrt(0.02))


def test_tables_are_typed_columns(results):
    """Numbers are numbers (parsed as Python parses them), text is text, per-device lists stay text."""
    runs = load_tables(results)["train_dp/runs.csv"]
    assert runs["seed"].dtype == np.int64 and runs["global_batch"].dtype == np.int64
    assert runs["epoch_time_s"].dtype == np.float64 and runs["diverged_step"].dtype == np.float64
    assert runs["name"].map(type).eq(str).all() and runs["device_mem_mib"].map(type).eq(str).all()
    text = (results / "train_dp" / "runs.csv").read_text().splitlines()
    header, first = text[0].split(","), text[1].split(",")
    assert runs["test_accuracy"].iloc[0] == float(first[header.index("test_accuracy")])
    probe = frame(
        [{"x": "1.5", "y": "", "z": "a;b"}, {"x": "oops", "y": "2", "z": ""}], "profile_dataloader/probes.csv"
    )
    assert probe["x"].tolist() == ["1.5", "oops"]  # not declared, not all numbers: text
    assert probe["y"].isna().tolist() == [True, False] and probe["y"].iloc[1] == 2.0
    declared = frame([{"utilization_pct": "oops"}, {"utilization_pct": "80"}], "profile_dataloader/probes.csv")
    assert math.isnan(declared["utilization_pct"].iloc[0])  # a column the figures read: unparsable is nan


def test_per_device_long_form():
    df = frame(
        [
            {"name": "a", "seed": "0", "mem": "913.3;736.0"},
            {"name": "b", "seed": "1", "mem": "92.0"},
            {"name": "c", "seed": "2", "mem": ""},
            {"name": "d", "seed": "3", "mem": "nan"},
        ]
    )
    long = per_device(df, "mem")
    assert long["name"].tolist() == ["a", "a", "b", "d"] and long["device"].tolist() == [0, 1, 0, 0]
    assert long["mem"].tolist()[:3] == [913.3, 736.0, 92.0] and math.isnan(long["mem"].iloc[3])
    assert long["seed"].tolist() == [0, 0, 1, 3]


def test_with_runs_gives_evaluations_their_configuration(results, tmp_path):
    """An evaluation row gets batch, lr rule, world size from its run: no name is parsed."""
    runs = load_tables(results)["train_ddp/runs.csv"]
    evals = [
        {"stage": "train_ddp", "name": name, "seed": str(seed), "test_metric": "0.5"}
        for name, seed in zip(runs["name"][::-1], runs["seed"][::-1])
    ]
    evals.append({"stage": "train_ddp", "name": "gone", "seed": "0", "test_metric": "0.1"})
    write_csv_atomic(tmp_path / "evaluations.csv", evals)
    joined = with_runs(read_table(tmp_path / "evaluations.csv"), runs)
    assert joined["name"].tolist() == [e["name"] for e in evals[:-1]]  # evaluations' order; no run, no row
    expected = runs.set_index("name").loc[joined["name"]]
    for column in ("batch", "global_batch", "lr_rule", "world"):
        assert joined[column].tolist() == expected[column].tolist()
    assert joined["seed"].tolist() == expected["seed"].tolist()
    epochs = with_runs(load_tables(results)["train_ddp/epochs.csv"], runs, on="series")
    assert len(epochs) == 36 and set(epochs["world"]) == {1, 2, 4}


def test_data_wait_lines_are_means_over_seeds(results):
    fig = draw("A1_A2_data_wait_utilization.png", load_tables(results))
    util, wait = fig.axes  # panels in the claims' order: A1, then A2
    assert util.get_title().startswith("A1:") and wait.get_title().startswith("A2:")
    line = container(wait, "single device, standard DataLoader")
    expected = [statistics_mean(wait_of("standard", b, s) for s in SEEDS) for b in (16, 64, 256)]
    assert list(line.lines[0].get_xdata()) == [16, 64, 256]
    assert list(line.lines[0].get_ydata()) == pytest.approx(expected)
    # two seeds: error bars of the seeds' std (0.02 apart -> 0.01414)
    segments = line.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([2 * 0.02 / math.sqrt(2)] * 3)
    assert any(c.get_label() == "DataParallel ×2, resident tensors" for c in wait.containers)


def test_dp_imbalance_bars_show_each_device(results):
    fig = draw("B2_device_balance.png", load_tables(results))
    memory = fig.axes[0]
    bars = container(memory, "DataParallel ×2, batch 128")
    assert [b.get_height() for b in bars] == pytest.approx([1205.0, 705.0])  # device 0, 1 over seeds 0 and 1
    assert f"{1205 / 705:.2f}×" in [t.get_text() for t in memory.texts]
    ddp = container(memory, "DDP ×4, batch 32 per process")
    assert len(ddp) == 4


def test_lr_scaling_accuracy_survives_a_diverged_seed(results):
    fig = draw("A4_lr_scaling.png", load_tables(results))
    acc = fig.axes[-1]
    none = container(acc, "lr rule: none").lines[0].get_ydata()
    assert list(none) == pytest.approx([0.955, 0.955, 0.655])
    linear_loss = fig.axes[1].lines  # the diverged seed's nan loss leaves the other seed's value
    last = [line.get_ydata()[-1] for line in linear_loss if line.get_label() == "batch 256"]
    assert last == pytest.approx([2.0 / 4])


def test_adaptive_figure_marks_target_and_misses(results):
    tables = load_tables(results)
    fig = draw("C1_C3_adaptive_classification.png", tables)
    by_steps, ttt = fig.axes[0], fig.axes[2]
    goal = [line for line in by_steps.lines if line.get_label().startswith("target")]
    assert goal and goal[0].get_ydata()[0] == pytest.approx((0.98 + 0.985) / 2 - 0.01)
    notes = [t.get_text() for t in ttt.texts]
    assert "not reached\n(0 of 2 seeds)" in notes  # fixed_large ends at 0.90-0.905, below the target
    assert "1.00×" in notes  # fixed_small against itself
    assert fig.axes[5].get_title().startswith("throughput (C3")
    restoration = draw("C4_adaptive_restoration.png", tables)
    assert restoration.axes[0].get_ylabel() == "test PSNR (dB)"
    assert restoration.axes[5].get_title().startswith("throughput (C4")  # its own claim, not C3


def test_a_target_reached_by_some_seeds_says_how_many(results, tmp_path):
    """A schedule whose mean curve ends above the target while one seed's did not: no mean time,
    and the bar says 1 of 2 seeds reached it (not "not reached")."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    path = copy / "train_adaptive" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        if (row["task"], row["schedule"]) == ("restoration", "noise_scale"):
            row.update(time_to_target_s="nan", speedup="nan", reached_target="1", seeds="2")
    write_csv_atomic(path, rows)
    ttt = draw("C4_adaptive_restoration.png", load_tables(copy)).axes[2]
    assert "reached by\n1 of 2 seeds" in [t.get_text() for t in ttt.texts]
    assert reached({"reached_target": "0", "seeds": "3"}) == "not reached\n(0 of 3 seeds)"
    assert reached({}) == "not reached"  # a summary without the counts


def statistics_mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_footnotes_count_the_seeds_they_average(results):
    """ "mean over seeds" must be true: each footnote says how many seeds its lines average."""
    tables = load_tables(results)
    for name in (
        "A1_A2_data_wait_utilization.png",
        "A4_lr_scaling.png",
        "B1_B3_B4_epoch_time.png",
        "B2_device_balance.png",
        "B5_ddp_accuracy.png",
        "C1_C3_adaptive_classification.png",
    ):
        note = " ".join(draw(name, tables)._supxlabel.get_text().split())  # lines wrapped to the figure's width
        assert "mean over 2 seeds (0, 1), ± one std" in note, (name, note)
    assert "optimizer steps per run: 252 at batch 16, 64 at batch 64, 16 at batch 256" in " ".join(
        draw("A4_lr_scaling.png", tables)._supxlabel.get_text().split()
    )
    assert "one measurement per point: no error bars" in draw("A3_workers.png", tables)._supxlabel.get_text()
    assert seeds_note(pd.DataFrame({"seed": [3, 3]})) == "one seed (3): no error bars"


# --------------------------------------------------------------------------------------------
# What a first read must not get wrong (issue 14)


def test_epochs_are_numbered_as_epochs_csv_numbers_them(results):
    """dvc plots draws epochs.csv's `epoch` as it is (from 0): the PNGs draw the same numbers."""
    tables = load_tables(results)
    first = tables["train_dp/epochs.csv"]["epoch"].min()
    assert first == 0
    a4 = draw("A4_lr_scaling.png", tables).axes[0]
    assert a4.get_xlabel() == EPOCH_LABEL and min(a4.lines[0].get_xdata()) == first
    b5 = draw("B5_ddp_accuracy.png", tables).axes[1]
    assert b5.get_xlabel() == EPOCH_LABEL and min(b5.lines[0].get_xdata()) == first
    batch_ax = draw("C1_C3_adaptive_classification.png", tables).axes[3]
    assert batch_ax.get_xlabel() == EPOCH_LABEL and min(batch_ax.lines[0].get_xdata()) == first


def lines_of(ax, label: str) -> list:
    return [c for c in ax.containers if c.get_label() == label]


def rewrite(path: Path, change) -> None:
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        change(row)
    write_csv_atomic(path, rows)


def test_ddp_speedup_against_both_baselines_with_bars_over_seeds(results, tmp_path):
    """DDP is set against DDP with 1 process and against the single-device run; each seed's epoch
    time is averaged over its lr rules first, so a bar is a spread over seeds, never over rules."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)

    def ddp_time(row):  # lr rule linear 50% slower than none: a spread the bars must not show
        base = 2.0 / float(row["world"]) ** 0.8
        row["epoch_time_s"] = str(base * (1.5 if row["lr_rule"] == "linear" else 1.0) + 0.1 * int(row["seed"]))

    rewrite(copy / "train_ddp" / "runs.csv", ddp_time)
    tables = load_tables(copy)
    fig = draw("B1_B3_B4_epoch_time.png", tables)
    time_ax, speed_ax = fig.axes
    ddp = container(time_ax, "DDP, batch 32 per process")
    bars = [seg[1][1] - seg[0][1] for seg in ddp.lines[2][0].get_segments()]
    assert bars == pytest.approx([2 * 0.1 / math.sqrt(2)] * 3)  # seeds 0.1 s apart; the rules' 50% averaged out

    ddp_rows = tables["train_ddp/runs.csv"].query("sweep == 'vgg'")
    times = {w: per_seed(ddp_rows[ddp_rows["world"] == w], "epoch_time_s").to_dict() for w in (1, 2, 4)}
    single = per_seed(
        tables["train_dp/runs.csv"].query("sweep == 'vgg' and mode == 'single' and global_batch == 32"), "epoch_time_s"
    ).to_dict()
    against_one = container(speed_ax, "DDP vs DDP with 1 process, batch 32 per process").lines[0].get_ydata()
    against_single = container(speed_ax, "DDP vs single device, batch 32 per process").lines[0].get_ydata()
    assert list(against_one) == pytest.approx([1.0] + [ratios(times[1], times[w]).mean for w in (2, 4)])
    assert list(against_single) == pytest.approx([ratios(single, times[w]).mean for w in (1, 2, 4)])
    note = " ".join(fig._supxlabel.get_text().split())
    assert "DDP with 1 process, which carries DDP's own overheads" in note
    t1, t0 = mean_std(times[1].values()).mean, mean_std(single.values()).mean
    assert f"batch 32: DDP with 1 process {t1:.2f} s/epoch vs the single-device run {t0:.2f} s" in note


def test_one_device_dataparallel_is_not_joined_to_the_single_run(results, tmp_path):
    """DataParallel on one device sits beside the single-device run at x = 1: a line joining the two
    would be vertical and read as an error bar."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)

    def one_device(row):
        if row["sweep"] == "vgg" and row["mode"] == "dp":
            row.update(devices="1", device_mem_mib="1000.0", utilization_pct="90.0")

    rewrite(copy / "train_dp" / "runs.csv", one_device)
    fig = draw("B1_B3_B4_epoch_time.png", load_tables(copy))
    for ax in fig.axes:
        for line in ax.lines:
            xs = list(line.get_xdata())
            if line.get_linestyle() != "None" and len(xs) > 1:
                assert len(set(xs)) > 1, f"a vertical line at x = {xs[0]} in {ax.get_title()!r}"
        dp = [c for c in ax.containers if c.get_label().startswith("DataParallel ×1")]
        single = [c for c in ax.containers if c.get_label().startswith("single device")]
        for a in dp:
            for b in single:  # set apart, not on top of each other
                assert a.lines[0].get_xdata()[0] != b.lines[0].get_xdata()[0]
    assert "ran on 1 device" in fig._supxlabel.get_text()


def test_b5_legend_shows_line_styles_and_accuracy_is_not_magnified(results):
    tables = load_tables(results)
    fig = draw("B5_ddp_accuracy.png", tables, {"digits": 359})
    final, curves = fig.axes
    styles = {
        text.get_text(): handle.get_linestyle()
        for text, handle in zip(curves.get_legend().get_texts(), curves.get_legend().legend_handles)
    }
    assert styles["2 processes, lr rule none"] == "--" and styles["2 processes, lr rule linear"] == "-"
    assert curves.get_legend().handlelength >= 3  # long enough to show a dash
    low, high = final.get_ylim()
    assert high - low >= 0.10 - 1e-9 and high <= 1.011  # a 1-2 image gap stays small; nothing above 100%
    assert max(final.get_yticks()) <= 1.0
    assert "test set: 359 images (one image = 0.28 percentage points" in fig._supxlabel.get_text()


def test_a3_log_axis_is_labelled_and_its_legend_squeezes_no_panel(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = draw("A3_workers.png", load_tables(results))
    FigureCanvasAgg(fig).draw()
    ax, rel = fig.axes
    low, high = ax.get_ylim()
    labelled = [t for t in ax.yaxis.get_majorticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    assert len(labelled) >= 3, [t.get_text() for t in labelled]
    assert ax.get_position().width == pytest.approx(rel.get_position().width, rel=0.05)


def test_b2_ratio_label_clears_the_error_cap(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = draw("B2_device_balance.png", load_tables(results))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # the layout settles the text's place
    renderer = canvas.get_renderer()
    memory = fig.axes[0]
    label = next(t for t in memory.texts if t.get_text().endswith("×"))
    bars = container(memory, "DataParallel ×2, batch 32")
    x, top = label.xy  # device 0's mean + std: the top of its error bar
    assert x == pytest.approx(bars[0].get_x() + bars[0].get_width() / 2)
    cap = memory.transData.transform((x, top))[1]
    assert label.get_window_extent(renderer).y0 - cap >= 5  # pixels between the cap and the text
