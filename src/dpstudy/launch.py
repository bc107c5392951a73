"""Start a torchrun stage on this machine or on several, from params.yaml and the environment.

``dpstudy launch <stage> [stage arguments]`` reads ``<stage>.nproc_per_node`` and ``<stage>.launch``
(nnodes, rdzv_endpoint, rdzv_id, max_restarts) from the stage's params file, lets the environment
override each of them for one launch (DPSTUDY_NPROC_PER_NODE, DPSTUDY_NNODES, DPSTUDY_RDZV_ENDPOINT,
DPSTUDY_RDZV_ID, DPSTUDY_MAX_RESTARTS), prints the torchrun command and replaces itself by it:

  one node, no endpoint:  torchrun --standalone --nproc-per-node P --max-restarts R -m dpstudy <stage> ...
  otherwise:              torchrun --nproc-per-node P --nnodes N --rdzv-backend c10d --rdzv-endpoint E
                                   --rdzv-id I --max-restarts R -m dpstudy <stage> ...

Every node runs the same command with the same settings; the c10d rendezvous at host:port E
(hosted by the node whose address E is) assigns the ranks, so there is no node rank to set.
With max_restarts R > 0, torchrun restarts all workers up to R times after one dies, and each
configuration resumes from its last epoch checkpoint (the launch then also sets
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, see `torchrun_env`). The stage arguments are checked with the
stage's own parser, and the whole stage (params, grids against the total process count, data,
batches against the training split) by the stage's own `plan`, before torchrun starts: a bad
setting is one line and exit status 2 here, not one traceback per worker a minute later.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Mapping

from .config import load_section
from .errors import UserError

STAGES = ("train_ddp", "train_adaptive")  # the stages that run under torchrun
# setting -> the environment variable that overrides it for one launch
ENV = {"nproc_per_node": "DPSTUDY_NPROC_PER_NODE", "nnodes": "DPSTUDY_NNODES",
       "rdzv_endpoint": "DPSTUDY_RDZV_ENDPOINT", "rdzv_id": "DPSTUDY_RDZV_ID",
       "max_restarts": "DPSTUDY_MAX_RESTARTS"}


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
    _, cfg = load_section(stage, params)
    values = {"nproc_per_node": cfg.nproc_per_node, **dataclasses.asdict(cfg.launch)}
    name = Path(params).name  # as config.py names the file in its errors
    source = {key: f"{name}: {stage}.{'' if key == 'nproc_per_node' else 'launch.'}{key}" for key in values}
    for key, var in ENV.items():
        if var in environ:
            values[key], source[key] = _parse_env(key, var, environ[var].strip()), var
    if values["rdzv_endpoint"]:
        _check_endpoint(values["rdzv_endpoint"], source["rdzv_endpoint"])
        if not values["rdzv_id"]:
            raise UserError(f"{source['rdzv_id']}: empty; a rendezvous needs a job id shared by all nodes "
                            f"(e.g. {ENV['rdzv_id']}=$SLURM_JOB_ID)")
    elif values["nnodes"] > 1:
        raise UserError(f"{source['nnodes']} is {values['nnodes']} but no rendezvous endpoint is set: set "
                        f"{ENV['rdzv_endpoint']} (or {stage}.launch.rdzv_endpoint) to host:port of the first node")
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
            raise UserError(f"nproc_per_node is gpu but no GPU is visible here: set {ENV['nproc_per_node']} "
                            "to a number of CPU processes (e.g. 2)")
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
    """``python -m torch.distributed.run ... -m dpstudy <stage> <stage_args>`` for ``launch``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(launch.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", launch.rdzv_endpoint,
                "--rdzv-id", launch.rdzv_id]
    return [*cmd, "--max-restarts", str(launch.max_restarts), "-m", "dpstudy", stage, *stage_args]


# --------------------------------------------------------------------------------------------
# The command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    p.add_argument("stage", choices=STAGES, help="the stage to start")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, metavar="...",
                   help="the stage's own arguments (--params, --data, --out), passed through")


def run(args: argparse.Namespace) -> int:
    from .stages import STAGES as MODULES

    # The stage's own parser checks its arguments now, not once per worker after the start.
    stage_parser = argparse.ArgumentParser(prog=f"dpstudy launch {args.stage}",
                                           description=f"Arguments of `dpstudy {args.stage}`, passed through.")
    MODULES[args.stage].add_arguments(stage_parser)
    stage_args = stage_parser.parse_args(args.stage_args)
    launch = settings(args.stage, stage_args.params)
    if not args.dry_run:  # every check the workers would make (a dry run only prints)
        MODULES[args.stage].plan(stage_args, world_size(launch))
    cmd, env = torchrun_command(args.stage, launch, args.stage_args), torchrun_env(launch)
    print(f"[launch] {shlex.join([*(f'{k}={v}' for k, v in env.items()), *cmd])}", flush=True)
    if args.dry_run:
        return 0
    sys.stderr.flush()
    # torchrun takes this process's place (same pid): a scheduler's signals reach it directly.
    os.execve(cmd[0], cmd, {**os.environ, **env})
    return 1  # not reached
