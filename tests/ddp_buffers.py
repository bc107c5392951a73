"""BatchNorm buffers under dpstudy's DDP wrapper; launched by tests/test_ddp.py.

    torchrun --standalone --nproc-per-node=2 tests/ddp_buffers.py OUT

Each rank builds ResNet-20 (quarter width, 8x8) from seed 0, wraps it with `parallel.wrap("ddp")`
and takes two SGD steps on its own random batch. Rank 0 saves to OUT every rank's buffers after
the steps (``before``) and after `parallel.sync_buffers` (``after``), rank order, the
weights of every rank after the steps (``weights``), and whether DDP would broadcast buffers
before a forward (``syncs_each_forward``, its own `will_sync_module_buffers`).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from dpstudy.train import parallel
from dpstudy.train.models import build_model


def gathered(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, [t.detach().clone() for t in tensors])
    return out


def main(out: str) -> None:
    with parallel.distributed("cpu") as d:
        torch.manual_seed(0)
        model, _ = parallel.wrap(build_model("resnet20", 1, 10, width=0.25, size=8), "ddp", d.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + d.rank)  # a different batch on every rank
        for _ in range(2):
            x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        buffers = list(model.module.buffers())
        before = gathered(buffers)
        parallel.sync_buffers(model)
        after = gathered(buffers)
        weights = gathered(list(model.module.parameters()))
        if d.rank == 0:
            torch.save(
                {
                    "before": before,
                    "after": after,
                    "weights": weights,
                    "syncs_each_forward": model.will_sync_module_buffers(),
                },
                out,
            )


if __name__ == "__main__":
    main(sys.argv[1])
