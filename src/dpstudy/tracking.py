"""MLflow logging shared by every stage.

Layout in the store: one experiment per study; one parent run per stage execution, tagged with the
git commit, DVC stage, preset, device names and world size; one nested child run per configuration
(batch size, workers, lr rule, schedule, seed). Params are logged once per run, metrics always with
an explicit step. Only rank 0 talks to MLflow: on every other rank each call is a no-op, so
callers never need an ``if rank == 0`` of their own.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` with artifacts
in ``<root>/mlartifacts`` beside it (``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from . import __version__
from .config import flatten

STUDIES = {
    "A": "A-cao-shen-2023-lenet-dataloading",
    "B": "B-xue-2023-dp-vs-ddp-vgg16",
    "C": "C-lee-2019-adaptive-batch",
    "report": "dpstudy-claims-report",  # the plot stage: figures and REPORT.md for all three
}
# The study each training grid (a configuration's `sweep`) belongs to.
SWEEP_STUDY = {"lenet_utilization": "A", "lenet_lr_scaling": "A", "vgg": "B",
               "classification": "C", "restoration": "C"}
_MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
_MAX_PARAMS_PER_CALL = 100
_MAX_PARAM_CHARS = 6000


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}"


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local sqlite store, a folder per experiment; a server decides itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment).as_uri()
    return None


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the repository at ``cwd``; ("unknown", False) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty


def quiet_mlflow_logs() -> None:
    # The store's first use prints schema-migration INFO lines that would drown stage output.
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _end_status(exc_type: type[BaseException] | None) -> str:
    """MLflow's final status for a block that ended with ``exc_type`` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


class Run:
    """One MLflow run (parent or child); created by `Tracker`, inert when ``client`` is None."""

    def __init__(self, client, run_id: str | None):
        self._client, self.run_id = client, run_id

    @property
    def active(self) -> bool:
        return self._client is not None and self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(dict(params)).items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_CALL):
            self._client.log_batch(self.run_id, params=items[i:i + _MAX_PARAMS_PER_CALL])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float | None = None) -> None:
        """Several metrics at one step."""
        ts = timestamp or time.time()
        self._log([(k, v, step, ts) for k, v in metrics.items()])

    def log_series(self, key: str, values: Iterable[float], steps: Iterable[int] | None = None,
                   timestamps: Iterable[float] | None = None) -> None:
        """One metric over many steps (default steps 0..n-1), sent in as few calls as allowed."""
        values = list(values)
        steps = list(steps) if steps is not None else list(range(len(values)))
        now = time.time()
        stamps = list(timestamps) if timestamps is not None else [now] * len(values)
        self._log(list(zip([key] * len(values), values, steps, stamps)))

    def log_samples(self, samples) -> None:
        """Telemetry samples (`telemetry.Sample`) as step metrics, step = sample index."""
        rows = [(k, v, i, s.t) for i, s in enumerate(samples) for k, v in s.values.items()]
        self._log(rows)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def _log(self, rows: list[tuple[str, float, int, float]]) -> None:
        if not self.active or not rows:
            return
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), int(ts * 1000), int(step)) for k, v, step, ts in rows]
        for i in range(0, len(metrics), _MAX_METRICS_PER_CALL):
            self._client.log_batch(self.run_id, metrics=metrics[i:i + _MAX_METRICS_PER_CALL])


class Tracker:
    """The parent run of one stage execution, and factory of its child runs.

    Use as a context manager: the parent run ends FINISHED, or FAILED if the block raises
    (KILLED on Ctrl-C), so a crashed stage is visible as such in the UI.
    """

    def __init__(self, study: str, stage: str, *, preset: str, params: Mapping[str, Any],
                 rank: int = 0, world_size: int = 1, devices: Iterable[str] = (),
                 uri: str | None = None, root: str | os.PathLike | None = None):
        self.study, self.stage, self.preset = STUDIES[study], stage, preset
        self.params, self.rank, self.world_size = dict(params), rank, world_size
        self.devices = list(devices)
        self.uri = uri or tracking_uri(root)
        self.root = Path(root or Path.cwd())
        self._client = None
        self.parent = Run(None, None)
        self.experiment_id: str | None = None
        self._tags: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Tracker":
        if self.rank != 0:
            return self
        from mlflow.tracking import MlflowClient

        quiet_mlflow_logs()  # after the import: importing mlflow resets its loggers' levels

        self._client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment_id()
        self._tags = self._base_tags()  # once per stage: git is asked here, not per child run
        run = self._client.create_run(self.experiment_id, run_name=self.stage, tags=self._tags)
        self.parent = Run(self._client, run.info.run_id)
        self.parent.log_params(self.params)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._client is None:
            return
        self._terminate(self.parent.run_id, _end_status(exc_type))

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
              ) -> Iterator[Run]:
        """A nested run for one configuration; ends FAILED if its block raises."""
        if self._client is None:
            yield Run(None, None)
            return
        run_tags = {**self._tags, "mlflow.parentRunId": self.parent.run_id, **(tags or {})}
        info = self._client.create_run(self.experiment_id, run_name=name,
                                       tags={k: str(v) for k, v in run_tags.items()}).info
        run = Run(self._client, info.run_id)
        run.log_params(params)
        try:
            yield run
        except BaseException as exc:
            self._terminate(info.run_id, _end_status(type(exc)))
            raise
        self._terminate(info.run_id, "FINISHED")

    def run(self, run_id: str | None) -> Run:
        """A handle on a run of this stage, e.g. a child that has ended, to add figures known only
        after the whole grid (an inactive handle on ranks other than 0)."""
        return Run(self._client, run_id if self._client else None)

    def find(self, name: str, stage: str) -> Run:
        """The latest run called ``name`` that ``stage`` logged in this study (e.g. a configuration's
        child run, to add figures a later stage computed); an inactive handle when there is none."""
        if self._client is None:
            return Run(None, None)
        quoted = name.replace("'", "\\'")
        runs = self._client.search_runs(
            [self.experiment_id], f"tags.mlflow.runName = '{quoted}' and tags.dvc_stage = '{stage}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        return Run(self._client, runs[0].info.run_id if runs else None)

    # -- helpers ----------------------------------------------------------------------------
    def _terminate(self, run_id: str, status: str) -> None:
        """Record a run's final status without being cut short by SIGTERM/SIGINT: when a DDP
        peer dies, torchrun's SIGTERM often lands while the failure is being recorded. A signal
        that arrives during the write is held and handed to the usual handler right after it."""
        if threading.current_thread() is not threading.main_thread():
            self._client.set_terminated(run_id, status=status)
            return
        held: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                    for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._client.set_terminated(run_id, status=status)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for s in held[:1]:
                signal.raise_signal(s)  # now the usual handler (or the default action) applies

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.study)
        if exp is not None:
            return exp.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self._client.create_experiment(self.study, artifact_location=_artifact_root(self.uri, self.study))
        except MlflowException:  # created meanwhile by another process
            return self._client.get_experiment_by_name(self.study).experiment_id

    def _base_tags(self) -> dict[str, str]:
        commit, dirty = git_commit(self.root)
        return {
            "mlflow.source.git.commit": commit,
            "git_commit": commit,
            "git_dirty": str(dirty).lower(),
            "dvc_stage": self.stage,
            "preset": self.preset,
            "devices": ", ".join(self.devices) or "none",
            "world_size": str(self.world_size),
            "host": platform.node(),
            "dpstudy_version": __version__,
        }
