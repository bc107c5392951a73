"""MLflow logging shared by every stage.

Layout in the store: one experiment per study; one parent run per stage execution, tagged with the
git commit, DVC stage, preset, device names and world size; one nested child run per configuration
(batch size, workers, lr rule, schedule, seed). A child's run name leads with what sets it apart
from the other configurations of its grid (``Tracker.run_names``, e.g. ``b256 sqrt s0 ·
lenet_lr_scaling``); its full configuration name (also its checkpoint's) is the ``configuration``
tag, which every lookup uses (`Tracker.find`). Params are logged once per run, metrics always with
an explicit step; telemetry as MLflow's own system metrics (``system/...`` keys, the sample's own
time), so the run page's System metrics tab shows it. Only rank 0 talks to MLflow: on every other rank each call is a no-op, so
callers never need an ``if rank == 0`` of their own.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` with artifacts
in ``<root>/mlartifacts`` beside it (``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows it).

Faults, each handled where a stage starts rather than left to MLflow's defaults:
- an unreachable server: `check_reachable` (called by the command line before a stage) says so in
  one line within seconds, and every HTTP call retries a bounded number of times (`HTTP_LIMITS`,
  set before mlflow is imported), instead of MLflow's minutes of silent back-off;
- a stage killed with no chance to clean up (kill -9, OOM killer, a lost node) leaves its runs
  RUNNING: the next execution of that stage marks them KILLED (`Tracker._end_stale_runs`), knowing
  a run is stale from its ``host`` and ``pid`` tags;
- a copied checkout: the store holds absolute artifact paths, so a copy of ``mlflow.db`` would keep
  writing into the original's ``mlartifacts``; the first Tracker in the copy points them at the
  copy's own folder (`Tracker._relocate_artifacts`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .. import __version__
from ..config import flatten
from ..errors import UserError
from ..fsutil import signals_held, unwritable

# MLflow's HTTP client retries a failed call 7 times with exponential back-off and waits 120 s per
# try: minutes of silence per call when the server is down. These bounds apply to every call of
# every stage (set before mlflow is imported; a value already in the environment is kept). The
# container recipes (docker/compose.yaml, docker/kubernetes.yaml) set the same values.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",     # 3 tries in all
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # about 1 s, then 2 s between them
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",        # seconds per try
}
for _name, _value in HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)

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


# Set by `dpstudy launch` for its workers: their runs carry it as the tag ``launch``, so that an
# interrupted launch can find them (`mark_launch_killed`).
LAUNCH_ID = "DPSTUDY_LAUNCH_ID"


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local sqlite store, a folder per experiment; a server decides itself."""
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent.resolve() / "mlartifacts" / experiment).as_uri()
    return None


# --------------------------------------------------------------------------------------------
# Is the store there? (before a stage starts)


def check_reachable(uri: str | None = None, timeout_s: float = 5) -> None:
    """Raise `UserError` (one line: the store, why, the fix) unless the tracking store can be used.

    http(s): one GET of ``<uri>/health``, then one real API call (a search for one experiment),
    each without retries and ``timeout_s`` at most: a server whose API hangs (a stuck backend
    database) would otherwise hold the stage for MLflow's retries, minutes, before a traceback.
    Any answer below 500 counts (a login required is MLflow's to report), but 404 for /health.
    sqlite: the database's folder must exist and be writable (`fsutil.unwritable`: not on a
    read-only mount, a file really creatable there; nothing is left behind), and the database
    itself, if there, writable. Other stores are not checked.
    """
    uri = uri or tracking_uri()
    parts = urllib.parse.urlsplit(uri)
    unset = "unset MLFLOW_TRACKING_URI to log to the local sqlite store mlflow.db"
    if parts.scheme in ("http", "https"):
        shown = _without_credentials(parts)
        problem = _http_problem(shown, timeout_s)
        if problem:
            raise UserError(f"MLflow tracking server {shown} is not reachable ({problem}): start it, or {unset}")
        problem = _http_problem(shown, timeout_s, api=True)
        if problem:
            raise UserError(f"MLflow tracking server {shown} answers /health but not its API ({problem} to "
                            f"{_API_CHECK[0]} {_API_CHECK[1]}): restart it or check its backend store, or {unset}")
        return
    db = _sqlite_path(uri)
    if db is None:
        return
    folder = db.parent.resolve()
    cannot = unwritable(folder) if folder.is_dir() else None
    if not folder.is_dir():
        problem, fix = f"folder {folder} does not exist", "create it"
    elif cannot:
        at, why, fix = cannot
        problem = f"{at} {why}"
    elif db.exists() and not os.access(db, os.W_OK):
        problem, fix = f"{db.resolve()} is not writable", "fix its permissions"
    else:
        return
    other = unset if os.environ.get("MLFLOW_TRACKING_URI") else "set MLFLOW_TRACKING_URI to another store"
    raise UserError(f"MLflow store {uri} cannot be written ({problem}): {fix}, or {other}")


