"""Background sampling of GPU utilisation, memory and power while a stage runs.

`ResourceSampler` starts a daemon thread that records one `Sample` every `interval_s` seconds:
per visible NVIDIA GPU (through NVML) the utilisation, memory in use and power draw, or, where
no GPU can be seen through NVML, the system's CPU utilisation and this process's resident memory.
A stage wraps its work in the sampler and logs `summary()` (means, plus maxima for memory) with
its other metrics, so every run says how busy the hardware was.

NVML's utilization is the share of its own averaging period (1/6 s to 1 s, by product) during which
a kernel ran, so a sample speaks for the period before it. A sampler's window is from start() to
stop(), and a utilization sample counts only when its whole period lies inside the window (taken
at `NVML_PERIOD_S`, the longest): the work before the window cannot leak in, and a window shorter
than the period has no utilization at all (its mean is nan, reported as "window too short", never
as a number). Memory and power are readings of the moment and count from every sample.

Telemetry is an observer: nothing here may stop or crash the run it watches. A sample that fails
is dropped and counted in `errors`, and the sampler carries on. CPU and process readings come
from psutil.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import psutil

# NVML averages utilization over the past 1/6 s to 1 s depending on the board (nvml.h,
# nvmlDeviceGetUtilizationRates): a sample is inside a window only if the longest period fits.
NVML_PERIOD_S = 1.0

# The CPU-fallback notice is printed once per process: a study starts many samplers, and the
# reason (no GPU, no driver) is the same for all of them.
_fallback_announced = False
_announce_lock = threading.Lock()


@dataclass
class Sample:
    t: float  # time.time() at the sample
    values: dict[str, float]  # metric name -> value


def _parse_visible(visible: str | None) -> list[int | str] | None:
    """CUDA_VISIBLE_DEVICES as NVML indices (int) and UUIDs (str); None means every device.

    Like the CUDA runtime, the list ends at the first entry that is not a device ("-1", "",
    "MIG-..." or junk), so "" and "-1" hide every GPU.
    """
    if visible is None:
        return None
    entries: list[int | str] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if entry.startswith("GPU-"):
            entries.append(entry)
            continue
        try:
            index = int(entry)
        except ValueError:
            break
        if index < 0:
            break
        entries.append(index)
    return entries


def _open_devices(nvml, entries: list[int | str] | None) -> list:
    """NVML handles for the visible devices, in CUDA's (torch's) order."""
    count = nvml.nvmlDeviceGetCount()
    if entries is None:
        entries = list(range(count))
    handles = []
    for entry in entries:
        # As with CUDA, an entry naming no device hides it and everything after it.
        try:
            if isinstance(entry, str):
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
            elif entry < count:
                handles.append(nvml.nvmlDeviceGetHandleByIndex(entry))
            else:
                break
        except nvml.NVMLError:
            break
    return handles


def _decode(name) -> str:
    # Older pynvml releases return device names as bytes.
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _describe(exc: BaseException) -> str:
    """A one-line reason for the fallback notice."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _cpu_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds over all CPUs since boot: idle and I/O wait are not busy, and
    guest time is left out of the total (the kernel counts it inside user time already)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


class _CpuMeter:
    """The system's CPU utilisation % between successive calls (its own, unlike
    psutil.cpu_percent's one module-wide reference point, which concurrent samplers would share)."""

    def __init__(self):
        self._last = _cpu_ticks()

    def util_pct(self) -> float | None:
        now, last = _cpu_ticks(), self._last
        self._last = now
        busy, total = now[0] - last[0], now[1] - last[1]
        if total <= 0:  # no comparable delta yet (within one clock tick of the last call)
            return None
        return min(max(100.0 * busy / total, 0.0), 100.0)


def utilization_keys(summary: dict[str, float]) -> list[str]:
    """The utilisation means in a `ResourceSampler.summary()`: one per GPU (NVML, in device
    order), else the system CPU's where no GPU was sampled."""
    gpu = [k for k in summary if k.startswith("gpu") and k.endswith("_util_pct_mean")]
    if gpu:
        return sorted(gpu, key=lambda k: int(k[3:].split("_", 1)[0]))
    return [k for k in ("cpu_util_pct_mean",) if k in summary]


