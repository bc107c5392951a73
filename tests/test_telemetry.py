"""Tests for dpstudy.measure.telemetry: the real CPU fallback, and NVML behaviour through a fake module."""

import math
import threading
import time
from types import SimpleNamespace

import pytest

from dpstudy.measure import telemetry
from dpstudy.measure.telemetry import ResourceSampler

FALLBACK_PREFIX = "telemetry: no NVIDIA GPU visible through NVML"


@pytest.fixture(autouse=True)
def fresh_fallback_flag(monkeypatch):
    # The notice is once per process; reset it so each test sees a fresh process's behaviour.
    monkeypatch.setattr(telemetry, "_fallback_announced", False)


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that escape any thread during the test."""
    caught = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))
    return caught


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Just enough of pynvml. Each device is a dict; list values are consumed one per call."""

    NVMLError = FakeNVMLError

    def __init__(self, devices, init_error=None, util_fail_after=None, util_error=FakeNVMLError):
        self.devices = devices
        self.init_error = init_error
        self.util_fail_after = util_fail_after
        self.util_error = util_error
        self.util_calls = 0
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error
        self.init_calls += 1

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.devices):
            raise FakeNVMLError("Invalid Argument")
        return ("handle", index)  # opaque, so indices and handles cannot be confused

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for index, device in enumerate(self.devices):
            if device["uuid"] == uuid:
                return ("handle", index)
        raise FakeNVMLError("Not Found")

    def _value(self, handle, key):
        value = self.devices[handle[1]][key]
        if isinstance(value, list):
            return value.pop(0) if len(value) > 1 else value[0]
        return value

    def nvmlDeviceGetName(self, handle):
        return self._value(handle, "name")

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.util_calls += 1
        if self.util_fail_after is not None and self.util_calls > self.util_fail_after:
            raise self.util_error("GPU is lost")
        return SimpleNamespace(gpu=self._value(handle, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self._value(handle, "mem_mib") * 2**20, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, handle):
        milliwatts = self._value(handle, "power_mw")
        if milliwatts is None:
            raise FakeNVMLError("Not Supported")
        return milliwatts


def three_devices():
    return [
        {"name": "Fake A100", "uuid": "GPU-aaaa", "util": 11, "mem_mib": 1024, "power_mw": 100_000},
        {"name": b"Fake H100", "uuid": "GPU-bbbb", "util": 22, "mem_mib": 2048, "power_mw": None},
        {"name": "Fake L4", "uuid": "GPU-cccc", "util": 33, "mem_mib": 3072, "power_mw": 72_500},
    ]


# What each fake device reports, by NVML index; device 1 has no power reading.
EXPECTED = [
    {"util_pct": 11.0, "mem_used_mib": 1024.0, "power_w": 100.0},
    {"util_pct": 22.0, "mem_used_mib": 2048.0},
    {"util_pct": 33.0, "mem_used_mib": 3072.0, "power_w": 72.5},
]


def expected_values(nvml_indices):
    return {
        f"gpu{i}_{metric}": value for i, index in enumerate(nvml_indices) for metric, value in EXPECTED[index].items()
    }


def sample_with_fake(nvml, visible):
    # A long interval: exactly one sample at start() and one at stop().
    sampler = ResourceSampler(interval_s=5, nvml=nvml, visible=visible).start()
    samples = sampler.stop()
    return sampler, samples


# --- the real CPU fallback on this machine --------------------------------------------------


def check_cpu_samples(samples):
    with_util = [s.values["cpu_util_pct"] for s in samples if "cpu_util_pct" in s.values]
    assert len(with_util) >= 3
    assert all(0.0 <= u <= 100.0 for u in with_util)
    assert max(with_util) > 0.0  # the busy loop kept at least one CPU busy
    assert all(s.values["proc_rss_mib"] > 10 for s in samples)


def test_cpu_fallback_without_gpu(capfd):
    if _nvml_works():
        pytest.skip("a GPU is visible through NVML here; the fallback is tested with visible='-1'")
    sampler = ResourceSampler(interval_s=0.05).start()
    _busy(0.3)
    samples = sampler.stop()
    assert sampler.mode == "cpu"
    assert sampler.device_names == []
    check_cpu_samples(samples)
    err = capfd.readouterr().err
    assert err.count(FALLBACK_PREFIX) == 1


def test_cpu_fallback_when_cuda_visible_devices_hides_all(capfd):
    sampler = ResourceSampler(interval_s=0.05, visible="-1").start()
    _busy(0.3)
    check_cpu_samples(sampler.stop())
    assert sampler.mode == "cpu"
    assert sampler.errors == 0
    assert "hides every GPU" in capfd.readouterr().err


def test_fallback_line_printed_once_per_process(capfd):
    for visible in (None, "", "-1"):
        ResourceSampler(interval_s=0.05, visible=visible).start().stop()
    err = capfd.readouterr().err
    assert err.count(FALLBACK_PREFIX) == 1
    assert len(err.strip().splitlines()) == 1


# --- NVML, through a fake module --------------------------------------------------------------


def test_all_devices_with_their_values():
    nvml = FakeNVML(three_devices())
    sampler, samples = sample_with_fake(nvml, visible=None)
    assert sampler.mode == "nvml"
    assert sampler.device_names == ["Fake A100", "Fake H100", "Fake L4"]  # bytes decoded
    assert len(samples) == 2
    for sample in samples:
        assert sample.values == expected_values([0, 1, 2])
    assert "gpu1_power_w" not in samples[0].values  # power not supported; util and mem still there
    assert sampler.errors == 0
    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)


