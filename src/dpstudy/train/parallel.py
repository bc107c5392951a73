"""Distributed setup and teardown, and how a model is wrapped for each parallel mode.

`distributed()` is the one place a process group is created and destroyed. Under ``torchrun`` it
reads RANK / WORLD_SIZE / LOCAL_RANK from the environment; as a plain process it forms a group of
one, so the same code (DDP included) runs either way. Backend: ``nccl`` with one GPU per process
(GPU = LOCAL_RANK) when the device resolves to CUDA, else ``gloo`` on the CPU.

A configuration may use fewer processes than were launched (the world-size sweep of train_ddp):
`Dist.group(w)` is the group of ranks 0..w-1, created up front by every rank as PyTorch requires;
ranks outside it sit the configuration out and meet the others at `Dist.barrier()`. On the CPU,
configurations of one process are instead shared out over the processes on rank 0's machine
(`Dist.solo_ranks`, each with a group of its own), which train them at the same time: they write
their checkpoints where rank 0 reads them, and no core waits idle at a barrier.

When torchrun stops a job because one worker died, it sends SIGTERM to the others; that signal is
turned into `Terminated` (a SystemExit), so ``finally`` blocks run and open MLflow runs are marked
FAILED instead of being left RUNNING. When `dpstudy launch` is interrupted it has torchrun send SIGINT
instead: the command line's `Interrupted`, runs KILLED. Under a launch (DPSTUDY_LAUNCHED) a worker
then ends quietly with 128 + the signal, as the launch prints the one ``interrupted (...)`` line,
and a SIGTERM waits a moment for that SIGINT: a scheduler such as Slurm signals every process of
the job at once, the launch included, and the job was then stopped, not failed.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..devices import resolve_device
from ..errors import UserError

MODES = ("single", "dp", "ddp")


class Terminated(SystemExit):
    """SIGTERM (torchrun stopping the job, or a scheduler) as an exception."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


# Under `dpstudy launch`, how long a SIGTERM waits for the launch's SIGINT (see the module doc).
# 1 s was too short on a loaded 2-core CI machine: the launch had not yet sent its SIGINT when
# the worker gave up, and an interrupted job's runs ended FAILED. A worker that outlives a peer
# pays this wait once before torchrun restarts or stops the job (torchrun itself waits 30 s).
LAUNCH_GRACE_S = 5.0


def _raise_terminated(signum, frame):
    if isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
        return  # already stopping (interrupted, or an earlier SIGTERM): let that cleanup finish
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one exception is enough; let cleanup finish
    if _launched():
        time.sleep(LAUNCH_GRACE_S)  # the launch's SIGINT, if it comes, interrupts this sleep
    raise Terminated()


def _launched() -> bool:
    from ..launch import LAUNCHED

    return os.environ.get(LAUNCHED) == "1" and "TORCHELASTIC_RUN_ID" in os.environ


