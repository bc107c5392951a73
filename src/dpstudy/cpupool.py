"""Train several configurations of a grid at once on the CPU: one single-thread process per core.

A CPU-only run of a small model spends most of each step in Python and in kernels too small to
split across threads, so one process using two threads leaves the second core mostly idle. Here
``processes`` workers each train one configuration at a time with one thread (the same
`engine.train`, checkpoints included); the parent logs each finished configuration to MLflow and
prints its line as it completes, and returns the results in grid order.

Only for CPU devices and never for timing-sensitive GPU work (configurations sharing a GPU would
skew each other's utilization). Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux): a
killed stage leaves no orphan training on, only its checkpoints, written atomically.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from .engine import Context, Result, RunSpec, TrainData, train

_data: dict[str, TrainData] = {}  # per worker: the datasets, sent once at start-up


def _start_worker(data: dict[str, TrainData]) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _data.update(data)


def _train(spec: RunSpec, checkpoint: Path, ctx: Context) -> Result:
    return train(spec, _data[spec.dataset], ctx, checkpoint)


class Pool:
    """``processes`` single-thread workers, each holding ``data``, for one grid or several in a
    row (train_dp's studies share one: starting workers costs seconds of imports each time)."""

    def __init__(self, processes: int, data: dict[str, TrainData]):
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(data,))

    def train_all(self, specs: list[RunSpec], checkpoints: Path, ctx: Context, on_done) -> list[Result]:
        """Train ``specs``; ``on_done(result)`` runs in this process as each one finishes; ``ctx``:
        how each trains (the CPU, timing, sampling), as one process would. Returns the results in
        the order of ``specs``. On an error, SIGTERM or Ctrl-C the workers are stopped at once."""
        results: list[Result | None] = [None] * len(specs)
        try:
            futures = {self._pool.submit(_train, spec, checkpoints / f"{spec.name}.pt", ctx): i
                       for i, spec in enumerate(specs)}
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                on_done(result)
        except BaseException:
            self.terminate()
            raise
        return results

    def terminate(self) -> None:
        workers = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._pool.shutdown()
        else:
            self.terminate()


def train_all(specs: list[RunSpec], data: dict[str, TrainData], checkpoints: Path, processes: int,
              ctx: Context, on_done) -> list[Result]:
    """`Pool.train_all` on a pool of its own."""
    with Pool(processes, data) as pool:
        return pool.train_all(specs, checkpoints, ctx, on_done)
