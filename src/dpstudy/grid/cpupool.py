"""Train several configurations of a grid at once on the CPU: one single-thread process per core.

A CPU-only run of a small model spends most of each step in Python and in kernels too small to
split across threads, so one process using two threads leaves the second core mostly idle. Here
``processes`` workers each train one configuration at a time with one thread (the same
`engine.train`, checkpoints included); the parent logs each finished configuration to MLflow and
prints its line as it completes, and returns the results in grid order.

Only for CPU devices and never for timing-sensitive GPU work (configurations sharing a GPU would
skew each other's utilization). Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux): a
killed stage leaves no orphan training on, only its checkpoints, written atomically.

Ctrl-C reaches the whole process group, the workers too: they ignore SIGINT, and the parent, whose
`Interrupted` stops them, prints the one line. A worker spends its first seconds importing torch
before it can say so, so it is started with SIGINT blocked (`_sigint_blocked`, inherited through
the spawn): a Ctrl-C then waits in the worker until it ignores it, instead of a KeyboardInterrupt
traceback from the middle of an import, once per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..train.engine import Context, Result, RunSpec, TrainData, train

_data: dict[str, TrainData] = {}  # per worker: the datasets, sent once at start-up
_STOP_WAIT_S = 5.0  # how long stopped workers get to exit before SIGKILL


def _start_worker(data: dict[str, TrainData]) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    if hasattr(signal, "pthread_sigmask"):  # blocked since the spawn: a Ctrl-C held until now is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _data.update(data)


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread meanwhile: the processes it starts inherit the mask (the
    signal waits in them until `_start_worker`); here a Ctrl-C is delivered as soon as the block
    ends (starting the workers takes milliseconds: the spawn returns before they import)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _train(spec: RunSpec, checkpoint: Path, ctx: Context) -> Result:
    return train(spec, _data[spec.dataset], ctx, checkpoint)


class Pool:
    """``processes`` single-thread workers, each holding ``data``, for one grid or several in a
    row (train_dp's studies share one: starting workers costs seconds of imports each time)."""

    def __init__(self, processes: int, data: dict[str, TrainData]):
        self._pool = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(data,)
        )

    def train_all(self, specs: list[RunSpec], checkpoints: Path, ctx: Context, on_done) -> list[Result]:
        """Train ``specs``; ``on_done(result)`` runs in this process as each one finishes; ``ctx``:
        how each trains (the CPU, timing, sampling), as one process would. Returns the results in
        the order of ``specs``. On an error, SIGTERM or Ctrl-C the workers are stopped at once."""
        results: list[Result | None] = [None] * len(specs)
        try:
            with _sigint_blocked():  # submitting starts the workers (the first grid of a pool)
                futures = {
                    self._pool.submit(_train, spec, checkpoints / f"{spec.name}.pt", ctx): i
                    for i, spec in enumerate(specs)
                }
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                on_done(result)
        except BaseException:
            self.terminate()
            raise
        return results

    def terminate(self) -> None:
        """Stop the workers now (SIGTERM) and wait until they are gone (SIGKILL after a few
        seconds): the stage goes on, or exits, with none of them left."""
        workers = list((getattr(self._pool, "_processes", None) or {}).values())
        gone = {process.sentinel: process for process in workers}  # readable once it has exited
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        deadline = time.monotonic() + _STOP_WAIT_S
        while gone and (left := deadline - time.monotonic()) > 0:
            for sentinel in multiprocessing.connection.wait(list(gone), timeout=left):
                del gone[sentinel]
        for process in gone.values():
            process.kill()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._pool.shutdown()
        else:
            self.terminate()


def train_all(
    specs: list[RunSpec], data: dict[str, TrainData], checkpoints: Path, processes: int, ctx: Context, on_done
) -> list[Result]:
    """`Pool.train_all` on a pool of its own."""
    with Pool(processes, data) as pool:
        return pool.train_all(specs, checkpoints, ctx, on_done)
