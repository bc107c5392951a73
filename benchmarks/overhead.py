"""Cost of the engine's telemetry: `engine.train` as a stage runs it vs a bare PyTorch loop.

Both sides train the same model (same seed, so the same initial weights) on the same real data
(the ``digits`` set, prepared offline into a temporary folder and upscaled by the loader to the
model's 32×32 input; pixel content does not change the speed, and real labels show that both
sides really learn), through the same resident loader (same batches, same augmentation), with
the same SGD optimizer and constant learning rate, for the same epochs:

- engine: `sweep.run_grid` of one `RunSpec`, i.e. exactly what a training stage does per
  configuration: a child run in a real `tracking.Tracker` (sqlite MLflow store in the temporary
  folder; the parent run is opened once, outside the timing, as a stage opens it once per grid),
  per-step timing and loss/accuracy bookkeeping, the `ResourceSampler` thread, per-epoch
  evaluation, the cross-rank reductions (no-ops in one process), metric logging and an atomic
  checkpoint every epoch (run_grid also prints its one line per configuration);
- bare: ``for x, y in loader: loss = ...; zero_grad; backward; step``, then per epoch the same
  evaluation (`engine.evaluate`) and an atomic checkpoint of weights + optimizer
  (`checkpoints.save`), because the stage must evaluate and checkpoint too: those are not
  telemetry, so they are on both sides rather than on neither.

Two figures, both per training image on equal work (A, B, A, B, ... interleaved, after one untimed
one-epoch warm-up of each; medians):

- ``step_overhead``: training epochs only, the window of the engine's own ``epoch_time_s``
  (first batch fetched .. last optimizer step), timed the same way in the bare loop: what timing,
  the sampler thread and the per-step bookkeeping add to a step;
- ``telemetry_overhead`` (the headline, goal ≤ 2%): everything, wall clock of the whole
  configuration (loader and model set-up, child run, training, evaluation, checkpoints, MLflow
  logging). MLflow, the sampler start/stop and the larger checkpoint are per-epoch or
  per-configuration costs; with digits an epoch is only ~12 steps at batch 128 (CIFAR-10: 391),
  so they weigh ~30× more here than in a real run: this figure is an upper bound.

    python benchmarks/overhead.py [--model resnet20] [--batch 128] [--epochs 2] [--repeats 7] [--threads 2]

Ends with one line ``telemetry_overhead: N.N%`` ((engine - bare) / bare, time per image).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dpstudy.config import AugmentConfig, RecipeConfig
from dpstudy.data.loaders import Augment, ResidentLoader
from dpstudy.data.prepared import file_sha256, load_prepared, prepare
from dpstudy.devices import cpu_name, device_names
from dpstudy.grid.sweep import run_grid
from dpstudy.track.tracking import Tracker
from dpstudy.train import checkpoints
from dpstudy.train.engine import EVAL_BATCH, RunSpec, TrainData, evaluate, make_optimizer
from dpstudy.train.models import MODELS, build_model

CPU = torch.device("cpu")


def engine_run(spec: RunSpec, data: TrainData, tracker: Tracker, out: Path, interval_s: float):
    """(training-epoch seconds, wall seconds) of one configuration as a stage trains it."""
    t0 = time.perf_counter()
    [result] = run_grid([spec], {spec.dataset: data}, tracker, out, device=CPU, sample_interval_s=interval_s)
    wall = time.perf_counter() - t0
    assert result.outcome == "finished" and not result.restored_epochs, (result.outcome, result.restored_epochs)
    return sum(h["epoch_time_s"] for h in result.history), wall


def bare_run(spec: RunSpec, data: TrainData, out: Path):
    """The same work as a plain PyTorch loop (plus the evaluation and checkpoint a stage needs)."""
    t0 = time.perf_counter()
    d, (shape, mean, std) = data.data, data.stats(spec.model)
    aug = spec.recipe.augment
    loader = ResidentLoader(
        d.train_images,
        d.train_labels,
        spec=shape,
        batch_size=spec.batch,
        mean=mean,
        std=std,
        augment=Augment(aug.crop_padding, aug.hflip),
        seed=spec.seed,
        device=CPU,
    )
    test_loader = ResidentLoader(
        d.test_images, d.test_labels, spec=shape, batch_size=EVAL_BATCH, mean=mean, std=std, shuffle=False, device=CPU
    )
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, d.channels, d.num_classes, width=spec.width)
    optimizer = make_optimizer(model, spec.recipe, spec.peak_lr)
    loss_fn = nn.CrossEntropyLoss()
    train_s = 0.0
    for epoch in range(spec.recipe.epochs):
        model.train()
        loader.set_epoch(epoch)
        t = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_s += time.perf_counter() - t
        evaluate(model, test_loader, loss_fn)
        checkpoints.save(out / "bare.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return train_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--model", default="resnet20", choices=list(MODELS), help="network (dpstudy.train.models)")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (vgg16 0.25 suits a CPU)")
    ap.add_argument("--batch", type=int, default=128, help="batch per step")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed run (digits: 1438 training images)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per side, interleaved")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--interval", type=float, default=0.5, help="sampler interval in s (params.yaml telemetry)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="dpstudy-overhead-") as tmp:
        tmp = Path(tmp)
        path = prepare("digits", raw_dir=tmp / "raw", out_dir=tmp)
        data = TrainData(load_prepared(path), file_sha256(path))
        recipe = RecipeConfig(
            epochs=args.epochs,
            optimizer="sgd",
            lr=0.05,
            ref_batch=args.batch,
            momentum=0.9,
            weight_decay=5e-4,
            warmup_epochs=0,
            decay="none",
            milestones=[],
            gamma=0.1,
            augment=AugmentConfig(crop_padding=2, hflip=False),
            step="eager",
        )
        spec = RunSpec(
            "overhead",
            args.model,
            args.width,
            MODELS[args.model].input_size,
            "digits",
            "single",
            1,
            "resident",
            0,
            args.batch,
            "none",
            0,
            recipe,
        )
        warm = dataclasses.replace(spec, recipe=dataclasses.replace(recipe, epochs=1))
        images = args.epochs * len(data.data.train_labels)
        print(
            f"device: cpu ({cpu_name()}); torch {torch.__version__}; {torch.get_num_threads()} threads; "
            f"{args.model} (width {args.width}) on digits ({len(data.data.train_labels)} training images, "
            f"{-(-len(data.data.train_labels) // args.batch)} steps/epoch at batch {args.batch}), "
            f"{args.epochs} epochs per run, {args.repeats} runs per side interleaved"
        )
        with Tracker(
            "B",
            "benchmark_overhead",
            preset="quick",
            params={"benchmark": vars(args)},
            devices=device_names(CPU),
            uri=f"sqlite:///{tmp / 'mlflow.db'}",
        ) as tracker:
            engine_run(warm, data, tracker, tmp / "warm", args.interval)
            bare_run(warm, data, tmp / "warm")
            runs = {"engine": [], "bare": []}
            for i in range(args.repeats):
                runs["engine"].append(engine_run(spec, data, tracker, tmp / f"engine{i}", args.interval))
                runs["bare"].append(bare_run(spec, data, tmp / f"bare{i}"))
                print(
                    f"run {i + 1}: "
                    + "   ".join(f"{k} train {v[-1][0]:6.2f} s, all-in {v[-1][1]:6.2f} s" for k, v in runs.items())
                )

    med = {k: [statistics.median(r[j] for r in v) * 1e3 / images for j in (0, 1)] for k, v in runs.items()}
    print("median ms per training image   training epochs   all-in")
    for k, (train_ms, wall_ms) in med.items():
        print(f"{k:30s} {train_ms:15.3f} {wall_ms:8.3f}")
    print(f"step_overhead: {(med['engine'][0] - med['bare'][0]) / med['bare'][0]:.1%}")
    print(f"telemetry_overhead: {(med['engine'][1] - med['bare'][1]) / med['bare'][1]:.1%}")


if __name__ == "__main__":
    main()
