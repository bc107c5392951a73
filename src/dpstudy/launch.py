"""Start a torchrun stage on this machine or on several, from params.yaml and the environment.

``dpstudy launch <stage> [stage arguments]`` reads ``<stage>.nproc_per_node`` and ``<stage>.launch``
(nnodes, rdzv_endpoint, rdzv_id, max_restarts) from the stage's params file, lets the environment
override each of them for one launch (DPSTUDY_NPROC_PER_NODE, DPSTUDY_NNODES, DPSTUDY_RDZV_ENDPOINT,
DPSTUDY_RDZV_ID, DPSTUDY_MAX_RESTARTS), prints the torchrun command and runs it in this process
(the torchrun agent keeps this pid: a scheduler's signals reach it directly):

  one node, no endpoint:  torchrun --local-addr 127.0.0.1 --nproc-per-node P --standalone
                                   --max-restarts R -m dpstudy <stage> ...
  otherwise:              torchrun [--local-addr 127.0.0.1 if one node] --nproc-per-node P --nnodes N
                                   --rdzv-backend c10d --rdzv-endpoint E --rdzv-id I --max-restarts R
                                   -m dpstudy <stage> ...

Every node runs the same command with the same settings; the c10d rendezvous at host:port E
(hosted by the node whose address E is) assigns the ranks, so there is no node rank to set.
With max_restarts R > 0, torchrun restarts all workers up to R times after one dies, and each
configuration resumes from its last epoch checkpoint (the launch then also sets
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, see `torchrun_env`). The stage arguments are checked with the
stage's own parser, and the whole stage (params, grids against the total process count, data,
batches against the training split) by the stage's own `plan`, before torchrun starts: a bad
setting is one line and exit status 2 here, not one traceback per worker a minute later.

Faults, each one line from the launch instead of minutes of waiting or a traceback per process:
- SIGTERM (a scheduler, ``timeout``) or SIGINT (Ctrl-C) sent to the launch: torchrun stops every
  worker as Ctrl-C stops a plain stage (SIGINT to each worker's process group, so their MLflow runs
  end KILLED and their epoch checkpoints stay for the next launch to resume from), then the launch
  prints ``interrupted (SIGTERM)`` and exits with 128 + the signal (143, 130). The workers know
  they run under a launch (DPSTUDY_LAUNCHED, see `parallel.distributed`) and leave that line to it.
  Restarts are not spent on it: an interrupted launch ends.
- A one-node job meets on loopback (``--local-addr 127.0.0.1``: the address the workers get as
  MASTER_ADDR), so it runs where this machine's hostname does not resolve (a container whose
  hostname is missing from /etc/hosts), instead of c10d waiting minutes for that name.
- A rendezvous on another node that cannot be reached (its name does not resolve, or nothing
  accepts connections at E) is refused with exit status 2 once DPSTUDY_RDZV_WAIT_S seconds (default
  20, to let that node start) have passed, rather than after c10d's minutes of retries. The node
  whose own address E is hosts the store, so there it is not waited for (`dpstudy.rendezvous`).
- A multi-node launch on a machine whose hostname does not resolve (c10d looks it up to decide
  which node hosts the store) is refused in one line too.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from .errors import UserError
from .rendezvous import check_rendezvous, wait_seconds
from .signals import Redelivery

STAGES = ("train_ddp", "train_adaptive")  # the stages that run under torchrun
# setting -> the environment variable that overrides it for one launch
ENV = {
    "nproc_per_node": "DPSTUDY_NPROC_PER_NODE",
    "nnodes": "DPSTUDY_NNODES",
    "rdzv_endpoint": "DPSTUDY_RDZV_ENDPOINT",
    "rdzv_id": "DPSTUDY_RDZV_ID",
    "max_restarts": "DPSTUDY_MAX_RESTARTS",
}
# Set for the workers of a launch: the launch itself reports an interruption (`parallel.distributed`).
LAUNCHED = "DPSTUDY_LAUNCHED"
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Launch:
    """The torchrun settings of one launch (params.yaml, then the environment)."""

    nproc_per_node: int | str
    nnodes: int
    rdzv_endpoint: str
    rdzv_id: str
    max_restarts: int


def settings(stage: str, params: str, environ: Mapping[str, str] = os.environ) -> Launch:
    """The stage's launch settings: its params section (validated), then each DPSTUDY_* override."""
    from .config import load_section  # pydantic: not for `dpstudy --help`

    _, cfg = load_section(stage, params)
    values = {"nproc_per_node": cfg.nproc_per_node, **dataclasses.asdict(cfg.launch)}
    name = Path(params).name  # as dpstudy.config names the file in its errors
    source = {key: f"{name}: {stage}.{'' if key == 'nproc_per_node' else 'launch.'}{key}" for key in values}
    for key, var in ENV.items():
        if var in environ:
            values[key], source[key] = _parse_env(key, var, environ[var].strip()), var
    if values["rdzv_endpoint"]:
        _check_endpoint(values["rdzv_endpoint"], source["rdzv_endpoint"])
        if not values["rdzv_id"]:
            raise UserError(
                f"{source['rdzv_id']}: empty; a rendezvous needs a job id shared by all nodes "
                f"(e.g. {ENV['rdzv_id']}=$SLURM_JOB_ID)"
            )
    elif values["nnodes"] > 1:
        raise UserError(
            f"{source['nnodes']} is {values['nnodes']} but no rendezvous endpoint is set: set "
            f"{ENV['rdzv_endpoint']} (or {stage}.launch.rdzv_endpoint) to host:port of the first node"
        )
    return Launch(**values)


