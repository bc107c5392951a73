"""Resident loader vs the standard DataLoader at its best num_workers, side by side in one run.

Same CIFAR-shaped data (uint8 3×32×32, synthetic pixels: speed does not depend on content), same
augmentation (random crop with 4-pixel padding + horizontal flip + normalisation), same batch
size, batches delivered on the device (CUDA if visible, else CPU). Warm-up batches excluded.

    python benchmarks/loader.py [--images 50000] [--batch 256] [--batches 40] [--workers 0 1 2]

Ends with one line ``loader_speedup: N.Nx`` (resident images/s ÷ best standard images/s).
"""

from __future__ import annotations

import argparse

import torch

from dpstudy.data.loaders import Augment, InputSpec, channel_stats, make_loader
from dpstudy.devices import cpu_name
from dpstudy.measure.profiling import measure_throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=50_000, help="dataset size (CIFAR-10 train: 50000)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings per configuration")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    spec = InputSpec(3, 32)
    mean, std = channel_stats(images, spec)
    common = dict(
        spec=spec,
        mean=mean,
        std=std,
        batch_size=args.batch,
        device=device,
        augment=Augment(crop_padding=4, hflip=True),
        seed=0,
    )

    def best_of(kind: str, workers: int = 0) -> float:
        loader = make_loader(kind, images, labels, num_workers=workers, pin_memory=True, **common)
        return max(
            measure_throughput(loader, device, args.warmup, args.batches).images_per_s for _ in range(args.repeats)
        )

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name()
    print(
        f"device: {device} ({name}); torch {torch.__version__}; {torch.get_num_threads()} threads; "
        f"{args.images} images, batch {args.batch}, {args.batches} timed batches, best of {args.repeats}"
    )
    standard = {w: best_of("standard", w) for w in args.workers}
    for w, ips in standard.items():
        print(f"standard  num_workers={w}: {ips:12,.0f} images/s")
    resident = best_of("resident")
    print(f"resident               : {resident:12,.0f} images/s")
    best_w = max(standard, key=standard.get)
    print(f"best standard: num_workers={best_w}")
    print(f"loader_speedup: {resident / standard[best_w]:.1f}x")


if __name__ == "__main__":
    main()