def utilization(summary: dict[str, float]) -> tuple[str, float]:
    """(source, percent) of a `ResourceSampler.summary()`: the mean over GPUs from NVML (nan when
    the window was too short for NVML on any of them), else the system CPU's utilization."""
    keys = utilization_keys(summary)
    if keys and keys[0].startswith("gpu"):
        values = [summary[k] for k in keys]
        return "gpu_util_pct", (math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values))
    return "cpu_util_pct", summary.get("cpu_util_pct_mean", math.nan)


TOO_SHORT = "window too short for NVML"  # how a nan GPU utilization is shown, never as a number


# Sample keys as MLflow's own system metrics name them (mlflow/system_metrics), so the run page's
# "System metrics" tab (every key under "system/") charts them: (MLflow name, factor to its unit).
_MIB_TO_MB = 2**20 / 1e6  # MLflow reports memory in megabytes (10^6 bytes)
_SYSTEM_METRICS = {
    "util_pct": ("utilization_percentage", 1.0),
    "mem_used_mib": ("memory_usage_megabytes", _MIB_TO_MB),
    "power_w": ("power_usage_watts", 1.0),
}
_HOST_METRICS = {
    "cpu_util_pct": ("cpu_utilization_percentage", 1.0),
    # this process's resident memory: MLflow has no such metric (its system_memory_usage_megabytes
    # is the whole machine's), so it gets a name of its own under the same prefix
    "proc_rss_mib": ("process_rss_megabytes", _MIB_TO_MB),
}


def system_metric(key: str) -> tuple[str, float]:
    """(MLflow system metric name, factor) for a `Sample` key: ``gpu0_util_pct`` ->
    ``system/gpu_0_utilization_percentage``, ``cpu_util_pct`` -> ``system/cpu_utilization_percentage``,
    memory in MB as MLflow logs it; a key it does not know is kept as ``system/<key>``."""
    if key in _HOST_METRICS:
        name, scale = _HOST_METRICS[key]
        return f"system/{name}", scale
    if key.startswith("gpu"):
        index, _, rest = key[3:].partition("_")
        if index.isdigit() and rest in _SYSTEM_METRICS:
            name, scale = _SYSTEM_METRICS[rest]
            return f"system/gpu_{index}_{name}", scale
    return f"system/{key}", 1.0


def rss_mib() -> float | None:
    """This process's resident memory in MiB; None where it cannot be read."""
    try:
        return psutil.Process().memory_info().rss / 2**20
    except psutil.Error:
        return None


def _announce_fallback(reason: str) -> None:
    global _fallback_announced
    with _announce_lock:
        if _fallback_announced:
            return
        _fallback_announced = True
    print(
        f"telemetry: no NVIDIA GPU visible through NVML ({reason}); "
        "sampling CPU utilization and process memory instead",
        file=sys.stderr,
    )