def _parse_env(key: str, var: str, text: str):
    if key == "rdzv_endpoint" or key == "rdzv_id":
        return text
    if key == "nproc_per_node" and text == "gpu":
        return text
    minimum = 0 if key == "max_restarts" else 1
    allowed = f"an integer >= {minimum}" + (" or gpu" if key == "nproc_per_node" else "")
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{var}={text!r}: expected {allowed}") from None
    if value < minimum:
        raise UserError(f"{var}={text!r}: expected {allowed}")
    return value


def _check_endpoint(endpoint: str, where: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not (sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(f"{where}: expected host:port of the rendezvous (e.g. node01:29400), got {endpoint!r}")


def world_size(launch: Launch) -> int:
    """How many processes the launch starts in all (``gpu``: one per GPU visible here)."""
    per_node = launch.nproc_per_node
    if per_node == "gpu":
        import torch

        per_node = torch.cuda.device_count()
        if per_node == 0:
            raise UserError(
                f"nproc_per_node is gpu but no GPU is visible here: set {ENV['nproc_per_node']} "
                "to a number of CPU processes (e.g. 2)"
            )
    return int(per_node) * launch.nnodes


def torchrun_env(launch: Launch, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Variables torchrun needs beyond the caller's environment (a value already set is kept).

    With restarts, each agent must give the restarted workers a fresh store: by default torchrun
    (2.5 and later) lets every attempt's workers share the agent's rendezvous store, where a
    restarted worker can read the dead attempt's addresses and then fail or hang connecting to
    them (pytorch/pytorch#135712, #167288; seen with torch 2.14 and gloo here). With
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, torch's own switch, each attempt's rank 0 hosts a new one.
    """
    extra = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if launch.max_restarts > 0 else {}
    return {k: v for k, v in extra.items() if k not in environ}


def torchrun_command(stage: str, launch: Launch, stage_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m dpstudy <stage> <stage_args>`` for ``launch``.

    A one-node job is all on this machine: its workers meet on loopback (``--local-addr``, which
    torchrun hands them as MASTER_ADDR instead of this machine's fully qualified hostname, a name
    that need not resolve, e.g. in a container missing from its own /etc/hosts)."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if launch.nnodes == 1:
        cmd += ["--local-addr", LOOPBACK]
    cmd += ["--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += [
            "--nnodes",
            str(launch.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            launch.rdzv_endpoint,
            "--rdzv-id",
            launch.rdzv_id,
        ]
    return [*cmd, "--max-restarts", str(launch.max_restarts), "-m", "dpstudy", stage, *stage_args]


def _endpoint_source(stage: str, params: str, environ: Mapping[str, str] = os.environ) -> str:
    var = ENV["rdzv_endpoint"]
    return var if var in environ else f"{Path(params).name}: {stage}.launch.rdzv_endpoint"


# --------------------------------------------------------------------------------------------
# torchrun in this process, SIGTERM and SIGINT


def _interruption(exc_type: type[Exception]) -> Redelivery:
    """SIGTERM/SIGINT while torchrun runs here: the exception torchrun's agent stops its workers
    on, with SIGINT as the signal it sends them (what the workers take as "interrupted": their
    runs end KILLED, a DataLoader worker leaves quietly), whichever of the two arrived; redelivered
    until it has reached `run_torchrun` (`signals.Redelivery`)."""
    return Redelivery(
        lambda signum: exc_type(f"interrupted ({signal.Signals(signum).name})", sigval=signal.SIGINT), exc_type
    )


class _ShutdownNoise(logging.Filter):
    """Drops torchrun's account of a shutdown this launch asked for (after an interruption only)."""

    MESSAGES = ("Received %s death signal, shutting down workers", "Sending process %s closing signal %s")

    def __init__(self, interruption: Redelivery):
        super().__init__()
        self.interruption = interruption

    def filter(self, record: logging.LogRecord) -> bool:
        return self.interruption.signum is None or record.msg not in self.MESSAGES


def run_torchrun(cmd: list[str], env: Mapping[str, str]) -> int:
    """Run ``cmd`` (``python -m torch.distributed.run ...``) in this process; its exit status.

    torchrun handles SIGTERM and SIGINT itself by default (a traceback and status 1); here they are
    left to `_Interruption` (torchrun keeps its other signals, SIGHUP and SIGQUIT by default).
    A worker's failure is torchrun's own report of it, without the traceback around it."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from .track.endings import LAUNCH_ID

    os.environ.update(env)
    os.environ[LAUNCHED] = "1"
    os.environ[LAUNCH_ID] = launch_id = uuid.uuid4().hex
    args = torchrun.parse_args(cmd[3:])
    if hasattr(args, "signals_to_handle"):  # torch >= 2.8
        kept = [s for s in args.signals_to_handle.split(",") if s.strip() not in ("", "SIGTERM", "SIGINT")]
        args.signals_to_handle = ",".join(kept) or "SIGHUP"
    interruption = _interruption(SignalException)
    noise = _ShutdownNoise(interruption)
    loggers = [
        logging.getLogger(f"torch.distributed.elastic.{name}") for name in ("agent.server.api", "multiprocessing.api")
    ]
    for logger in loggers:
        logger.addFilter(noise)
    interruption.install()
    try:
        torchrun.run(args)
        code = 0
    except ChildFailedError as exc:
        if interruption.signum is None:
            print(str(exc), file=sys.stderr, flush=True)
        code = 1
    except BaseException:
        if interruption.signum is None:
            raise
        code = 0  # replaced below
    finally:
        interruption.uninstall()
        for logger in loggers:
            logger.removeFilter(noise)
    if interruption.signum is not None:  # however torchrun ended, the launch was interrupted
        _runs_killed(launch_id)
        print(f"interrupted ({signal.Signals(interruption.signum).name})", file=sys.stderr, flush=True)
        return 128 + interruption.signum
    return code


def _runs_killed(launch_id: str) -> None:
    """The workers' runs end KILLED whatever each worker made of the stop (`mark_launch_killed`).
    A second signal meanwhile is ignored (the launch is stopping already); a store that cannot be
    read leaves the runs as the workers ended them, and the one line about the interruption comes
    all the same."""
    from .track.endings import mark_launch_killed

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        mark_launch_killed(launch_id)
    except Exception:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------------------------
# The command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    p.add_argument("stage", choices=STAGES, help="the stage to start")
    p.add_argument(
        "stage_args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the stage's own arguments (--params, --data, --out), passed through",
    )


def run(args: argparse.Namespace) -> int:
    from .stages import STAGES as MODULES

    # The stage's own parser checks its arguments now, not once per worker after the start.
    stage_parser = argparse.ArgumentParser(
        prog=f"dpstudy launch {args.stage}", description=f"Arguments of `dpstudy {args.stage}`, passed through."
    )
    MODULES[args.stage].add_arguments(stage_parser)
    stage_args = stage_parser.parse_args(args.stage_args)
    launch = settings(args.stage, stage_args.params)
    if not args.dry_run:  # every check the workers would make (a dry run only prints)
        wait_s = wait_seconds() if launch.rdzv_endpoint else 0.0
        MODULES[args.stage].plan(stage_args, world_size(launch))
        if launch.rdzv_endpoint:  # last: the node hosting it has had the time of its own checks to start
            check_rendezvous(launch.rdzv_endpoint, _endpoint_source(args.stage, stage_args.params), wait_s)
    cmd, env = torchrun_command(args.stage, launch, args.stage_args), torchrun_env(launch)
    print(f"[launch] {shlex.join([*(f'{k}={v}' for k, v in env.items()), *cmd])}", flush=True)
    if args.dry_run:
        return 0
    sys.stderr.flush()
    return run_torchrun(cmd, env)
