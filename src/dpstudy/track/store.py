"""Where the runs are stored: the tracking URI, MLflow's bounded HTTP retries, the client, and the
experiment of a study.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` with artifacts in
``<root>/mlartifacts`` beside it (``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# MLflow's HTTP client retries a failed call 7 times with exponential back-off and waits 120 s per
# try: minutes of silence per call when the server is down. These bounds apply to every call of
# every stage (set before mlflow is imported: every module of track/ imports this one first; a
# value already in the environment is kept). docker/compose.yaml and docker/kubernetes.yaml set
# the same values.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # 3 tries in all
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # about 1 s, then 2 s between them
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds per try
}
for _name, _value in HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifacts_folder(uri: str) -> Path | None:
    """The ``mlartifacts`` folder beside a local sqlite store; None for a server's store."""
    db = sqlite_path(uri)
    return None if db is None else db.parent.resolve() / "mlartifacts"


def quiet_mlflow_logs() -> None:
    # The store's first use prints schema-migration INFO lines that would drown stage output.
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_client(uri: str):
    """An `MlflowClient` on ``uri``, with MLflow's INFO chatter off."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()  # after the import: importing mlflow resets its loggers' levels
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing: its artifacts in a folder of its own
    under the ``mlartifacts`` beside a local store; a server decides for itself."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    folder = artifacts_folder(uri)
    try:
        return client.create_experiment(name, artifact_location=None if folder is None else (folder / name).as_uri())
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id