def _without_credentials(parts: urllib.parse.SplitResult) -> str:
    """The URI with any user:password@ removed (it is printed, and urllib would choke on it)."""
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


# The API call of the start-up check: cheap on any backend, read-only, answered by every MLflow
# server version of the 2.0 REST API.
_API_CHECK = ("POST", "/api/2.0/mlflow/experiments/search", b'{"max_results": 1}')


def _http_problem(base: str, timeout_s: float, api: bool = False) -> str | None:
    """Why ``<base>/health`` (``api``: the `_API_CHECK` call) got no usable answer within
    ``timeout_s``; None if it did."""
    import urllib.request  # ~35 ms (http.client, ssl, email): not at `dpstudy --help` time

    headers = {"User-Agent": f"dpstudy/{__version__}"}
    if api:
        method, path, body = _API_CHECK
        request = urllib.request.Request(f"{base}{path}", data=body, method=method,
                                         headers={**headers, "Content-Type": "application/json"})
    else:
        request = urllib.request.Request(f"{base}/health", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(256)
        return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and not api:  # every MLflow server answers /health: something else is there
            return "HTTP 404 for /health: not an MLflow server?"
        return None if exc.code < 500 else f"HTTP {exc.code} {exc.reason}".strip()
    except urllib.error.URLError as exc:
        return _reason(exc.reason, base, timeout_s)
    except (OSError, ValueError) as exc:  # a timeout while reading, a reset, a malformed URI
        return _reason(exc, base, timeout_s)


def _reason(reason, base: str, timeout_s: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host {urllib.parse.urlsplit(base).hostname}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__


# --------------------------------------------------------------------------------------------
# Is a RUNNING run still alive?


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    try:  # a killed child not yet reaped by its parent still answers kill(0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


_OPEN_RUNS: set[str] = set()  # runs this process has started and not yet ended


def _stale(run_id: str, tags: Mapping[str, str], host: str) -> bool:
    """A RUNNING run nobody will end: started on this host by a process that no longer exists (or
    by a version of dpstudy that did not record its process id)."""
    if tags.get("host") != host:
        return False  # another machine's run: its state cannot be known from here
    pid = tags.get("pid")
    if pid is None:
        return True
    try:
        pid = int(pid)
    except ValueError:
        return True
    if pid <= 0:
        return True
    if pid == os.getpid():
        # Not one of this process's own open runs: the pid is a reused one (a container's
        # processes get the same small pids on every start).
        return run_id not in _OPEN_RUNS
    return not _pid_alive(pid)


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
        with signals_held():  # see _log
            for i in range(0, len(items), _MAX_PARAMS_PER_CALL):
                self._client.log_batch(self.run_id, params=items[i:i + _MAX_PARAMS_PER_CALL])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        with signals_held():  # see _log
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
        if self.active:
            with signals_held():  # see _log
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file`` (e.g. a run's own ``curves.csv``)."""
        if self.active:
            with signals_held():  # see _log
                self._client.log_text(self.run_id, text, artifact_file)

    def _log(self, rows: list[tuple[str, float, int, float]]) -> None:
        if not self.active or not rows:
            return
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), int(ts * 1000), int(step)) for k, v, step, ts in rows]
        # Every write holds SIGTERM/SIGINT until it is done: an exception raised inside an sqlite
        # write left the store locked, so ending the runs KILLED then failed ("database is locked")
        # and they stayed RUNNING (1 in 5 interruptions landing in a write). Delivered right after.
        with signals_held():
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
        # configuration name -> the run name its child run is shown under (what sets it apart in
        # its grid); a configuration not in here is shown under its own name
        self.run_names: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "Tracker":
        if self.rank != 0:
            return self
        from mlflow.tracking import MlflowClient

        quiet_mlflow_logs()  # after the import: importing mlflow resets its loggers' levels

        self._client = MlflowClient(tracking_uri=self.uri)
        self._relocate_artifacts()
        self.experiment_id = self._experiment_id()
        self._end_stale_runs()
        self._tags = self._base_tags()  # once per stage: git is asked here, not per child run
        self.parent = Run(self._client, self._create(self.stage, self._tags))
        try:  # __exit__ only runs once __enter__ has returned: end the run here if this is cut short
            self.parent.log_params(self.params)
        except BaseException as exc:
            self._terminate(self.parent.run_id, _end_status(type(exc)))
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._client is None:
            return
        self._terminate(self.parent.run_id, _end_status(exc_type))

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
              ) -> Iterator[Run]:
        """A nested run for configuration ``name`` (its ``configuration`` tag), shown under
        ``run_names[name]`` if set, else ``name``; ends FAILED if its block raises."""
        if self._client is None:
            yield Run(None, None)
            return
        run_tags = {**self._tags, "mlflow.parentRunId": self.parent.run_id, "configuration": name, **(tags or {})}
        run = Run(self._client, self._create(self.run_names.get(name, name), run_tags))
        try:  # from its creation on, a signal (or any failure) ends the run, never leaves it RUNNING
            run.log_params(params)
            yield run
        except BaseException as exc:
            self._terminate(run.run_id, _end_status(type(exc)))
            raise
        self._terminate(run.run_id, "FINISHED")

    def run(self, run_id: str | None) -> Run:
        """A handle on a run of this stage, e.g. a child that has ended, to add figures known only
        after the whole grid (an inactive handle on ranks other than 0)."""
        return Run(self._client, run_id if self._client else None)

    def find(self, name: str, stage: str) -> Run:
        """The latest run of configuration ``name`` (its ``configuration`` tag; in a store written
        before that tag, its run name) that ``stage`` logged in this study, e.g. to add figures a
        later stage computed; an inactive handle when there is none."""
        if self._client is None:
            return Run(None, None)
        quoted = name.replace("'", "\\'")
        for key in ("tags.configuration", "tags.mlflow.runName"):
            runs = self._client.search_runs(
                [self.experiment_id], f"{key} = '{quoted}' and tags.dvc_stage = '{stage}'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                return Run(self._client, runs[0].info.run_id)
        return Run(self._client, None)

    # -- helpers ----------------------------------------------------------------------------
    def _create(self, name: str, tags: Mapping[str, Any]) -> str:
        """A new RUNNING run's id. SIGTERM/SIGINT are held until its id is known and it is among
        this process's open runs: a signal landing in between would leave a run nobody ends."""
        with signals_held():
            run_id = self._client.create_run(self.experiment_id, run_name=name,
                                             tags={k: str(v) for k, v in tags.items()}).info.run_id
            _OPEN_RUNS.add(run_id)
        return run_id

    def _terminate(self, run_id: str, status: str) -> None:
        """Record a run's final status without being cut short by SIGTERM/SIGINT: when a DDP
        peer dies, torchrun's SIGTERM often lands while the failure is being recorded. A signal
        that arrives during the write is held and handed to the usual handler right after it."""
        _OPEN_RUNS.discard(run_id)
        with signals_held():
            self._client.set_terminated(run_id, status=status)

    def _end_stale_runs(self) -> None:
        """Mark KILLED the RUNNING runs of this stage that a process killed without warning (kill -9,
        the OOM killer) left behind on this host, and say so once. A live run, here or elsewhere,
        is left alone."""
        host = platform.node()
        quoted = self.stage.replace("'", "\\'")
        running = self._client.search_runs(
            [self.experiment_id], f"attributes.status = 'RUNNING' and tags.dvc_stage = '{quoted}'",
            max_results=10000)
        stale = [r for r in running if _stale(r.info.run_id, r.data.tags, host)]
        for r in stale:
            self._terminate(r.info.run_id, "KILLED")
        if stale:
            n = len(stale)
            _say(f"[mlflow] {n} run{'s' if n != 1 else ''} of {self.stage} left RUNNING by an interrupted "
                 f"execution (kill -9?) marked KILLED")

    def _relocate_artifacts(self) -> None:
        """Point a copied store's artifact paths at the ``mlartifacts`` beside it.

        The store records absolute artifact locations (``file:///orig/mlartifacts/<experiment>``
        and each run's ``.../<run id>/artifacts``); a copied checkout (``cp -a``) would go on
        logging into the original's folder. If an experiment lives under some other
        ``.../mlartifacts`` than the one beside this database, that prefix is rewritten in the
        store, for the old runs too (their files came along with the copy)."""
        db = _sqlite_path(self.uri)
        if db is None or not db.is_file():
            return
        here = (db.parent / "mlartifacts").resolve()
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            if not self._foreign_artifact_prefixes(con, here):
                return  # the usual case: nothing to rewrite, no write lock taken
            con.execute("BEGIN IMMEDIATE")  # one process rewrites; the next finds nothing to do
            moved = self._foreign_artifact_prefixes(con, here)
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            new = here.as_uri()
            for old in moved:
                for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                      ("logged_models", "artifact_location")):
                    if table in tables:
                        con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                    f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old) + 1, old + "/"))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()
        for folder in dict.fromkeys(moved.values()):
            _say(f"[mlflow] {db.name} was copied from {folder.parent}: artifact paths now point to {here}")

    @staticmethod
    def _foreign_artifact_prefixes(con: sqlite3.Connection, here: Path) -> dict[str, Path]:
        """``file:///.../mlartifacts`` prefix -> its folder, for the experiments stored under an
        ``mlartifacts`` folder other than ``here``."""
        try:
            locations = [loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.OperationalError:  # no tables yet: MLflow creates them on first use
            return {}
        prefixes = {}
        for location in locations:
            folder = _local_artifacts_folder(location)
            if folder is not None and folder.resolve() != here:
                prefixes[location.rsplit("/", 1)[0]] = folder  # file:///orig/mlartifacts
        return prefixes

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
            "pid": str(os.getpid()),  # with host: tells a later execution whether this run is alive
            "dpstudy_version": __version__,
            **({"launch": os.environ[LAUNCH_ID]} if os.environ.get(LAUNCH_ID) else {}),
        }


