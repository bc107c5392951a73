"""Artifacts of a local store that was copied or moved, found without rewriting MLflow's tables.

MLflow records every local artifact location as an absolute path (it resolves a relative one when
the experiment is created, and has no call to change it later), so a store copied with its
checkout (``cp -a``) or moved still names the original's ``.../mlartifacts/<experiment>``. dpstudy
reads each recorded location relative to the store it is used with: a ``file:`` location under
some ``mlartifacts`` folder means the same path under the ``mlartifacts`` beside this
``mlflow.db``. So a copy never writes into the original's folder, and a moved store keeps logging.
MLflow's own client and UI still read the recorded paths: in a copy, the original's folder.
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

from .store import artifacts_folder, sqlite_path

# An experiment tag: the mlartifacts folder a copied store's artifacts were last said to go to,
# so that the notice is printed once per copy and experiment, not at every stage.
NOTED_TAG = "dpstudy.artifacts_folder"


def recorded_folder(location: str | None) -> tuple[Path, str] | None:
    """(the ``mlartifacts`` folder, the path below it) of a local ``file:`` location under an
    ``mlartifacts`` folder; None for any other (a server's, a cloud bucket, MLflow's ``mlruns``)."""
    if not location:
        return None
    parts = urllib.parse.urlsplit(location)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    from urllib.request import url2pathname  # lazily: ~35 ms, not at `dpstudy --help` time

    path = Path(url2pathname(parts.path))
    for folder in path.parents:
        if folder.name == "mlartifacts":
            return folder, path.relative_to(folder).as_posix()
    return None


def local_folder(uri: str, location: str | None) -> Path | None:
    """Where ``location`` (recorded in the store at ``uri``) lies in this checkout, when that is
    not where it says: a copied or moved store's artifacts. None where MLflow's own path is right
    (the usual case, a server, a location of someone else's making)."""
    here = artifacts_folder(uri)
    recorded = recorded_folder(location)
    if here is None or recorded is None:
        return None
    folder, below = recorded
    if folder.resolve() == here.resolve():
        return None
    return here / below


def copy_in(folder: Path, path: str | Path, artifact_path: str | None) -> None:
    """``path`` (a file, or a folder with everything in it) as an artifact under ``folder``, as
    MLflow's client would log it."""
    path = Path(path)
    target = folder / artifact_path if artifact_path else folder
    target.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, target / path.name, dirs_exist_ok=True)
    else:
        shutil.copy2(path, target / path.name)


def write_text(folder: Path, text: str, artifact_file: str) -> None:
    target = folder / artifact_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def note_copied(client, experiment_id: str, uri: str) -> str | None:
    """The one-line notice for a store whose experiment records artifacts under another checkout's
    ``mlartifacts``, the first time this store's copy uses that experiment; None otherwise."""
    experiment = client.get_experiment(experiment_id)
    place = local_folder(uri, experiment.artifact_location)
    if place is None:
        return None
    here = str(artifacts_folder(uri))
    if experiment.tags.get(NOTED_TAG) == here:
        return None
    client.set_experiment_tag(experiment_id, NOTED_TAG, here)
    original = recorded_folder(experiment.artifact_location)[0].parent
    return f"[mlflow] {sqlite_path(uri).name} was copied from {original}: its artifacts are logged into {here}"
