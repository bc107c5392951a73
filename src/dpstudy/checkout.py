"""Does this process run the code of the checkout it works in?

A stage works in a checkout (dvc runs it there: the folder holding dvc.yaml) and must run that
checkout's src/dpstudy. A checkout copied or moved with its .venv (``cp -a``) would not: the venv's
scripts start the original's python and its editable install imports the original's src/. Then an
edit in the copy would never reach its results. So before any work the running package is
compared with the checkout's own src/dpstudy, file by file: the same code (a plain copy, or the
tests' copies of the tracked files) runs; other code is refused in one line naming the fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError

PACKAGE = Path(__file__).resolve().parent


def checkout_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds dvc.yaml and src/dpstudy."""
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "src" / "dpstudy" / "__init__.py").is_file():
            return folder
    return None


def _digest(package: Path) -> dict[str, str]:
    return {
        str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(package.rglob("*.py"))
    }


def check_own_code(cwd: Path | None = None, package: Path = PACKAGE) -> None:
    """Raise `UserError` if the checkout at or above ``cwd`` holds other code than ``package``."""
    root = checkout_root((cwd or Path.cwd()).resolve())
    if root is None:
        return
    own = (root / "src" / "dpstudy").resolve()
    if own == package or _digest(own) == _digest(package):
        return
    raise UserError(
        f"this checkout ({root}) would run the dpstudy code in {package}, not its own "
        f"src/dpstudy (a .venv copied or moved from another checkout?): run `make env` in "
        f"{root}, which points .venv at this checkout"
    )