def mark_launch_killed(launch_id: str, uri: str | None = None) -> int:
    """End KILLED every run of launch ``launch_id`` that its workers ended FAILED or left RUNNING;
    how many. When a job is stopped (Slurm signals every process at once), a worker that sees its
    peer vanish before its own interruption lands takes the stop for a failure; the launch, which
    was interrupted itself, knows better."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    client = MlflowClient(tracking_uri=uri or tracking_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return 0
    runs = client.search_runs(experiments, f"tags.launch = '{launch_id}'", max_results=10000)
    stopped = [r.info.run_id for r in runs if r.info.status in ("FAILED", "RUNNING")]
    for run_id in stopped:
        with signals_held():
            client.set_terminated(run_id, status="KILLED")
    return len(stopped)


def _local_artifacts_folder(location: str | None) -> Path | None:
    """The ``mlartifacts`` folder of a ``file:`` artifact location ``.../mlartifacts/<experiment>``;
    None for any other location (a server's, a cloud bucket, MLflow's default ``mlruns``)."""
    if not location:
        return None
    parts = urllib.parse.urlsplit(location)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    from urllib.request import url2pathname  # lazily: see _http_problem

    folder = Path(url2pathname(parts.path)).parent
    return folder if folder.name == "mlartifacts" else None


def _say(line: str) -> None:
    from ..console import say

    say(line)
