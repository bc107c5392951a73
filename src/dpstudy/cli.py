"""``dpstudy <stage>``: run one pipeline stage by hand, exactly as dvc.yaml runs it; ``dpstudy
launch <stage>`` starts a torchrun stage (`dpstudy.launch`).

Errors a user can fix are printed as one line (``error: ...``) with exit status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, launch
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(
        prog="dpstudy",
        description="Data-parallel CNN training studies (Cao & Shen 2023, Xue 2023, Lee et al. 2019), "
                    "one command per DVC stage. `dvc repro` runs them all in order; run one by hand "
                    "with the same arguments dvc.yaml gives it.",
    )
    parser.add_argument("--version", action="version", version=f"dpstudy {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, module in STAGES.items():
        doc = (module.__doc__ or "").strip()
        stage_parser = sub.add_parser(name, help=" ".join(doc.split("\n\n")[0].split()), description=doc,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(run=module.run)
    # Not a DVC stage: it starts one (under torchrun, on one machine or several).
    doc = (launch.__doc__ or "").strip()
    launch_parser = sub.add_parser("launch", help=doc.split("\n\n")[0].splitlines()[0], description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    launch.add_arguments(launch_parser)
    launch_parser.set_defaults(run=launch.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
