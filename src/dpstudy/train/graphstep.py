"""The training step captured as a CUDA graph (recipe ``step: graph``) and replayed every step.

On a GPU an eager step of a small network is bound by the host: Python and hundreds of kernel
launches per step, so the device idles between kernels however the data arrives (measured on an
H200: LeNet on device-resident data kept it at most a sixth busy). A CUDA graph records the step's
kernels once and replays them with one launch.

What is captured: with the resident loader, the whole step (gathering the batch from the resident
uint8 images with its crops and flips, normalising, forward, loss, backward, optimizer update);
with the standard DataLoader, everything after the batch is copied into the graph's input.
Between replays the host only copies the step's inputs (a ``(4, b)`` batch plan, or the images and
labels) into the graph's static tensors and writes the step's lr into the optimizer's lr tensor.

Rules that keep a replay equal to the eager step:
- one graph per input shape (an adaptive schedule's larger batch, an epoch's shorter last step):
  a shape seen for the first time trains `WARMUP_STEPS` real steps eagerly on a side stream (CUDA
  wants lazily created state, e.g. cuBLAS workspaces and the optimizer's buffers, to exist before
  capture), then the step is captured and replayed from then on;
- the optimizer is fused (one kernel per parameter group) with its lr a device tensor, so the
  schedule changes the lr without a recapture; eager warm-up steps use the same optimizer;
- outputs (loss, score, gradient norms) are the graph's static tensors, consumed by the engine
  before the next replay.

`torch.cuda.graph` rather than `torch.compile(mode="reduce-overhead")`: the same kernels as the
eager step (so losses can be compared with it), no compilation per batch shape, and nothing hidden
about what is in the graph. Where capture cannot be sound it is refused before any work
(`refusal`): on the CPU (there is no CUDA graph), and across processes or GPUs, where DDP's reducer
and dpstudy's all-reduce hook keep host-side state per backward (bucket readiness, all-reduce
counts, each rank's gradient norm) that a replay would skip, and nn.DataParallel replicates the
module in threads at every forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..names import STEP_NAMES

STEPS = STEP_NAMES
WARMUP_STEPS = 3  # eager steps per new input shape before it is captured


def refusal(step: str, key: str, device: torch.device | None, *, processes: int = 1, gpus: int = 1) -> str | None:
    """Why ``step`` cannot run here (one line naming ``key`` and the fix), or None when it can.

    ``processes``: processes sharing one step (DDP world); ``gpus``: GPUs one process computes on
    (nn.DataParallel)."""
    if step != "graph":
        return None
    if device is None or device.type != "cuda":
        return (
            f"{key}: graph needs a CUDA GPU (a CUDA graph replays GPU kernels) and this run is on the CPU; "
            f"set {key}: eager, or run where a GPU is visible"
        )
    if processes > 1:
        return (
            f"{key}: graph cannot capture a step shared by {processes} DDP processes (DDP's reducer and the "
            f"all-reduce hook keep host-side state per backward that a replay would skip); set {key}: eager, "
            f"or run one process"
        )
    if gpus > 1:
        return (
            f"{key}: graph cannot capture nn.DataParallel over {gpus} GPUs (it replicates the module in "
            f"threads at every forward); set {key}: eager, or make one GPU visible (CUDA_VISIBLE_DEVICES)"
        )
    return None


def spec_refusal(spec, key: str, device: torch.device) -> str | None:
    """`refusal` for one configuration (a `RunSpec`): its step, its processes, and the GPUs its
    DataParallel would span."""
    gpus = torch.cuda.device_count() if spec.mode == "dp" and device.type == "cuda" else 1
    return refusal(spec.recipe.step, key, device, processes=spec.world, gpus=gpus)


def graph_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> torch.optim.Optimizer:
    """``optimizer`` made capturable in place: fused, with each group's lr a device tensor (the
    value it had), so `set_lr` writes the new rate into the tensor the graph reads."""
    for group in optimizer.param_groups:
        group["fused"] = True
        group["foreach"] = False
        lr = group["lr"]
        group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        if "capturable" in group:
            group["capturable"] = True
    return optimizer


class CapturedStep:
    """Calls ``body(*inputs)`` as a CUDA graph per input shape (see the module doc).

    ``body`` takes the step's input tensors and returns a tuple of tensors (or Python numbers, which
    must not depend on the inputs' values); ``__call__`` returns the same, the tensors being the
    graph's static outputs, valid until the next call.
    """

    def __init__(self, body: Callable, device: torch.device, warmup_steps: int = WARMUP_STEPS):
        self.body, self.device, self.warmup_steps = body, device, warmup_steps
        self.graphs: dict[tuple, tuple] = {}  # input shapes -> (replay, static inputs, static outputs)
        self.eager_steps: dict[tuple, int] = {}  # input shapes -> warm-up steps run so far
        self.captures = self.replays = 0

    def __call__(self, *inputs: torch.Tensor):
        key = tuple(tuple(t.shape) for t in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            done = self.eager_steps.get(key, 0)
            if done < self.warmup_steps:
                self.eager_steps[key] = done + 1
                return self._side_stream(inputs)
            entry = self.graphs[key] = self.capture(inputs)
            self.captures += 1
        replay, static_in, static_out = entry
        for static, value in zip(static_in, inputs):
            static.copy_(value, non_blocking=True)
        replay()
        self.replays += 1
        return static_out

    def _side_stream(self, inputs):
        """One real step, eagerly, on a side stream (as CUDA's capture rules ask of warm-up work)."""
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.body(*inputs)
        main.wait_stream(side)
        return out

    def capture(self, inputs) -> tuple[Callable, list[torch.Tensor], tuple]:
        """Record the body on static copies of ``inputs``; returns (replay, static inputs, outputs).
        The capture itself computes nothing: the caller replays it for this step."""
        static_in = [t.clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            static_out = self.body(*static_in)
        return graph.replay, static_in, static_out


def stepper(step: Callable, loader, pair: Callable, device: torch.device, graph: bool):
    """(batches(), run) for one training loop: ``batches()`` iterates an epoch's step inputs and
    ``run(*inputs)`` trains on them, returning ``step``'s outputs; ``step(input, target)`` is the
    eager step and ``pair(images, labels) -> (input, target)`` the task's. Eager: the loader's
    (images, labels). Graph: a `CapturedStep`; with a loader that plans its batches (the resident
    loader's ``plans``/``gather``) the inputs are the plans, and gathering is inside the graph."""
    if graph and hasattr(loader, "plans"):
        return (lambda: ((plan,) for plan in loader.plans())), CapturedStep(
            lambda plan: step(*pair(*loader.gather(plan))), device
        )

    def body(x, y):
        return step(*pair(x, y))

    return (lambda: iter(loader)), (CapturedStep(body, device) if graph else body)
