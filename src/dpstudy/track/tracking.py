"""MLflow logging shared by every stage: the parent run of a stage execution and its children.

Layout in the store: one experiment per study (`STUDIES`); one parent run per stage execution,
tagged with the git commit, DVC stage, preset, device names and world size; one nested child run
per configuration (batch size, workers, lr rule, schedule, seed). A child's run name leads with
what sets it apart from the other configurations of its grid (``Tracker.run_names``, e.g. ``b256
sqrt s0 · lenet_lr_scaling``); its full configuration name (also its checkpoint's) is the
``configuration`` tag, which every lookup uses (`Tracker.find`). Params are logged once per run,
metrics always with an explicit step (`run.Run`). Only rank 0 talks to MLflow.

The rest of track/: `store` (URI, client, experiments), `reachable` (the start-up check),
`endings` (final statuses, stale runs, a stopped launch), `artifacts` (a copied or moved store),
`gitfacts` (the commit).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from . import endings
from .artifacts import note_copied
from .endings import LAUNCH_ID, end_status
from .gitfacts import git_commit
from .run import Run
from .store import experiment_id, open_client, tracking_uri

STUDIES = {
    "A": "A-cao-shen-2023-lenet-dataloading",
    "B": "B-xue-2023-dp-vs-ddp-vgg16",
    "C": "C-lee-2019-adaptive-batch",
    "report": "dpstudy-claims-report",  # the plot stage: figures and REPORT.md for all three
}
# The study each training grid (a configuration's `sweep`) belongs to.
SWEEP_STUDY = {"lenet_utilization": "A", "lenet_lr_scaling": "A", "vgg": "B", "classification": "C", "restoration": "C"}


class Tracker:
    """The parent run of one stage execution, and factory of its child runs.

    Use as a context manager: the parent run ends FINISHED, or FAILED if the block raises
    (KILLED on Ctrl-C), so a crashed stage is visible as such in the UI. Entering it also ends
    KILLED the runs of this stage that a killed process left RUNNING (`endings.end_stale_runs`).
    """

    def __init__(
        self,
        study: str,
        stage: str,
        *,
        preset: str,
        params: Mapping[str, Any],
        rank: int = 0,
        world_size: int = 1,
        devices: Iterable[str] = (),
        uri: str | None = None,
        root: str | os.PathLike | None = None,
    ):
        self.study, self.stage, self.preset = STUDIES[study], stage, preset
        self.params, self.rank, self.world_size = dict(params), rank, world_size
        self.devices = list(devices)
        self.uri = uri or tracking_uri(root)
        self.root = Path(root or Path.cwd())
        self._client = None
        self.parent = Run(None, None)
        self.experiment_id: str | None = None
        self._tags: dict[str, str] = {}
        # configuration name -> the run name its child run is shown under (what sets it apart in
        # its grid); a configuration not in here is shown under its own name
        self.run_names: dict[str, str] = {}

    def __enter__(self) -> Tracker:
        if self.rank != 0:
            return self
        self._client = open_client(self.uri)
        self.experiment_id = experiment_id(self._client, self.study, self.uri)
        for line in self._notices():
            _say(line)
        self._tags = self._base_tags()  # once per stage: git is asked here, not per child run
        self.parent = self._new_run(self.stage, self._tags)
        try:  # __exit__ only runs once __enter__ has returned: end the run here if this is cut short
            self.parent.log_params(self.params)
        except BaseException as exc:
            endings.terminate(self._client, self.parent.run_id, end_status(type(exc)))
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._client is not None:
            endings.terminate(self._client, self.parent.run_id, end_status(exc_type))

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> Iterator[Run]:
        """A nested run for configuration ``name`` (its ``configuration`` tag), shown under
        ``run_names[name]`` if set, else ``name``; ends FAILED if its block raises."""
        if self._client is None:
            yield Run(None, None)
            return
        run_tags = {**self._tags, "mlflow.parentRunId": self.parent.run_id, "configuration": name, **(tags or {})}
        run = self._new_run(self.run_names.get(name, name), run_tags)
        try:  # from its creation on, a signal (or any failure) ends the run, never leaves it RUNNING
            run.log_params(params)
            yield run
        except BaseException as exc:
            endings.terminate(self._client, run.run_id, end_status(type(exc)))
            raise
        endings.terminate(self._client, run.run_id, "FINISHED")

    def run(self, run_id: str | None) -> Run:
        """A handle on a run of this stage, e.g. a child that has ended, to add figures known only
        after the whole grid (an inactive handle on ranks other than 0)."""
        return Run(self._client, run_id if self._client else None, self.uri)

    def find(self, name: str, stage: str) -> Run:
        """The latest run of configuration ``name`` (its ``configuration`` tag; in a store written
        before that tag, its run name) that ``stage`` logged in this study, e.g. to add figures a
        later stage computed; an inactive handle when there is none."""
        if self._client is None:
            return Run(None, None)
        quoted = name.replace("'", "\\'")
        for key in ("tags.configuration", "tags.mlflow.runName"):
            runs = self._client.search_runs(
                [self.experiment_id],
                f"{key} = '{quoted}' and tags.dvc_stage = '{stage}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if runs:
                return Run(self._client, runs[0].info.run_id, self.uri)
        return Run(self._client, None)

    def _new_run(self, name: str, tags: Mapping[str, Any]) -> Run:
        return Run(self._client, endings.create(self._client, self.experiment_id, name, tags), self.uri)

    def _notices(self) -> list[str]:
        """What a user should know about the store before the stage logs into it: that it is a
        copy, once; how many runs a killed execution left RUNNING (now KILLED)."""
        lines = [note_copied(self._client, self.experiment_id, self.uri)]
        n = endings.end_stale_runs(self._client, self.experiment_id, self.stage)
        if n:
            lines.append(
                f"[mlflow] {n} run{'s' if n != 1 else ''} of {self.stage} left RUNNING by an interrupted "
                f"execution (kill -9?) marked KILLED"
            )
        return [line for line in lines if line]

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
            "pid": str(os.getpid()),  # with host: tells a later execution whether this run is alive
            "dpstudy_version": __version__,
            **({"launch": os.environ[LAUNCH_ID]} if os.environ.get(LAUNCH_ID) else {}),
        }


def _say(line: str) -> None:
    from ..console import say

    say(line)
