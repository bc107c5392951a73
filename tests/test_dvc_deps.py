"""dvc.yaml's deps cover the code each stage runs, exactly, so no code change can leave a stale
result: the static import closure of each stage (dpstudy.codebase) is its list of
src/dpstudy deps, and an edited module makes `dvc status` name exactly the stages that run it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, dvc, tracked_copy

from dpstudy.codebase import REGISTRY, SRC, closure, fingerprint, imports_of, stage_deps, stage_files

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _deps(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def test_every_stage_module_has_a_dvc_stage():
    registered = {
        p.stem
        for p in (SRC / "dpstudy" / "stages").glob("*.py")
        if p.stem != "__init__" and "def run(" in p.read_text()
    }
    assert registered == set(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name):
    """Each file of the stage's closure is a dep (as the file or a folder above it); no code dep
    is outside the closure (it would rerun the stage for changes that cannot touch its results)."""
    deps = _deps(STAGES[name])
    code_deps = {Path(d) for d in deps if d.startswith("src/")}
    needed = stage_files(name)
    missing = sorted(str(f) for f in needed if not any(f == d or d in f.parents for d in code_deps))
    extra = sorted(str(d) for d in code_deps if not any(f == d or d in f.parents for f in needed))
    assert not missing, f"dvc.yaml stage {name} runs these modules but does not depend on them: {missing}"
    assert not extra, f"dvc.yaml stage {name} depends on code it never imports: {extra}"
    # and in the one form: each room (subpackage) it enters as a folder, every other file by name
    want = stage_deps(name)
    listed = [d for d in deps if d.startswith("src/")]
    assert listed == want, f"dvc.yaml stage {name}: its code deps should read\n" + "\n".join(
        f"      - {d}" for d in want
    )
    # the installed libraries decide results too: a new lock reruns everything
    assert "requirements.lock" in deps


def test_closure_follows_imports_inside_functions_and_relative_forms(tmp_path):
    pkg = tmp_path / "dpstudy"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("def main():\n    from .stages import STAGES\n")
    (pkg / "__main__.py").write_text("from .cli import main\n")
    (pkg / "stages" / "__init__.py").write_text("from . import a, b\n")
    (pkg / "stages" / "a.py").write_text("def run():\n    import dpstudy.deep\n")
    (pkg / "stages" / "b.py").write_text("from ..other import thing\n")
    (pkg / "deep.py").write_text("from . import leaf\n")
    (pkg / "leaf.py").write_text("")
    (pkg / "other.py").write_text("thing = 1\n")
    assert imports_of("dpstudy.stages.a", tmp_path) == {"dpstudy", "dpstudy.deep"}
    a = closure(["dpstudy.__main__", "dpstudy.cli", f"{REGISTRY}.a"], tmp_path, "a")
    assert a == {
        "dpstudy",
        "dpstudy.__main__",
        "dpstudy.cli",
        "dpstudy.stages",
        "dpstudy.stages.a",
        "dpstudy.deep",
        "dpstudy.leaf",
    }
    b = closure(["dpstudy.cli", f"{REGISTRY}.b"], tmp_path, "b")
    assert "dpstudy.other" in b and "dpstudy.deep" not in b


def _committed_copy(dest: Path) -> Path:
    """A copy of the repository whose dvc.lock records the current code, params and (stand-in)
    outputs, as if the pipeline had just run, without running it: `dvc status` is then clean."""
    repo = tracked_copy(dest)
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = repo / (entry if isinstance(entry, str) else next(iter(entry)))
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("stand-in\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in").write_text("stand-in\n")
    done = dvc("commit", "--force", "--quiet", cwd=repo, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    clean = dvc("status", "--json", cwd=repo, timeout=300)
    assert clean.returncode == 0 and clean.stdout.strip() == "{}", clean.stdout + clean.stderr
    return repo


def _changed_stages(repo: Path) -> set[str]:
    import json

    status = dvc("status", "--json", cwd=repo, timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    return set(json.loads(status.stdout))


@pytest.mark.slow
def test_editing_a_module_makes_dvc_status_name_exactly_the_stages_that_run_it(tmp_path):
    """A stage depends on the folder of each subpackage it imports and on its other files one by
    one: an edit reruns exactly the stages whose closure enters that file's folder (or holds the
    file), and nothing else."""
    repo = _committed_copy(tmp_path / "repo")
    every = set(STAGES)

    def covered(path: str, stage: str) -> bool:
        return any(path == d or path.startswith(d + "/") for d in _deps(STAGES[stage]))

    modules = (
        "grid/adaptive.py",
        "evaluation.py",
        "train/graphstep.py",
        "report/render.py",
        "claims/study_a.py",
        "stages/plot.py",
    )
    runs = {m: {s for s in STAGES if covered(f"src/dpstudy/{m}", s)} for m in modules}
    # written out once, so the closure code itself is checked against what the code says
    assert runs["grid/adaptive.py"] == {"train_dp", "train_ddp", "train_adaptive"}
    assert runs["report/render.py"] == runs["claims/study_a.py"] == {"plot"}
    assert runs["stages/plot.py"] == {"plot"}
    assert runs["evaluation.py"] == {"evaluate", "plot"}
    assert runs["train/graphstep.py"] == every - {"download"}
    # dvc status on one module per distinct set of stages (each call costs seconds)
    for module in ("grid/adaptive.py", "evaluation.py", "train/graphstep.py", "claims/study_a.py"):
        expected = runs[module]
        path = repo / "src" / "dpstudy" / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        assert _changed_stages(repo) == expected, module
        path.write_bytes(original)
    assert _changed_stages(repo) == set()
    # bytecode caches beside the code do not count (.dvcignore)
    (repo / "src" / "dpstudy" / "train" / "__pycache__").mkdir(exist_ok=True)
    (repo / "src" / "dpstudy" / "train" / "__pycache__" / "engine.cpython-312.pyc").write_bytes(b"stale")
    assert _changed_stages(repo) == set()
    # a new module in a room is covered before anything imports it
    (repo / "src" / "dpstudy" / "grid" / "new.py").write_text("X = 1\n")
    assert _changed_stages(repo) == runs["grid/adaptive.py"]
    (repo / "src" / "dpstudy" / "grid" / "new.py").unlink()
    # a new lock (other library versions) reruns every stage
    lock = repo / "requirements.lock"
    lock.write_text(lock.read_text() + "# an edit\n")
    assert _changed_stages(repo) == every


def test_checkpoints_are_stamped_with_the_engines_whole_closure(tmp_path):
    """A checkpoint is reused only by the code that made it: every module the engine imports counts
    (checkpoints.py and datasets.py were missing from a hand-written list), and an edit anywhere in
    that closure gives another stamp."""
    import shutil

    from dpstudy.train import engine

    src = tmp_path / "src"
    shutil.copytree(SRC / "dpstudy", src / "dpstudy")
    assert fingerprint("dpstudy.train.engine", src) == engine.code_fingerprint()
    covered = {m.split(".")[-1] for m in closure(["dpstudy.train.engine"], src)}
    assert {"checkpoints", "datasets", "graphstep", "devicebusy", "models", "batching"} <= covered
    for module in ("train/checkpoints.py", "data/datasets.py"):
        path = src / "dpstudy" / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        assert fingerprint("dpstudy.train.engine", src) != engine.code_fingerprint(), module
        path.write_bytes(original)
    (src / "dpstudy" / "report" / "render.py").write_text("# not imported by the engine\n")
    assert fingerprint("dpstudy.train.engine", src) == engine.code_fingerprint()
