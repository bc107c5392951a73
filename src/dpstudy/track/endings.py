"""How runs end: the final status of a block, a status written whole despite signals, and the
runs nobody else will end.

- A run's block ends FINISHED, FAILED if it raised, KILLED on an interruption (`end_status`).
- Every write of a status holds SIGTERM/SIGINT until it is done (`terminate`): an exception raised
  inside an sqlite write leaves the store locked, and the run RUNNING.
- A stage killed with no chance to clean up (kill -9, the OOM killer, a lost node) leaves its runs
  RUNNING: the next execution of that stage marks them KILLED (`end_stale_runs`), knowing a run
  is stale from its ``host`` and ``pid`` tags.
- An interrupted `dpstudy launch` marks its workers' runs KILLED (`mark_launch_killed`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import psutil

from ..fsutil import signals_held
from .store import open_client, tracking_uri

# Set by `dpstudy launch` for its workers: their runs carry it as the tag ``launch``, so that an
# interrupted launch can find them (`mark_launch_killed`).
LAUNCH_ID = "DPSTUDY_LAUNCH_ID"

OPEN_RUNS: set[str] = set()  # runs this process has started and not yet ended


def end_status(exc_type: type[BaseException] | None) -> str:
    """MLflow's final status for a block that ended with ``exc_type`` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


def create(client, experiment_id: str, name: str, tags: Mapping[str, object]) -> str:
    """A new RUNNING run's id. SIGTERM/SIGINT are held until its id is known and it is among this
    process's open runs: a signal landing in between would leave a run nobody ends."""
    with signals_held():
        run_id = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}).info.run_id
        OPEN_RUNS.add(run_id)
    return run_id


def terminate(client, run_id: str, status: str) -> None:
    """Record a run's final status without being cut short by SIGTERM/SIGINT: when a DDP peer
    dies, torchrun's SIGTERM often lands while the failure is being recorded. A signal that
    arrives during the write is held and handed to the usual handler right after it."""
    OPEN_RUNS.discard(run_id)
    with signals_held():
        client.set_terminated(run_id, status=status)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (a killed child not yet
    reaped by its parent still exists)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it exists
        return True


def is_stale(run_id: str, tags: Mapping[str, str], host: str) -> bool:
    """A RUNNING run nobody will end: started on this host by a process that no longer exists (or
    by a version of dpstudy that did not record its process id)."""
    if tags.get("host") != host:
        return False  # another machine's run: its state cannot be known from here
    try:
        pid = int(tags["pid"])
    except (KeyError, ValueError):
        return True
    if pid <= 0:
        return True
    if pid == os.getpid():
        # Not one of this process's own open runs: the pid is a reused one (a container's
        # processes get the same small pids on every start).
        return run_id not in OPEN_RUNS
    return not pid_alive(pid)


def end_stale_runs(client, experiment_id: str, stage: str) -> int:
    """Mark KILLED the RUNNING runs of ``stage`` that a process killed without warning left
    behind on this host; how many. A live run, here or elsewhere, is left alone."""
    host = platform.node()
    quoted = stage.replace("'", "\\'")
    running = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.dvc_stage = '{quoted}'", max_results=10000
    )
    stale = [r.info.run_id for r in running if is_stale(r.info.run_id, r.data.tags, host)]
    for run_id in stale:
        terminate(client, run_id, "KILLED")
    return len(stale)


def mark_launch_killed(launch_id: str, uri: str | None = None) -> int:
    """End KILLED every run of launch ``launch_id`` that its workers ended FAILED or left RUNNING;
    how many. When a job is stopped (Slurm signals every process at once), a worker that sees its
    peer vanish before its own interruption lands takes the stop for a failure; the launch, which
    was interrupted itself, knows better."""
    client = open_client(uri or tracking_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return 0
    runs = client.search_runs(experiments, f"tags.launch = '{launch_id}'", max_results=10000)
    stopped = [r.info.run_id for r in runs if r.info.status in ("FAILED", "RUNNING")]
    for run_id in stopped:
        terminate(client, run_id, "KILLED")
    return len(stopped)
