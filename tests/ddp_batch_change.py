"""A per-rank batch that changes between epochs under real DDP; launched by tests/test_adaptive_ddp.py.

    torchrun --standalone --nproc-per-node=2 tests/ddp_batch_change.py OUT
    torchrun --standalone --nproc-per-node=2 tests/ddp_batch_change.py engine DIGITS_PT OUT

Loader mode (the first line): every process joins the gloo group through
`parallel.distributed("cpu")` and builds N uint8 images of shape (1, 8, 8) that carry their own
index (pixel (0, 0) holds index // 256, pixel (7, 7) index % 256, every other pixel 0; the label
is index % 7). With mean 0 and std 1/255 both loaders hand back the raw bytes as floats, so the
index of every sample a rank sees can be read off its image. For each case of `LOADER_CASES`
("standard" with 0 and 1 workers, "resident"; iterated to the end, or by exactly ``len()``
``next()`` calls as `engine.train` does) the script runs `GLOBAL_BATCHES` epochs the way `engine.train` does
(``set_batch(global // world)`` then ``set_epoch(e)`` before each epoch), and rank 0 saves to OUT
(JSON): per loader and epoch, per rank, the decoded indices in the order seen, the labels, the
size of each step's batch, ``len(loader)`` and the largest distance of a pixel from an integer.

Engine mode: `engine.train` on prepared digits, DDP over the launched ranks, with a step-growth
batch schedule (16 -> 32 -> 48, capped) and the gradient noise scale measured; rank 0 saves the
history rows and step series to OUT (torch.save).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dpstudy import config
from dpstudy.data import prepared
from dpstudy.data.loaders import InputSpec, make_loader
from dpstudy.train import engine, parallel

N = 299  # > 256 so both encoding pixels matter; tails: 3 (folded), 11 and 43 (kept)
SEED = 3
GLOBAL_BATCHES = (8, 8, 32, 64)
# name -> (loader, workers, consumed as engine.train does: exactly len() next() calls, the
# iterator left unexhausted, which a persistent worker must survive into the next epoch)
LOADER_CASES = {
    "standard0w": ("standard", 0, False),
    "standard1w": ("standard", 1, False),
    "standard1w-next": ("standard", 1, True),
    "resident": ("resident", 0, False),
    "resident-next": ("resident", 0, True),
}
LABEL_MOD = 7


def index_dataset(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(n)
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0] = (idx // 256).to(torch.uint8)
    images[:, 0, 7, 7] = (idx % 256).to(torch.uint8)
    return images, idx % LABEL_MOD


def decode(x: torch.Tensor) -> tuple[list[int], float]:
    """(indices, max |pixel - round(pixel)|) of a batch of normalised images."""
    raw = x.round()
    off = (x - raw).abs().max().item() if x.numel() else 0.0
    raw = raw.to(torch.int64)
    return (raw[:, 0, 0, 0] * 256 + raw[:, 0, 7, 7]).tolist(), off


def batches(loader, like_engine: bool):
    if not like_engine:
        yield from loader
        return
    it = iter(loader)
    for _ in range(len(loader)):
        yield next(it)


def run_loader(kind: str, workers: int, like_engine: bool, d: parallel.Dist) -> list[dict]:
    images, labels = index_dataset(N)
    loader = make_loader(
        kind,
        images,
        labels,
        spec=InputSpec(1, 8),
        batch_size=GLOBAL_BATCHES[0] // d.world,
        mean=[0.0],
        std=[1 / 255],
        augment=None,
        shuffle=True,
        seed=SEED,
        rank=d.rank,
        world=d.world,
        num_workers=workers,
        device=d.device,
    )
    epochs = []
    for epoch, global_batch in enumerate(GLOBAL_BATCHES):
        loader.set_batch(global_batch // d.world)
        loader.set_epoch(epoch)
        mine = {"len": len(loader), "indices": [], "labels": [], "batch_sizes": [], "off": 0.0}
        for x, y in batches(loader, like_engine):
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8), (x.dtype, x.shape)
            idx, off = decode(x)
            mine["indices"] += idx
            mine["labels"] += y.tolist()
            mine["batch_sizes"].append(len(idx))
            mine["off"] = max(mine["off"], off)
        ranks = [None] * d.world
        dist.all_gather_object(ranks, mine)
        epochs.append(
            {"epoch": epoch, "global_batch": global_batch, "per_rank_batch": global_batch // d.world, "ranks": ranks}
        )
    return epochs


def loaders_main(out: str) -> None:
    with parallel.distributed("cpu") as d:
        result = {
            "n": N,
            "seed": SEED,
            "world": d.world,
            "label_mod": LABEL_MOD,
            "loaders": {name: run_loader(*case, d) for name, case in LOADER_CASES.items()},
        }
        if d.is_main:
            Path(out).write_text(json.dumps(result))


def engine_main(data_path: str, out: str) -> None:
    recipe = config.RecipeConfig(
        epochs=3,
        optimizer="sgd",
        lr=0.01,
        ref_batch=16,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_epochs=0,
        decay="none",
        milestones=[],
        gamma=0.1,
        augment=config.AugmentConfig(0, False),
        step="eager",
    )
    growth = config.StepGrowthConfig(batch=16, lr_rule="linear", factor=2, at_epochs=[1, 2], max_batch=48)
    with parallel.distributed("cpu") as d:
        if d.world != 2:
            raise SystemExit(f"engine mode needs 2 processes, got {d.world}")
        spec = engine.RunSpec(
            sweep="t",
            model="lenet",
            width=1.0,
            size=32,
            dataset="digits",
            mode="ddp",
            world=2,
            loader="resident",
            num_workers=0,
            batch=8,
            lr_rule="linear",
            seed=0,
            recipe=recipe,
            schedule="step_growth",
            growth=growth,
            noise_ema=0.9,
        )
        data = engine.TrainData(prepared.load_prepared(data_path), prepared.file_sha256(data_path))
        ctx = engine.Context(d.device, None, d.rank)
        result = engine.train(spec, data, ctx, Path(out).with_suffix(".ckpt.pt"))
        if d.is_main:
            torch.save(
                {
                    "world": d.world,
                    "outcome": result.outcome,
                    "history": result.history,
                    "step_series": result.step_series,
                    "n_train": len(data.data.train_labels),
                },
                out,
            )


if __name__ == "__main__":
    if sys.argv[1] == "engine":
        engine_main(sys.argv[2], sys.argv[3])
    else:
        loaders_main(sys.argv[1])
