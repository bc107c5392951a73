"""DDP on the CPU: ResNet-20, 2 ranks × 1 thread under DDP vs 1 process × 2 threads.

Training throughput (images/s) of ResNet-20 on CIFAR-shaped data (uint8 3×32×32, synthetic
pixels: speed does not depend on content), resident loader with random crop (padding 4) +
horizontal flip, SGD with momentum, same initial weights on both sides:

- single: one plain process, ``torch.set_num_threads(2)``, global batch B, the model unwrapped;
- ddp: ``torchrun --standalone --nproc-per-node=2`` of this file, ``OMP_NUM_THREADS=1`` and
  ``set_num_threads(1)`` per rank, per-rank batch B/2 sharded by the loader's rank/world rule,
  `parallel.distributed("cpu")` (gloo) and `parallel.wrap(model, "ddp")`.

Same global batch and same number of global steps on both sides; warm-up steps excluded; the
clock runs from a barrier before the first timed step to a barrier after the last (rank 0 writes
its figure to a JSON file this script reads). Each side is a fresh subprocess launched by this
script, sides interleaved (single, ddp, single, ddp, ...), medians reported.

    python benchmarks/ddp_cpu.py [--batch 128] [--steps 30] [--warmup 5] [--repeats 3]

Ends with one line ``ddp_cpu_scaling: N.NN`` (ddp images/s ÷ single images/s). Goal ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dpstudy.data.loaders import Augment, InputSpec, ResidentLoader, channel_stats
from dpstudy.devices import cpu_name
from dpstudy.measure.profiling import endless
from dpstudy.train import parallel
from dpstudy.train.models import build_model


def worker(args) -> None:
    """One side's timed training: world 1 (plain process) or 2 (under torchrun)."""
    torch.set_num_threads(args.threads)
    with parallel.distributed("cpu") as d:
        gen = torch.Generator().manual_seed(0)  # every rank makes the same data
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (args.images,), generator=gen)
        spec = InputSpec(3, 32)
        mean, std = channel_stats(images, spec)
        loader = ResidentLoader(
            images,
            labels,
            spec=spec,
            batch_size=args.batch // d.world,
            mean=mean,
            std=std,
            augment=Augment(crop_padding=4, hflip=True),
            seed=0,
            rank=d.rank,
            world=d.world,
            device=d.device,
        )
        torch.manual_seed(0)
        model, _ = parallel.wrap(build_model("resnet20", 3, 10), "ddp" if d.world > 1 else "single", d.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        batches = endless(loader)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                dist.barrier()
                t0 = time.perf_counter()
            x, y = next(batches)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        dist.barrier()
        seconds = time.perf_counter() - t0
        if d.is_main:
            Path(args.result).write_text(
                json.dumps(
                    {
                        "world": d.world,
                        "threads": torch.get_num_threads(),
                        "seconds": seconds,
                        "images_per_s": args.steps * args.batch / seconds,
                        "final_loss": loss.item(),
                    }
                )
            )


def launch(args, world: int, result: Path) -> dict:
    """Run one side in a fresh process (torchrun for world > 1) and return rank 0's figures."""
    threads = args.threads // world
    worker_args = [
        __file__,
        "--worker",
        "--result",
        str(result),
        "--threads",
        str(threads),
        *(f"--{k}={getattr(args, k)}" for k in ("batch", "steps", "warmup", "images")),
    ]
    if world == 1:
        cmd = [sys.executable, *worker_args]
    else:  # torchrun, through its module so the venv's own copy runs
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", *worker_args]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=128, help="global batch (each DDP rank takes half)")
    ap.add_argument("--steps", type=int, default=30, help="timed global steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed global steps before the clock starts")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    ap.add_argument("--images", type=int, default=5120, help="synthetic training images (epochs wrap)")
    ap.add_argument("--threads", type=int, default=2, help="cores to share: single uses all, each rank 1/2")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % 2 or args.threads % 2:
        ap.error("--batch and --threads must be even (two ranks share them)")

    print(
        f"device: cpu ({cpu_name()}); torch {torch.__version__}; ResNet-20, 3×32×32, global batch "
        f"{args.batch}, {args.steps} timed steps after {args.warmup} warm-up, {args.repeats} runs per side "
        f"interleaved; single = 1 × {args.threads} threads, ddp = 2 ranks × {args.threads // 2} threads (gloo)",
        flush=True,
    )
    runs = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory(prefix="dpstudy-ddp-cpu-") as tmp:
        for i in range(args.repeats):
            for side, world in (("single", 1), ("ddp", 2)):
                runs[side].append(launch(args, world, Path(tmp) / f"{side}{i}.json")["images_per_s"])
            print(
                f"run {i + 1}: single {runs['single'][-1]:7.1f} images/s   ddp {runs['ddp'][-1]:7.1f} images/s",
                flush=True,
            )
    med = {side: statistics.median(v) for side, v in runs.items()}
    print(
        f"median: single {med['single']:.1f} images/s, ddp {med['ddp']:.1f} images/s "
        f"(best: {max(runs['single']):.1f}, {max(runs['ddp']):.1f})"
    )
    print(f"ddp_cpu_scaling: {med['ddp'] / med['single']:.2f}")


if __name__ == "__main__":
    main()