class _Gpus:
    """The visible NVIDIA GPUs through NVML: utilisation, memory in use and power of each."""

    def __init__(self, nvml, handles: list, names: list[str]):
        self.nvml, self.handles, self.names = nvml, handles, names

    @staticmethod
    def open(nvml, visible: str | None) -> tuple[_Gpus | None, str | None]:
        """(the GPUs, None), or (None, why they cannot be sampled). ``nvml`` None: pynvml."""
        entries = _parse_visible(visible)
        if entries == []:
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                return None, f"pynvml not importable: {_describe(exc)}"
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return None, f"nvmlInit failed: {_describe(exc)}"
        try:
            handles = _open_devices(nvml, entries)
            names = [_decode(nvml.nvmlDeviceGetName(h)) for h in handles]
        except Exception as exc:
            _Gpus(nvml, [], []).close()
            return None, f"listing devices failed: {_describe(exc)}"
        if not handles:
            _Gpus(nvml, [], []).close()
            return None, "device count is 0" if entries is None else f"no device matches {visible!r}"
        return _Gpus(nvml, handles, names), None

    def read(self) -> dict[str, float]:
        nvml, values = self.nvml, {}
        for i, handle in enumerate(self.handles):
            values[f"gpu{i}_util_pct"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            values[f"gpu{i}_mem_used_mib"] = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            # some boards and MIG slices do not report power; the rest is still worth having
            with contextlib.suppress(nvml.NVMLError):
                values[f"gpu{i}_power_w"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
        return values

    def close(self) -> bool:
        """Shut NVML down; False if that failed (it loses nothing, so it is counted, not raised)."""
        try:
            self.nvml.nvmlShutdown()
            return True
        except Exception:
            return False


def _read_cpu(meter: _CpuMeter) -> dict[str, float]:
    """The CPU fallback's sample: system CPU utilisation (from the second sample on) and RSS."""
    values = {}
    util = meter.util_pct()
    if util is not None:
        values["cpu_util_pct"] = util
    rss = rss_mib()
    if rss is not None:
        values["proc_rss_mib"] = rss
    return values


def summarize(samples: list[Sample], gpu_window_start: float | None, nvml_period_s: float) -> dict[str, float]:
    """Mean of each metric ("<metric>_mean"), plus "<metric>_max" for memory. With NVML
    (``gpu_window_start`` set), a utilization mean takes only samples whose NVML period lies inside
    the window that starts there (module doc), and is nan when none does."""
    columns: dict[str, list[float]] = {}
    for sample in samples:
        counts = gpu_window_start is None or sample.t - nvml_period_s >= gpu_window_start
        for key, value in sample.values.items():
            column = columns.setdefault(key, [])
            if counts or not key.endswith("_util_pct"):
                column.append(value)
    out: dict[str, float] = {}
    for key in sorted(columns):
        values = columns[key]
        out[f"{key}_mean"] = sum(values) / len(values) if values else math.nan
        if key.endswith("_mib"):  # peak memory is what decides whether a run fits
            out[f"{key}_max"] = max(values)
    return out


class ResourceSampler:
    """Samples GPU (or CPU) use every `interval_s` seconds in a daemon thread.

    `nvml` is a pynvml-like module (default: pynvml, imported at start()). `visible` is the
    CUDA_VISIBLE_DEVICES string to honour (default: the environment's at start()); GPUs are
    reported as gpu0, gpu1, ... in that order, which is torch's numbering.
    """

    def __init__(
        self,
        interval_s: float = 0.5,
        nvml=None,
        visible: str | None = None,
        clock=time.time,
        nvml_period_s: float = NVML_PERIOD_S,
    ):
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.mode = ""  # "nvml" or "cpu" once started
        self.device_names: list[str] = []
        self.errors = 0
        self._nvml, self._visible = nvml, visible
        self._gpus: _Gpus | None = None
        self._cpu: _CpuMeter | None = None
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._clock, self.nvml_period_s = clock, nvml_period_s
        self.window: tuple[float, float] | None = None  # (start, stop) times once stopped

    def start(self) -> ResourceSampler:
        if self._thread is not None:
            raise RuntimeError("ResourceSampler.start() called twice; use a new sampler")
        visible = self._visible if self._visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        self._gpus, reason = _Gpus.open(self._nvml, visible)
        if self._gpus is not None:
            self.mode, self.device_names = "nvml", self._gpus.names
        else:
            _announce_fallback(reason)
            self.mode, self._cpu = "cpu", _CpuMeter()
        self._t_start = self._clock()
        self._take_sample()
        self._thread = threading.Thread(target=self._run, name="dpstudy-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        if self._thread is not None and not self._stopped:
            self._stopped = True
            self._stop_event.set()
            self._thread.join()
            self._take_sample()  # the end of the window, so a short stage still gets two points
            self.window = (self._t_start, self._clock())
            if self._gpus is not None and not self._gpus.close():
                self.errors += 1
        return self.samples()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def mark(self) -> int:
        """Index of the next sample: pass it to summary(since=...) to summarise from here on."""
        with self._lock:
            return len(self._samples)

    def summary(self, since: int = 0) -> dict[str, float]:
        """`summarize` of samples[since:]: a GPU utilization mean is nan when the window was too
        short to measure it."""
        return summarize(self.samples()[since:], self._t_start if self.mode == "nvml" else None, self.nvml_period_s)

    def __enter__(self) -> ResourceSampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        # Event.wait returns as soon as stop() sets the event, so stop() never waits out an interval.
        while not self._stop_event.wait(self.interval_s):
            self._take_sample()

    def _take_sample(self) -> None:
        t = self._clock()
        try:
            values = self._gpus.read() if self._gpus is not None else _read_cpu(self._cpu)
        except Exception:
            # A driver hiccup must not take the run down: drop this tick and keep sampling.
            with self._lock:
                self.errors += 1
            return
        if values:
            with self._lock:
                self._samples.append(Sample(t, values))