def test_visible_devices_are_renumbered_like_torch():
    sampler, samples = sample_with_fake(FakeNVML(three_devices()), visible="2,0")
    assert sampler.device_names == ["Fake L4", "Fake A100"]
    assert samples[0].values == expected_values([2, 0])
    assert samples[0].values["gpu0_util_pct"] == 33.0


def test_visible_devices_by_uuid():
    sampler, samples = sample_with_fake(FakeNVML(three_devices()), visible="GPU-bbbb, 2")
    assert sampler.device_names == ["Fake H100", "Fake L4"]
    assert samples[0].values == expected_values([1, 2])


def test_visible_list_ends_at_first_missing_device():
    # CUDA ignores an invalid entry and everything after it.
    sampler, samples = sample_with_fake(FakeNVML(three_devices()), visible="1,7,0")
    assert sampler.device_names == ["Fake H100"]
    assert samples[0].values == expected_values([1])


def test_visible_read_from_environment_at_start(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    sampler = ResourceSampler(interval_s=5, nvml=FakeNVML(three_devices()))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what counts is the value at start()
    samples = sampler.start().stop()
    assert samples[0].values == expected_values([0])


@pytest.mark.parametrize("error", [FakeNVMLError, RuntimeError])
def test_nvml_failing_mid_run_drops_ticks_and_keeps_going(error, thread_errors):
    device = three_devices()[:1]
    nvml = FakeNVML(device, util_fail_after=3, util_error=error)
    sampler = ResourceSampler(interval_s=0.01, nvml=nvml, visible=None).start()
    deadline = time.monotonic() + 5
    while sampler.errors < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sampler._thread.is_alive()  # still sampling after the failures
    samples = sampler.stop()
    assert not sampler._thread.is_alive()
    assert sampler.errors >= 3
    assert [s.values for s in samples] == [expected_values([0])] * 3  # failed ticks recorded nothing
    assert nvml.shutdown_calls == 1
    assert thread_errors == []


def test_nvml_init_failure_falls_back_to_cpu(capfd):
    nvml = FakeNVML(three_devices(), init_error=FakeNVMLError("Driver Not Loaded"))
    sampler, samples = sample_with_fake(nvml, visible=None)
    assert sampler.mode == "cpu"
    assert sampler.device_names == []
    assert samples and all("proc_rss_mib" in s.values for s in samples)
    assert not any(key.startswith("gpu") for s in samples for key in s.values)
    assert nvml.shutdown_calls == 0  # nvmlInit never succeeded, so nothing to shut down
    err = capfd.readouterr().err
    assert FALLBACK_PREFIX in err and "Driver Not Loaded" in err


def test_zero_devices_falls_back_to_cpu_and_shuts_nvml_down(capfd):
    nvml = FakeNVML([])
    sampler, _ = sample_with_fake(nvml, visible=None)
    assert sampler.mode == "cpu"
    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)
    assert "device count is 0" in capfd.readouterr().err


