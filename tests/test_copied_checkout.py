"""A copied checkout (`cp -a`, venv included) runs its own src, or refuses in one line before any
work. The venv here is a small real one (its third-party packages come from this venv through a
.pth file), made and installed by the Makefile's own `env` rule, then copied with its checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, tracked_copy

WHERE = "import dpstudy, pathlib; print(pathlib.Path(dpstudy.__file__).parent)"


def _make(target: str, cwd: Path) -> subprocess.CompletedProcess:
    # setuptools for the editable install comes from this venv, as every other package does
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    return subprocess.run(
        ["make", "--no-print-directory", target], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A checkout with a venv that `make env` installed this checkout's src into."""
    repo = tracked_copy(tmp_path_factory.mktemp("copy") / "dpstudy")
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the lock's packages without installing them again: this venv's site-packages, after its own
    (site / "zz_lock.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (venv / ".deps").touch()  # stands for installing requirements.lock, done above
    # pip itself comes from this venv too, run by the new venv's python (so it installs there)
    pip = venv / "bin" / "pip"
    pip.write_text(f"#!{venv}/bin/python\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)
    made = _make("env", repo)
    assert made.returncode == 0, made.stdout + made.stderr
    return repo


def _where(python: Path, cwd: Path) -> Path:
    out = subprocess.run([str(python), "-c", WHERE], cwd=cwd, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _stage(checkout: Path, tmp: Path) -> subprocess.CompletedProcess:
    """A real stage, as dvc.yaml runs it: the copy's `dpstudy` script (found on its .venv/bin)."""
    return subprocess.run(
        [
            str(checkout / ".venv" / "bin" / "dpstudy"),
            "download",
            "--out",
            str(tmp / "prepared"),
            "--raw",
            str(tmp / "raw"),
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_copied_checkout_refuses_to_run_the_originals_code_then_make_env_points_it_home(original, tmp_path):
    assert _where(original / ".venv" / "bin" / "python", original) == original / "src" / "dpstudy"
    copy = tmp_path / "dpstudy2"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    # the copy's code differs from the original's (a user's edit)
    edited = copy / "src" / "dpstudy" / "names.py"
    edited.write_text(edited.read_text() + "\n# an edit in the copy\n")

    # as copied, its scripts run the original's python and import the original's src ...
    assert _where(copy / ".venv" / "bin" / "python", copy) == original / "src" / "dpstudy"
    # ... so a stage refuses, in one line, before any work
    refused = _stage(copy, tmp_path / "refused")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(copy) in lines[0] and "make env" in lines[0], refused.stderr
    assert not (tmp_path / "refused").exists()

    # `make env` (which `make repro` and `make test` run first) points the copy's venv at its own src
    made = _make("env", copy)
    assert made.returncode == 0 and "pointing its scripts at" in made.stdout, made.stdout + made.stderr
    assert _where(copy / ".venv" / "bin" / "python", copy) == copy / "src" / "dpstudy"
    head = (copy / ".venv" / "bin" / "dpstudy").read_text().splitlines()[0]
    assert head == f"#!{copy}/.venv/bin/python", head
    done = _stage(copy, tmp_path / "ran")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ran" / "prepared" / "digits.pt").is_file()

    # the original still runs its own code, and a second `make env` in the copy changes nothing
    assert _where(original / ".venv" / "bin" / "python", original) == original / "src" / "dpstudy"
    again = _make("env", copy)
    assert again.returncode == 0 and "pointing" not in again.stdout and "pip" not in again.stdout, again.stdout


def test_an_unedited_copy_runs_the_same_code_wherever_it_is_installed(original, tmp_path):
    """Same bytes, same results: a plain copy of the tracked files (as the tests' own copies of the
    repository are) may run with another checkout's identical package."""
    from dpstudy.checkout import check_own_code

    copy = tracked_copy(tmp_path / "same")
    check_own_code(copy, package=original / "src" / "dpstudy")
    check_own_code(copy / "src", package=original / "src" / "dpstudy")  # from a subfolder too
    (copy / "src" / "dpstudy" / "extra.py").write_text("")  # a new module is other code
    from dpstudy.errors import UserError

    with pytest.raises(UserError, match="make env"):
        check_own_code(copy, package=original / "src" / "dpstudy")
    check_own_code(tmp_path, package=REPO / "src" / "dpstudy")  # outside any checkout: nothing to compare
