"""Does a CUDA-graph step train what the eager step trains? Losses step by step, on a GPU.

Trains each configuration three times through the real engine (`dpstudy.train.engine.train`): eager,
eager again (the run-to-run floor: cuDNN and atomics are not bitwise repeatable on a GPU), and
with ``step: graph``. LeNet-5 at a fixed batch, and ResNet-20 whose batch doubles after the first
epoch (a new graph is captured for the new batch size). Prints the largest difference of the
per-step training loss, graph vs eager beside eager vs eager, and each run's final test accuracy.

    python benchmarks/graph_equality.py --data data/prepared/mnist.pt [--epochs 2] [--batch 128]

Ends with ``graph_equality: ...`` per model. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/prepared/mnist.pt", help="a prepared dataset (dpstudy download)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("graph_equality: no CUDA GPU visible to PyTorch: nothing to compare (a CUDA graph needs a GPU)")
        return 0

    from dpstudy.config import AugmentConfig, RecipeConfig, StepGrowthConfig
    from dpstudy.data.prepared import file_sha256, load_prepared
    from dpstudy.train.engine import Context, RunSpec, TrainData, train

    data = TrainData(load_prepared(Path(args.data)), file_sha256(Path(args.data)))
    recipe = RecipeConfig(
        epochs=args.epochs,
        optimizer="sgd",
        lr=0.05,
        ref_batch=args.batch,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_epochs=0,
        decay="cosine",
        milestones=[],
        gamma=0.1,
        augment=AugmentConfig(crop_padding=2, hflip=False),
        step="eager",
    )
    growth = StepGrowthConfig(batch=args.batch, lr_rule="linear", factor=2, at_epochs=[1], max_batch=2 * args.batch)
    dataset = Path(args.data).stem
    specs = {
        "lenet": RunSpec(
            "equality", "lenet", 1.0, 32, dataset, "single", 1, "resident", 0, args.batch, "linear", 0, recipe
        ),
        "resnet20": RunSpec(
            "equality",
            "resnet20",
            1.0,
            32,
            dataset,
            "single",
            1,
            "resident",
            0,
            args.batch,
            "linear",
            0,
            recipe,
            schedule="step_growth",
            growth=growth,
        ),
    }
    ctx = Context(torch.device("cuda", 0))
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; data {args.data} "
        f"({len(data.data.train_labels)} training images); {args.epochs} epochs, batch {args.batch}"
    )
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            graph = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, step="graph"))
            runs = {
                label: train(s, data, ctx, Path(tmp) / f"{name}-{label}.pt")
                for label, s in (("eager", spec), ("eager again", spec), ("graph", graph))
            }
            eager, again, captured = (runs[k].step_loss for k in ("eager", "eager again", "graph"))
            floor = max(abs(a - b) for a, b in zip(eager, again))
            gap = max(abs(a - b) for a, b in zip(eager, captured))
            first = max(abs(a - b) for a, b in zip(eager[:20], captured[:20]))
            accuracy = {k: r.final["test_accuracy"] for k, r in runs.items()}
            batches = sorted({h["global_batch"] for h in runs["graph"].history})
            print(
                f"{name}: {len(eager)} steps, batches {batches}; max |loss difference| graph vs eager {gap:.2e} "
                f"(first 20 steps {first:.2e}), eager vs eager {floor:.2e}; final test accuracy "
                + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
            )
            lines.append(
                f"{name} {gap:.1e} (eager vs eager {floor:.1e}, first 20 steps {first:.1e}), accuracy "
                f"graph {accuracy['graph']:.4f} vs eager {accuracy['eager']:.4f}"
            )
    print("graph_equality: " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
