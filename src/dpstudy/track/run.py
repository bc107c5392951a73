"""One MLflow run (a stage's parent or a configuration's child): params, tags, metrics with an
explicit step, telemetry as MLflow's own system metrics, and artifacts.

Only rank 0 talks to MLflow: on every other rank a run is inert (no client) and each call is a
no-op, so callers never need an ``if rank == 0`` of their own. Every write holds SIGTERM/SIGINT
until it is done (`fsutil.signals_held`): an exception raised inside an sqlite write left the store
locked, so ending the runs KILLED then failed ("database is locked") and they stayed RUNNING (1 in
5 interruptions landing in a write). A held signal is delivered right after the write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import flatten
from ..fsutil import signals_held
from . import artifacts
from .store import artifacts_folder

_MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
_MAX_PARAMS_PER_CALL = 100
_MAX_PARAM_CHARS = 6000


class Run:
    """One MLflow run; created by `Tracker`, inert when ``client`` is None. ``uri`` is the store
    the client uses: its artifacts go where that store's copy keeps them (`artifacts`)."""

    def __init__(self, client, run_id: str | None, uri: str | None = None):
        self._client, self.run_id, self._uri = client, run_id, uri
        self._folder: Path | bool | None = False  # this checkout's artifact folder; False: not looked up

    @property
    def active(self) -> bool:
        return self._client is not None and self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(dict(params)).items()]
        with signals_held():
            for i in range(0, len(items), _MAX_PARAMS_PER_CALL):
                self._client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_CALL])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        with signals_held():
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float | None = None) -> None:
        """Several metrics at one step."""
        ts = timestamp or time.time()
        self._log([(k, v, step, ts) for k, v in metrics.items()])

    def log_series(
        self,
        key: str,
        values: Iterable[float],
        steps: Iterable[int] | None = None,
        timestamps: Iterable[float] | None = None,
    ) -> None:
        """One metric over many steps (default steps 0..n-1), sent in as few calls as allowed."""
        values = list(values)
        steps = list(steps) if steps is not None else list(range(len(values)))
        now = time.time()
        stamps = list(timestamps) if timestamps is not None else [now] * len(values)
        self._log(list(zip([key] * len(values), values, steps, stamps)))

    def log_samples(self, samples) -> None:
        """Telemetry samples (`telemetry.Sample`) as MLflow system metrics: ``system/...`` keys
        (`telemetry.system_metric`), each at its sample's own time, step = that key's sample count
        so far (0, 1, 2, ... per key, as MLflow's own monitor numbers them)."""
        from ..measure.telemetry import system_metric

        counts: dict[str, int] = {}
        rows = []
        for sample in samples:
            for key, value in sample.values.items():
                name, scale = system_metric(key)
                step = counts.get(name, 0)
                counts[name] = step + 1
                rows.append((name, value * scale, step, sample.t))
        self._log(rows)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        with signals_held():
            folder = self._local_folder()
            if folder is None:
                self._client.log_artifact(self.run_id, str(path), artifact_path)
            else:
                artifacts.copy_in(folder, path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file`` (e.g. a run's own ``curves.csv``)."""
        if not self.active:
            return
        with signals_held():
            folder = self._local_folder()
            if folder is None:
                self._client.log_text(self.run_id, text, artifact_file)
            else:
                artifacts.write_text(folder, text, artifact_file)

    def _local_folder(self) -> Path | None:
        """This checkout's folder of the run's artifacts where MLflow's recorded one is another
        checkout's (a copied or moved store); None where MLflow's own client is right."""
        if self._folder is False:
            self._folder = None
            if self._uri and artifacts_folder(self._uri) is not None:  # a local store: no call to a server
                recorded = self._client.get_run(self.run_id).info.artifact_uri
                self._folder = artifacts.local_folder(self._uri, recorded)
        return self._folder

    def _log(self, rows: list[tuple[str, float, int, float]]) -> None:
        if not self.active or not rows:
            return
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), int(ts * 1000), int(step)) for k, v, step, ts in rows]
        with signals_held():
            for i in range(0, len(metrics), _MAX_METRICS_PER_CALL):
                self._client.log_batch(self.run_id, metrics=metrics[i : i + _MAX_METRICS_PER_CALL])
