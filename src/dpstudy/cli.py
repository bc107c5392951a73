"""``dpstudy <stage>``: run one pipeline stage by hand, exactly as dvc.yaml runs it; ``dpstudy
launch <stage>`` starts a torchrun stage (`dpstudy.launch`).

Errors a user can fix are printed as one line (``error: ...``) with exit status 2; anything else
is a bug and keeps its traceback. Before a stage starts (and before `launch` starts torchrun),
in this order and before its params are read:
- every folder it writes into (`OUTPUT_ARGS`: --out, download's --raw) must be writable
  (`fsutil.unwritable`: a read-only mount is refused here, not after the training);
- the tracking store must be usable (`tracking.check_reachable`), so a server that is down or
  hangs is one line within seconds, not minutes of silent retries.
A disk that fills up during a stage is one line too (`fsutil.DiskFull` where the stage writes its
files; any other "no space left" here), and the stage's runs end FAILED.

SIGTERM (what ``timeout``, Slurm and Kubernetes send) and SIGINT (Ctrl-C) end a stage the same
way: an `Interrupted` exception unwinds it, its MLflow runs end KILLED, one line
``interrupted (SIGTERM)`` is printed and the exit status is 128 + the signal (143, 130). Inside
`parallel.distributed` (train_ddp, train_adaptive) SIGTERM is that module's `Terminated` instead:
under torchrun it mostly means a peer died, and those runs end FAILED (exit status 143 too).

Help, argument errors and a refused params.yaml answer without importing torch, MLflow or
matplotlib (seconds of imports): the stages import them in ``run`` once their params are checked
(tests/test_cli_startup.py; benchmarks/cli_startup.py times it).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from . import __version__, launch
from .checkout import PACKAGE, check_own_code
from .errors import UserError
from .signals import Interrupted, Redelivery

NO_TRACKING = {"download"}  # stages that never talk to MLflow
# The stages' arguments that name folders they write into (checked before a stage starts).
OUTPUT_ARGS = ("out", "raw")


def _signals() -> Redelivery:
    """SIGTERM and SIGINT -> `Interrupted`, for the duration of one command (`signals.Redelivery`)."""
    return Redelivery(Interrupted, KeyboardInterrupt)


def _talks_to_mlflow(args: argparse.Namespace) -> bool:
    """Whether this command is about to use the tracking store: every stage but download, on rank 0
    only (torchrun workers of other ranks never log), and `launch` unless it only prints."""
    if not _rank_zero():
        return False
    if args.run is launch.run:  # `launch <stage>`: args.stage is the launched stage
        return not args.dry_run
    return args.stage not in NO_TRACKING


def _rank_zero() -> bool:
    """Whether this process writes files and logs: every process but torchrun's workers of rank > 0."""
    return os.environ.get("RANK", "0") in ("", "0")


class _ArgumentsOnly(argparse.ArgumentParser):
    """A stage's parser that raises instead of printing and exiting (`launch` reports bad arguments)."""

    def error(self, message):
        raise ValueError(message)


def _output_folders(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(option, folder) for every folder this command's stage writes into; for `launch`, the
    launched stage's, read from its passed-through arguments."""
    if args.run is launch.run:
        if args.dry_run:  # only prints
            return []
        from .stages import STAGES

        parser = _ArgumentsOnly(add_help=False)
        STAGES[args.stage].add_arguments(parser)
        try:
            args = parser.parse_args(args.stage_args)
        except ValueError:
            return []  # launch itself says what is wrong with them
    return [(f"--{name}", value) for name in OUTPUT_ARGS if (value := getattr(args, name, None))]


def check_outputs(args: argparse.Namespace) -> None:
    """Raise `UserError` (the folder, the option, why, the fix) unless every folder the command
    writes into can be written: before any work, rather than once the results are ready."""
    from .fsutil import unwritable

    for option, folder in _output_folders(args):
        problem = unwritable(folder)
        if problem:
            at, why, fix = problem
            raise UserError(
                f"output folder {folder} ({option}) cannot be written: {at} {why}: {fix}, "
                f"or pass {option} a writable folder"
            )


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(
        prog="dpstudy",
        description="Data-parallel CNN training studies (Cao & Shen 2023, Xue 2023, Lee et al. 2019), "
        "one command per DVC stage. `dvc repro` runs them all in order; run one by hand "
        "with the same arguments dvc.yaml gives it.",
    )
    parser.add_argument("--version", action="version", version=f"dpstudy {__version__} (code: {PACKAGE})")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, module in STAGES.items():
        doc = (module.__doc__ or "").strip()
        stage_parser = sub.add_parser(
            name,
            help=" ".join(doc.split("\n\n")[0].split()),
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(run=module.run)
    # Not a DVC stage: it starts one (under torchrun, on one machine or several).
    doc = (launch.__doc__ or "").strip()
    launch_parser = sub.add_parser(
        "launch",
        help=doc.split("\n\n")[0].splitlines()[0],
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launch.add_arguments(launch_parser)
    launch_parser.set_defaults(run=launch.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signals = _signals()
    signals.install()
    try:
        check_own_code()  # a copied checkout must not run the original's code (dpstudy.checkout)
        if _rank_zero():
            check_outputs(args)
        if _talks_to_mlflow(args):
            from .track.reachable import check_reachable

            check_reachable()
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk met outside the stages' own file writes (an MLflow artifact, a log).
        where = f" writing {exc.filename}" if exc.filename else ""
        folders = ", ".join(folder for _, folder in _output_folders(args))
        print(
            f"error: no space left on device{where}: free some space on the disk of {folders or 'the outputs'} "
            "or of the MLflow store, and run the stage again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as exc:
        signals.stop()
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        signals.uninstall()


if __name__ == "__main__":
    sys.exit(main())