def _end_quietly(signum: int) -> SystemExit:
    """The exit of a worker whose launch was interrupted: the launch says so, once for all."""
    for s in (signal.SIGTERM, signal.SIGINT):  # nothing may interrupt the exit now
        signal.signal(s, signal.SIG_IGN)
    sys.stdout.flush()
    return SystemExit(128 + signum)


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    _groups: dict[int, object] = field(default_factory=dict, repr=False)
    # rank -> its group of one, for the ranks that train one-process configurations side by side
    _solo: dict[int, object] = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def make_groups(self, sizes: list[int]) -> None:
        """Create the group of ranks 0..w-1 for each size, and for size 1 on the CPU a group of
        one for each rank on rank 0's machine (every rank must call this alike)."""
        for w in sorted(set(sizes)):
            if w < self.world and w not in self._groups:
                self._groups[w] = dist.new_group(ranks=list(range(w)))
        if 1 in sizes and self.world > 1 and self.device.type == "cpu" and not self._solo:
            machines = self.all_gather_object(os.environ.get("GROUP_RANK", "0"))  # torchrun's node ranks
            for r in (r for r in range(self.world) if machines[r] == machines[0]):
                self._solo[r] = self._groups[1] if r == 0 else dist.new_group(ranks=[r])

    @property
    def solo_ranks(self) -> list[int]:
        """The ranks that train one-process configurations side by side (empty: rank 0 alone)."""
        return sorted(self._solo) if len(self._solo) > 1 else []

    def solo_group(self) -> object:
        """This rank's group of one (see `solo_ranks`)."""
        return self._solo[self.rank]

    def group(self, w: int):
        """The process group of ranks 0..w-1 (None = the whole world)."""
        if w == self.world:
            return None
        return self._groups[w]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), rank order, on every rank."""
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


@contextlib.contextmanager
def distributed(device_choice: str, timeout_s: float = 1800) -> Iterator[Dist]:
    """Join (or form) the process group for this process; always destroy it on the way out."""
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_choice)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {local_rank} on this node has no GPU of its own "
                f"({torch.cuda.device_count()} visible): start one process per GPU "
                "(train_ddp.nproc_per_node: gpu) or set train_ddp.device: cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    else:  # a plain process: a group of one, so DDP code paths work unchanged
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    # Under torchrun a worker's SIGTERM means a peer died (or the job is stopping): the runs end
    # FAILED. A plain process keeps the command line's handler: SIGTERM ends its runs KILLED.
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if torchrun else signal.getsignal(signal.SIGTERM)
    quiet: SystemExit | None = None
    try:
        yield Dist(rank, world, local_rank, device, backend)
    except KeyboardInterrupt as exc:  # its runs have ended KILLED on the way here
        if not _launched():
            raise
        quiet = _end_quietly(getattr(exc, "signum", signal.SIGINT))
    finally:
        if quiet is None:
            signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()
    if quiet is not None:
        raise quiet


# --------------------------------------------------------------------------------------------
# Wrapping a model per mode


def wrap(model: nn.Module, mode: str, device: torch.device, group=None) -> tuple[nn.Module, list[str]]:
    """The model as the mode trains it, and the names of the devices it computes on.

    single: the model on ``device``. dp: ``nn.DataParallel`` over every visible GPU (with fewer
    than two GPUs it runs on one device, as PyTorch's DataParallel does; on the CPU, the module
    itself). ddp: one replica per process in ``group``, gradients averaged by all-reduce.
    """
    model = model.to(device)
    if mode == "single":
        return model, [str(device)]
    if mode == "dp":
        if device.type == "cuda":
            ids = list(range(torch.cuda.device_count()))
            return nn.DataParallel(model, device_ids=ids), [f"cuda:{i}" for i in ids]
        # No GPU to replicate onto: PyTorch's DataParallel then just calls the module, so call it
        # directly (nn.DataParallel(model) would grab any GPU the machine has, even on a CPU run).
        return model, ["cpu"]
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, process_group=group, **_NO_BUFFER_SYNC), [str(device)]
    raise ValueError(f"unknown mode {mode!r} (allowed: {', '.join(MODES)})")


# DDP's default broadcasts rank 0's buffers (BatchNorm running statistics) before every forward:
# one more collective per step, ~2.7 ms of a 34 ms ResNet-20 step over gloo here. Training reads
# batch statistics, not those buffers, so they are only needed when evaluating: `sync_buffers`
# gives every rank rank 0's once per epoch instead. (torch 2.14 renamed the switch; 2.11 has the old.)
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def sync_buffers(model: nn.Module, group=None) -> None:
    """Rank 0's buffers on every rank of ``group`` (for a DDP model; one broadcast per dtype)."""
    if not isinstance(model, DistributedDataParallel) or dist.get_world_size(group) == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buf in model.module.buffers():
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        for b, value in zip(bufs, flat.split([b.numel() for b in bufs])):
            b.copy_(value.view_as(b))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.DataParallel, DistributedDataParallel)) else model


class GradSync:
    """DDP's gradient averaging as a communication hook, plus what can be seen on the way.

    The hook performs the same averaging all-reduce DDP does by default, one per gradient bucket,
    and records:
    - ``calls``: the number of bucket all-reduces launched (on every backend);
    - on ``gloo``, the wall time during which an all-reduce was in flight: `take()` returns the
      length of the union of those intervals since its last call. With ``nccl`` completion
      happens on a CUDA stream, not on a host thread, so the share is not measured there
      (``measurable`` is False);
    - with ``local_norms``, the squared norm of this rank's own gradient before averaging (the
      small-batch half of the gradient noise scale, `batching`), summed over buckets per step:
      `take_local_sq()` after each backward.
    """

    def __init__(self, model: DistributedDataParallel, group=None, local_norms: bool = False):
        self.group = group
        self.world = dist.get_world_size(group)
        self.measurable = dist.get_backend(group) == "gloo"
        self.local_norms = local_norms
        self.calls = 0
        self._local_sq = None
        self._intervals: list[tuple[float, float]] = []
        model.register_comm_hook(self, GradSync._hook)

    @staticmethod
    def _hook(state, bucket):  # no annotations: DDP compares them as objects, not strings
        tensor = bucket.buffer()
        if state.local_norms:
            sq = tensor.detach().float().pow(2).sum()
            state._local_sq = sq if state._local_sq is None else state._local_sq + sq
        tensor.div_(state.world)
        state.calls += 1
        start = time.perf_counter()
        fut = dist.all_reduce(tensor, group=state.group, async_op=True).get_future()
        if not state.measurable:
            return fut.then(lambda f: f.value()[0])

        def done(f):
            state._intervals.append((start, time.perf_counter()))
            return f.value()[0]

        return fut.then(done)

    def take_local_sq(self):
        """This rank's squared local gradient norm of the last backward (a device tensor)."""
        sq, self._local_sq = self._local_sq, None
        return sq

    def take(self) -> float:
        spans, self._intervals = sorted(self._intervals), []
        total, end = 0.0, float("-inf")
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total