def test_stop_is_prompt():
    sampler = ResourceSampler(interval_s=5, nvml=FakeNVML(three_devices())).start()
    begin = time.monotonic()
    sampler.stop()
    assert time.monotonic() - begin < 1.0


def test_stop_is_idempotent_and_context_manager_stops():
    nvml = FakeNVML(three_devices())
    assert ResourceSampler(nvml=nvml).stop() == []  # never started
    with ResourceSampler(interval_s=5, nvml=nvml, visible=None) as sampler:
        assert len(sampler.samples()) == 1  # start() samples at once
    first = sampler.stop()
    again = sampler.stop()
    assert len(first) == 2 and again == first
    assert nvml.shutdown_calls == 1
    assert not sampler._thread.is_alive()


def ticking(*times):
    """A clock for the sampler that answers these times in turn (then the last one)."""
    values = list(times)
    return lambda: values.pop(0) if len(values) > 1 else values[0]


def test_summary_means_and_memory_maxima():
    device = {
        "name": "Fake",
        "uuid": "GPU-x",
        "util": [10, 40],
        "mem_mib": [100, 300],
        "power_mw": [50_000, 70_000],
    }
    # start at 0 with a sample then; the stop sample at 2.5 s, its 1 s NVML period inside the window
    sampler = ResourceSampler(
        interval_s=5, nvml=FakeNVML([device]), visible=None, clock=ticking(0.0, 0.0, 2.5, 2.5)
    ).start()
    mark = sampler.mark()
    sampler.stop()
    assert mark == 1 and sampler.window == (0.0, 2.5)
    assert sampler.summary() == {
        "gpu0_mem_used_mib_max": 300.0,
        "gpu0_mem_used_mib_mean": 200.0,
        "gpu0_power_w_mean": 60.0,
        # the start sample's 10 % is NVML's average over the second before the window: not counted
        "gpu0_util_pct_mean": 40.0,
    }
    assert sampler.summary(since=mark) == {
        "gpu0_mem_used_mib_max": 300.0,
        "gpu0_mem_used_mib_mean": 300.0,
        "gpu0_power_w_mean": 70.0,
        "gpu0_util_pct_mean": 40.0,
    }
    assert sampler.summary(since=2) == {}


@pytest.mark.parametrize("length, counted", [(0.4, None), (0.999, None), (1.0, [80]), (3.0, [80])])
def test_utilization_only_from_samples_whose_nvml_period_is_inside_the_window(length, counted):
    device = {"name": "Fake", "uuid": "GPU-x", "util": [5, 80], "mem_mib": [100, 300], "power_mw": 50_000}
    sampler = ResourceSampler(
        interval_s=60, nvml=FakeNVML([device]), visible=None, clock=ticking(10.0, 10.0, 10.0 + length, 10.0 + length)
    ).start()
    sampler.stop()
    summary = sampler.summary()
    assert summary["gpu0_mem_used_mib_max"] == 300.0  # memory is a reading of the moment: always counted
    source, util = telemetry.utilization(summary)
    assert source == "gpu_util_pct"
    if counted is None:  # shorter than NVML's period: no number at all
        assert math.isnan(summary["gpu0_util_pct_mean"]) and math.isnan(util)
    else:
        assert util == summary["gpu0_util_pct_mean"] == sum(counted) / len(counted)


