"""The code a command runs: the static import closure of its entry points inside src/dpstudy.

Every ``import`` and ``from ... import`` in a module counts, at any depth (imports inside
functions too), since a run may take any branch. Two users, so that no code change can leave a
stale result:

- dvc.yaml: each stage depends on `stage_deps`: the folder of every subpackage its closure enters
  (data/, train/, ...) and each of its other files (tests/test_dvc_deps.py checks the lists). Roots
  of stage ``X``: the command line that its ``cmd`` runs (``dpstudy`` -> `dpstudy.cli`, ``python -m
  dpstudy`` -> `dpstudy.__main__`, which torchrun starts in each worker) and ``dpstudy.stages.X``.
- checkpoints: `fingerprint` of the engine's closure stamps each one, and a checkpoint made by
  other code is neither resumed nor reused.

One edge is not followed: the stage registry (``dpstudy/stages/__init__.py``) imports every stage
module so that the command line can list them all in its help. That import runs only their
top-level definitions; what a stage computes is its own module's closure. The registry file itself
is in every stage's closure, so a change to it reruns them all.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]  # the folder holding the dpstudy package
PACKAGE = "dpstudy"
ENTRY = ("dpstudy.__main__", "dpstudy.cli")
REGISTRY = "dpstudy.stages"


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of module ``name`` (a package's ``__init__.py``), or None if it is no module here."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    is_package = module_file(module) is not None and module_file(module).name == "__init__.py"
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, src: Path = SRC) -> set[str]:
    """The dpstudy modules that ``module`` imports anywhere in its file, and their parent packages
    (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first)."""
    tree = ast.parse(module_file(module, src).read_text(), filename=module)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            # ``from pkg import name``: name is a submodule or an attribute of pkg
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if module_file(prefix, src) is not None:
                    found.add(prefix)
    found.discard(module)
    return found


def closure(roots: list[str], src: Path = SRC, stage: str | None = None) -> set[str]:
    """Every dpstudy module reachable from ``roots``; from the stage registry only ``stage``'s
    own module is followed (see the module docstring)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in imports_of(module, src):
            registered = imported.startswith(REGISTRY + ".") and imported.count(".") == 2
            if module == REGISTRY and registered and imported != f"{REGISTRY}.{stage}":
                continue
            todo.append(imported)
    return seen


def stage_files(stage: str, src: Path = SRC) -> set[Path]:
    """The source files stage ``stage`` runs, relative to the repository root."""
    modules = closure([*ENTRY, f"{REGISTRY}.{stage}"], src, stage)
    root = src.parent
    return {module_file(m, src).relative_to(root) for m in modules}


def stage_deps(stage: str, src: Path = SRC) -> list[str]:
    """dvc.yaml's code deps of ``stage``: each subpackage folder its closure enters (a new module
    there is covered before anything imports it), and every other file of the closure one by one
    (the package's top-level modules and the stage registry's own entries, so that editing one
    stage reruns that stage alone)."""
    deps = set()
    for path in stage_files(stage, src):
        inner = path.relative_to(Path(src.name, PACKAGE))
        if len(inner.parts) > 1 and inner.parts[0] != REGISTRY.split(".")[1]:
            deps.add(str(Path(src.name, PACKAGE, inner.parts[0])))
        else:
            deps.add(str(path))
    return sorted(deps)


def fingerprint(module: str, src: Path = SRC) -> str:
    """SHA-256 over the files of ``module``'s closure (their paths and bytes, in order)."""
    digest = hashlib.sha256()
    for name in sorted(closure([module], src)):
        path = module_file(name, src)
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
