"""The share of a window during which the GPU was executing work, from the profiler's device timeline.

A second figure beside NVML's utilization, independent of it: NVML says what share of its own
averaging period (1/6 s to 1 s, by product) had at least one kernel running, sampled from a
thread; here the PyTorch profiler (CUPTI) records every kernel, copy and memset the device ran
during a few training steps, and the busy share is the length of the union of those intervals over
the span from the first to the last of them. Gaps in that span are the device waiting for the host
(launch-bound steps) or for data.

The profiler adds host work per kernel launch, so an eager, launch-bound step is a little slower
while it is watched: the share it reports is a lower bound. A CUDA-graph step launches once and is
barely affected. The window is kept short; starting and stopping the profiler (``overhead_s``) is
host time callers take out of their timings.
"""

from __future__ import annotations

import math
import time

import torch


def _occupies_device(activity: str) -> bool:
    """Kineto's device records that are work (kernel, gpu_memcpy, gpu_memset), not spans drawn over
    it (gpu_user_annotation) or waits (cuda_sync)."""
    return "annotation" not in activity and "sync" not in activity


def busy_share(intervals: list[tuple[int, int]]) -> float:
    """Union length of ``[start, end)`` intervals over the span from the earliest start to the
    latest end, in [0, 1]; nan without a positive span."""
    spans = sorted((a, b) for a, b in intervals if b > a)
    if not spans:
        return math.nan
    busy, (cur_a, cur_b) = 0, spans[0]
    for a, b in spans[1:]:
        if a > cur_b:
            busy += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    busy += cur_b - cur_a
    whole = max(b for _, b in spans) - spans[0][0]
    return busy / whole


class BusyWindow:
    """``start()`` … ``stop() -> busy share in percent`` of a CUDA device over the work between.

    On the CPU there is no device timeline: ``stop()`` returns nan and ``reason`` says why."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reason = "" if device.type == "cuda" else "no CUDA device: the busy share is a GPU figure"
        self._profiler = None
        self.overhead_s = 0.0  # host seconds spent starting and stopping the profiler (not the work's)

    def start(self) -> BusyWindow:
        if not self.reason:
            torch.cuda.synchronize(self.device)
            t = time.perf_counter()
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self._profiler.start()
            self.overhead_s += time.perf_counter() - t
        return self

    def stop(self) -> float:
        if self._profiler is None:
            return math.nan
        torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        self._profiler.stop()
        events = self._profiler.profiler.kineto_results.events()
        self._profiler = None
        self.overhead_s += time.perf_counter() - t
        intervals = [
            (e.start_ns(), e.end_ns())
            for e in events
            if e.device_type() == torch.autograd.DeviceType.CUDA and _occupies_device(str(e.activity_type()).lower())
        ]
        if not intervals:
            self.reason = "the profiler recorded no device activity in the window"
            return math.nan
        return 100.0 * busy_share(intervals)