def test_one_gpu_too_short_makes_the_mean_over_gpus_too_short():
    assert math.isnan(telemetry.utilization({"gpu0_util_pct_mean": 50.0, "gpu1_util_pct_mean": math.nan})[1])
    assert telemetry.utilization({"gpu0_util_pct_mean": 50.0, "gpu1_util_pct_mean": 70.0}) == ("gpu_util_pct", 60.0)
    assert telemetry.utilization({"cpu_util_pct_mean": 30.0}) == ("cpu_util_pct", 30.0)


def test_cpu_utilization_is_not_held_to_the_nvml_window():
    sampler = ResourceSampler(interval_s=0.05, nvml=FakeNVML([]), visible=None).start()
    _busy(0.3)
    sampler.stop()
    assert sampler.mode == "cpu" and 0.0 <= sampler.summary()["cpu_util_pct_mean"] <= 100.0


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf])
def test_interval_must_be_positive(interval):
    with pytest.raises(ValueError):
        ResourceSampler(interval_s=interval)


def test_real_nvml_on_a_visible_gpu():
    """The real pynvml path: only where a GPU exists (the lent device runs it; CI has none)."""
    if not _nvml_works():
        pytest.skip("no NVIDIA GPU visible through NVML (the fake-NVML tests cover the logic)")
    import torch

    sampler = ResourceSampler(interval_s=0.05, visible="0").start()
    x = torch.randn(8192, 8192, device="cuda")
    end = time.perf_counter() + 2.0  # longer than NVML's period, so samples inside the window count
    while time.perf_counter() < end:  # keep the GPU busy while the sampler reads it
        x = torch.tanh(x @ x)
    torch.cuda.synchronize()
    sampler.stop()
    summary = sampler.summary()
    assert sampler.mode == "nvml" and len(sampler.device_names) == 1
    assert sampler.device_names == [torch.cuda.get_device_name(0)]  # NVML and CUDA agree on the board
    assert summary["gpu0_util_pct_mean"] > 10  # a saturating matmul loop is visible as utilisation
    assert summary["gpu0_mem_used_mib_max"] > 256  # the 256 MiB operands live on that device
    assert summary.get("gpu0_power_w_mean", 100) > 30


@pytest.mark.parametrize(
    "key, name, scale",
    [
        ("gpu0_util_pct", "system/gpu_0_utilization_percentage", 1.0),
        ("gpu12_mem_used_mib", "system/gpu_12_memory_usage_megabytes", 2**20 / 1e6),
        ("gpu1_power_w", "system/gpu_1_power_usage_watts", 1.0),
        ("cpu_util_pct", "system/cpu_utilization_percentage", 1.0),
        ("proc_rss_mib", "system/process_rss_megabytes", 2**20 / 1e6),
        ("gpux_util_pct", "system/gpux_util_pct", 1.0),  # unknown: kept, under the same prefix
    ],
)
def test_sample_keys_as_mlflow_system_metrics(key, name, scale):
    assert telemetry.system_metric(key) == (name, pytest.approx(scale))


def test_every_key_a_sampler_writes_has_an_mlflow_system_metric_name():
    """The names MLflow's own monitors log (mlflow/system_metrics), for the keys NVML sampling writes."""
    sampler = ResourceSampler(interval_s=5, nvml=FakeNVML(three_devices()), visible=None).start()
    keys = {k for s in sampler.stop() for k in s.values}
    assert keys and {telemetry.system_metric(k)[0] for k in keys} == {
        f"system/gpu_{i}_{m}"
        for i in range(3)
        for m in ("utilization_percentage", "memory_usage_megabytes", "power_usage_watts")
    } - {"system/gpu_1_power_usage_watts"}  # the fake device 1 reports no power
