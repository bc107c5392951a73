"""Eager vs CUDA-graph training steps on device-resident data, side by side, batch by batch.

LeNet-5 on MNIST-shaped data (1×28×28, resized to 32) and ResNet-20 on CIFAR-shaped data
(3×32×32), uint8 images resident on the GPU (synthetic pixels: speed does not depend on content),
random crop + flip gathered on the device, SGD with momentum. At each batch size the eager and the
graph-captured step (`dpstudy.train.graphstep`; the gather is inside the graph) run one after the other
through `dpstudy.measure.profiling.run_probe`: warm-up (and the capture) excluded, then timed steps for at
least ``--seconds`` (NVML averages utilization over up to 1 s), then 8 steps watched by the profiler.

Per cell: images/s, NVML utilization over the timed steps, and the device busy share from the
profiler (kernels over the window), two independent measures of how busy the GPU was.

    python benchmarks/gpu_util.py [--batches 32 64 ... 4096] [--seconds 2] [--models lenet resnet20]

Ends with two lines:
    graph_speedup: N.Nx   graph images/s ÷ eager images/s at batch 256 (the lower over the models)
    graph_util: NN%       the lowest NVML utilization of a graph cell at batch >= 512
Goals on one H100/H200: graph_speedup >= 3x and graph_util >= 80%. Without a GPU it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys

SHAPES = {"lenet": (1, 28, 60_000), "resnet20": (3, 32, 50_000)}  # channels, size, images (MNIST, CIFAR-10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--seconds", type=float, default=2.0, help="least timed seconds per cell (NVML's window)")
    ap.add_argument("--steps", type=int, default=20, help="least timed steps per cell")
    ap.add_argument("--interval", type=float, default=0.1, help="NVML sampling interval, seconds")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_util: no CUDA GPU visible to PyTorch: nothing to measure (this benchmark compares eager and "
            "CUDA-graph steps on a GPU; run it where one is visible)"
        )
        return 0

    from dpstudy.data.loaders import Augment, InputSpec, ResidentLoader, channel_stats
    from dpstudy.measure.profiling import run_probe
    from dpstudy.measure.telemetry import utilization
    from dpstudy.train.models import build_model, input_spec

    device = torch.device("cuda", 0)
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
        f"timed >= {args.seconds:g} s and >= {args.steps} steps per cell; NVML every {args.interval:g} s"
    )
    cells = []
    for model_name in args.models:
        channels, size, n = SHAPES[model_name]
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        spec = input_spec(model_name, channels)
        mean, std = channel_stats(images, InputSpec(spec.channels, spec.size))
        for batch in args.batches:
            for step in ("eager", "graph"):
                torch.manual_seed(0)
                model = build_model(model_name, channels, 10).to(device)
                loader = ResidentLoader(
                    images,
                    labels,
                    spec=spec,
                    batch_size=batch,
                    mean=mean,
                    std=std,
                    augment=Augment(2 if channels == 1 else 4, channels == 3),
                    seed=0,
                    device=device,
                )
                result = run_probe(
                    model,
                    loader,
                    device,
                    batch_size=batch,
                    steps=args.steps,
                    warmup_steps=3,
                    lr=0.01,
                    momentum=0.9,
                    sample_interval_s=args.interval,
                    step=step,
                    min_seconds=args.seconds,
                )
                _, util = utilization(result.utilization)
                cells.append(
                    {
                        "model": model_name,
                        "batch": batch,
                        "step": step,
                        "images_per_s": result.images_per_s,
                        "util": util,
                        "busy": result.device_busy_pct,
                        "steps": len(result.compute_s),
                    }
                )
                c = cells[-1]
                print(
                    f"{model_name:9s} batch {batch:5d} {step:5s}: {c['images_per_s']:12,.0f} images/s  "
                    f"NVML {_pct(util)}  busy {_pct(c['busy'])}  ({c['steps']} steps)",
                    flush=True,
                )
                del model, loader
        torch.cuda.empty_cache()

    print()
    print(
        f"{'model':9s} {'batch':>5s}  {'eager images/s':>15s} {'graph images/s':>15s} {'speed-up':>8s}  "
        f"{'NVML eager':>10s} {'NVML graph':>10s}  {'busy eager':>10s} {'busy graph':>10s}"
    )
    by = {(c["model"], c["batch"], c["step"]): c for c in cells}
    for model_name in args.models:
        for batch in args.batches:
            e, g = by[(model_name, batch, "eager")], by[(model_name, batch, "graph")]
            print(
                f"{model_name:9s} {batch:5d}  {e['images_per_s']:15,.0f} {g['images_per_s']:15,.0f} "
                f"{g['images_per_s'] / e['images_per_s']:7.1f}x  {_pct(e['util']):>10s} {_pct(g['util']):>10s}  "
                f"{_pct(e['busy']):>10s} {_pct(g['busy']):>10s}"
            )
    speedups = {
        m: by[(m, 256, "graph")]["images_per_s"] / by[(m, 256, "eager")]["images_per_s"]
        for m in args.models
        if (m, 256, "eager") in by
    }
    big = [c["util"] for c in cells if c["step"] == "graph" and c["batch"] >= 512]
    print()
    print("per model at batch 256: " + ", ".join(f"{m} {s:.1f}x" for m, s in speedups.items()))
    print(f"graph_speedup: {min(speedups.values()):.1f}x" if speedups else "graph_speedup: n/a (no batch 256)")
    if not big:
        print("graph_util: n/a (no batch >= 512)")
    elif any(math.isnan(u) for u in big):
        print("graph_util: n/a (a window too short for NVML's averaging period: raise --seconds)")
    else:
        print(f"graph_util: {min(big):.0f}%")
    return 0


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
