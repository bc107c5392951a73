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
is dropped and counted in `errors`, and the sampler carries on.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass

# Linux sources for the CPU fallback; module constants so a test can point them elsewhere.
PROC_STAT = "/proc/stat"
PROC_SELF_STATM = "/proc/self/statm"

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


def _proc_stat_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, or None where /proc/stat is unreadable."""
    try:
        with open(PROC_STAT) as f:
            fields = f.readline().split()
        if fields[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal; guest time is already inside user.
        ticks = [int(x) for x in fields[1:9]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    except (OSError, ValueError, IndexError):
        return None
    return sum(ticks) - idle, sum(ticks)


def _process_ticks() -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds), scaled so the ratio is a share of the machine."""
    t = os.times()
    return (t.user + t.system) / (os.cpu_count() or 1), time.monotonic()


class _CpuMeter:
    """CPU utilisation % between successive calls, from whichever counter is readable."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[str, float, float]:
        ticks = _proc_stat_ticks()
        return ("system", *ticks) if ticks is not None else ("process", *_process_ticks())

    def util_pct(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        busy, total = now[1] - last[1], now[2] - last[2]
        # No comparable delta yet (first call within one clock tick, or the source changed).
        if now[0] != last[0] or total <= 0:
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
    """This process's resident memory in MiB (its peak where only getrusage is available)."""
    try:
        with open(PROC_SELF_STATM) as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB elsewhere.
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10


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


class ResourceSampler:
    """Samples GPU (or CPU) use every `interval_s` seconds in a daemon thread.

    `nvml` is a pynvml-like module (default: pynvml, imported at start()). `visible` is the
    CUDA_VISIBLE_DEVICES string to honour (default: the environment's at start()); GPUs are
    reported as gpu0, gpu1, ... in that order, which is torch's numbering.
    """

    def __init__(self, interval_s: float = 0.5, nvml=None, visible: str | None = None, clock=time.time,
                 nvml_period_s: float = NVML_PERIOD_S):
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.mode = ""  # "nvml" or "cpu" once started
        self.device_names: list[str] = []
        self.errors = 0
        self._nvml = nvml
        self._visible = visible
        self._nvml_open = False
        self._handles: list = []
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
        visible = self._visible
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        reason = self._open_nvml(visible)
        if reason is not None:
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
            self._close_nvml()
        return self.samples()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def mark(self) -> int:
        """Index of the next sample: pass it to summary(since=...) to summarise from here on."""
        with self._lock:
            return len(self._samples)

    def summary(self, since: int = 0) -> dict[str, float]:
        """Mean of each metric over samples[since:] ("<metric>_mean"), plus "<metric>_max" for memory.

        A GPU utilization mean takes only samples whose NVML period lies inside the window (module
        doc); it is nan when none does: the window was too short to measure utilization."""
        columns: dict[str, list[float]] = {}
        for sample in self.samples()[since:]:
            counts = self.mode != "nvml" or sample.t - self.nvml_period_s >= self._t_start
            for key, value in sample.values.items():
                if key.endswith("_util_pct") and self.mode == "nvml" and not counts:
                    columns.setdefault(key, [])
                    continue
                columns.setdefault(key, []).append(value)
        out: dict[str, float] = {}
        for key in sorted(columns):
            values = columns[key]
            out[f"{key}_mean"] = sum(values) / len(values) if values else math.nan
            if key.endswith("_mib"):  # peak memory is what decides whether a run fits
                out[f"{key}_max"] = max(values)
        return out

    def __enter__(self) -> ResourceSampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _open_nvml(self, visible: str | None) -> str | None:
        """Open the visible GPUs through NVML; return why that is impossible, or None on success."""
        entries = _parse_visible(visible)
        if entries == []:
            return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                return f"pynvml not importable: {_describe(exc)}"
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return f"nvmlInit failed: {_describe(exc)}"
        self._nvml, self._nvml_open = nvml, True
        try:
            handles = _open_devices(nvml, entries)
            names = [_decode(nvml.nvmlDeviceGetName(h)) for h in handles]
        except Exception as exc:
            self._close_nvml()
            return f"listing devices failed: {_describe(exc)}"
        if not handles:
            self._close_nvml()
            return "device count is 0" if entries is None else f"no device matches {visible!r}"
        self.mode, self._handles, self.device_names = "nvml", handles, names
        return None

    def _close_nvml(self) -> None:
        if not self._nvml_open:
            return
        self._nvml_open = False
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            self.errors += 1  # a failed shutdown loses nothing; count it, do not raise it

    def _run(self) -> None:
        # Event.wait returns as soon as stop() sets the event, so stop() never waits out an interval.
        while not self._stop_event.wait(self.interval_s):
            self._take_sample()

    def _take_sample(self) -> None:
        t = self._clock()
        try:
            values = self._read_gpus() if self.mode == "nvml" else self._read_cpu()
        except Exception:
            # A driver hiccup must not take the run down: drop this tick and keep sampling.
            with self._lock:
                self.errors += 1
            return
        if values:
            with self._lock:
                self._samples.append(Sample(t, values))

    def _read_gpus(self) -> dict[str, float]:
        nvml, values = self._nvml, {}
        for i, handle in enumerate(self._handles):
            values[f"gpu{i}_util_pct"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            values[f"gpu{i}_mem_used_mib"] = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            try:
                values[f"gpu{i}_power_w"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
            except nvml.NVMLError:
                pass  # some boards and MIG slices do not report power; the rest is still worth having
        return values

    def _read_cpu(self) -> dict[str, float]:
        values = {}
        util = self._cpu.util_pct()
        if util is not None:
            values["cpu_util_pct"] = util
        rss = rss_mib()
        if rss is not None:
            values["proc_rss_mib"] = rss
        return values
