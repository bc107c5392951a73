"""One DDP optimizer step on the first batch of real digits; launched by tests/test_ddp.py.

    torchrun --standalone --nproc-per-node=2 tests/ddp_one_step.py DIGITS_PT PER_RANK_BATCH OUT
    python tests/ddp_one_step.py DIGITS_PT PER_RANK_BATCH OUT        (a world of one)

Every process joins the group through `parallel.distributed("cpu")` (gloo; a group of one when not
launched by torchrun), builds LeNet-5 from seed 0, wraps it in DDP, draws its shard of epoch 0's
first global batch from a `ResidentLoader` (no augmentation, seed 0) and takes one SGD step
(lr 0.1, momentum 0.9, weight decay 5e-4) with `engine.train_step`. Rank 0 saves to OUT:
``initial`` and ``final`` (the unwrapped state_dicts before and after the step), ``world``, and
``batches``: every rank's first batch ``(images, labels)`` in rank order.

The world of one is wrapped in DDP too, not run as ``single``: train_ddp trains world size 1 as a
DDP group of one, so both runs go through the same wrapper and differ only in how the global
batch is split across processes and averaged by the all-reduce.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from dpstudy.data.loaders import ResidentLoader, channel_stats
from dpstudy.data.prepared import load_prepared
from dpstudy.train import engine, parallel
from dpstudy.train.models import build_model, input_spec

LR, MOMENTUM, WEIGHT_DECAY, SEED = 0.1, 0.9, 5e-4, 0


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def main(data_path: str, per_rank_batch: int, out: str) -> None:
    data = load_prepared(data_path)
    spec = input_spec("lenet", data.channels)
    mean, std = channel_stats(data.train_images, spec)
    with parallel.distributed("cpu") as d:
        torch.manual_seed(SEED)
        net = build_model("lenet", data.channels, data.num_classes)
        initial = clone_state(net)
        model, _ = parallel.wrap(net, "ddp", d.device)
        loader = ResidentLoader(
            data.train_images,
            data.train_labels,
            spec=spec,
            batch_size=per_rank_batch,
            mean=mean,
            std=std,
            augment=None,
            shuffle=True,
            seed=SEED,
            rank=d.rank,
            world=d.world,
            device=d.device,
        )
        loader.set_epoch(0)
        x, y = next(iter(loader))
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        model.train()
        engine.train_step(model, optimizer, nn.CrossEntropyLoss(), x, y)
        batches = [None] * d.world
        dist.all_gather_object(batches, (x, y))
        if d.is_main:
            torch.save(
                {
                    "world": d.world,
                    "initial": initial,
                    "final": clone_state(parallel.unwrap(model)),
                    "batches": batches,
                },
                out,
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
