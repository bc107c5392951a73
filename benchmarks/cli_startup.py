"""How fast the command line answers when it does no work: ``dpstudy --help``, a stage's
``--help``, an unknown option and a bad value in params.yaml, each against the floor of a bare
``python -c pass``.

Every timing is a fresh process (no module already imported), started exactly as a user starts it:
the venv's ``dpstudy`` console script (``python -m dpstudy`` where there is none). Per command the
first run is reported on its own (the coldest: files not yet in the page cache unless something else
read them; caches are never dropped, since that would disturb everything else on the machine), then
the min and median wall time of the rest, and the median CPU time (user + system, read from the
child's rusage: less sensitive than wall time to other load on a shared machine). Commands are
interleaved (A, B, C, ... A, B, C, ...) so a burst of other load hits all of them alike.

It also lists which of torch, torchvision, mlflow, matplotlib, numpy and pandas each command
imported (none should be: params are checked and help is printed before any of them is needed).

    python benchmarks/cli_startup.py [--repeats 7] [--threshold 1.0]

Ends with one line ``cli_startup: N.NNs`` (median wall time of ``dpstudy --help``), the ratio
to the interpreter's floor and whether every command's median stays under the threshold.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "torchvision", "mlflow", "matplotlib", "numpy", "pandas")
# The stages check the local sqlite store (in the temporary folder), never a server from the environment.
ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

# Runs a dpstudy command in-process (exactly as the console script does) and reports, on stderr's
# last line, which heavy modules it left imported: how the benchmark sees what a command loaded.
PROBE = """
import sys
from dpstudy.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def dpstudy_command() -> list[str]:
    """The venv's console script beside this interpreter, else ``python -m dpstudy``."""
    script = Path(sys.executable).parent / "dpstudy"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dpstudy"]


def timed(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall s, child CPU s, exit status) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def heavy_imports(args: list[str], cwd: Path) -> str:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=cwd, env=ENV, capture_output=True, text=True
    )
    lines = [line for line in probe.stderr.splitlines() if line.startswith("heavy:")]
    return (lines[-1][len("heavy:") :] or "none") if lines else "? (probe failed)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="runs per command after the first (default: 7)")
    ap.add_argument("--threshold", type=float, default=1.0, help="seconds every median should stay under")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    dpstudy = dpstudy_command()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="cli_startup-") as tmp:
        work = Path(tmp)
        # A params.yaml with one bad value: the stage must refuse it in one line, before any work.
        params = (repo / "params.yaml").read_text()
        bad = params.replace("interval_s: 0.5", "interval_s: -1", 1)
        assert bad != params, "params.yaml changed: pick another bad value"
        (work / "params.yaml").write_text(bad)
        commands = {
            "python -c pass (floor)": ([sys.executable, "-c", "pass"], None, 0),
            "dpstudy --help": ([*dpstudy, "--help"], ["--help"], 0),
            "dpstudy train_dp --help": ([*dpstudy, "train_dp", "--help"], ["train_dp", "--help"], 0),
            "dpstudy train_dp --no-such-option": (
                [*dpstudy, "train_dp", "--no-such-option"],
                ["train_dp", "--no-such-option"],
                2,
            ),
            "dpstudy train_dp (bad params.yaml)": (
                [*dpstudy, "train_dp", "--out", str(work / "out")],
                ["train_dp", "--out", str(work / "out")],
                2,
            ),
        }
        first: dict[str, float] = {}
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.repeats + 1):
            for name, (argv, _, expected) in commands.items():
                wall, cpu, rc = timed(argv, work)
                if rc != expected:
                    sys.exit(f"{name}: exit status {rc}, expected {expected}")
                if round_ == 0:
                    first[name] = wall
                else:
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        imported = {name: heavy_imports(probe, work) for name, (_, probe, _) in commands.items() if probe}

    load = os.getloadavg()
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"Python {platform.python_version()}; {' '.join(dpstudy)}"
    )
    print(f"fresh process per run; first run, then min / median of {args.repeats}; CPU = user + system")
    width = max(map(len, commands))
    print(f"{'command':<{width}}  {'first s':>8}  {'min s':>7}  {'median s':>8}  {'CPU s':>6}  heavy modules imported")
    for name in commands:
        print(
            f"{name:<{width}}  {first[name]:8.3f}  {min(walls[name]):7.3f}  {statistics.median(walls[name]):8.3f}  "
            f"{statistics.median(cpus[name]):6.3f}  {imported.get(name, '-')}"
        )
    floor = statistics.median(walls["python -c pass (floor)"])
    medians = {name: statistics.median(w) for name, w in walls.items()}
    slowest = max((n for n in commands if n.startswith("dpstudy")), key=medians.get)
    verdict = "under" if medians[slowest] < args.threshold else "NOT under"
    print(f"slowest: {slowest}, {medians[slowest]:.3f} s median: {verdict} the {args.threshold:g} s threshold")
    print(
        f"cli_startup: {medians['dpstudy --help']:.2f}s ({medians['dpstudy --help'] / floor:.1f}x python's "
        f"{floor:.2f}s floor)"
    )


if __name__ == "__main__":
    main()
