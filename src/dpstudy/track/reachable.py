"""Is the tracking store there? Checked by the command line before a stage starts, so that an
unreachable server or an unwritable sqlite folder is one line within seconds, not minutes of
MLflow's retries followed by a traceback."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse

from .. import __version__
from ..errors import UserError
from ..fsutil import unwritable
from .store import sqlite_path, tracking_uri

_UNSET = "unset MLFLOW_TRACKING_URI to log to the local sqlite store mlflow.db"

# The API call of the start-up check: cheap on any backend, read-only, answered by every MLflow
# server version of the 2.0 REST API.
_API_CHECK = ("POST", "/api/2.0/mlflow/experiments/search", b'{"max_results": 1}')


def check_reachable(uri: str | None = None, timeout_s: float = 5) -> None:
    """Raise `UserError` (one line: the store, why, the fix) unless the tracking store can be used.

    http(s): one GET of ``<uri>/health``, then one real API call (a search for one experiment),
    each without retries and ``timeout_s`` at most: a server whose API hangs (a stuck backend
    database) would otherwise hold the stage for MLflow's retries, minutes, before a traceback.
    Any answer below 500 counts (a login required is MLflow's to report), but 404 for /health.
    sqlite: see `_check_sqlite`. Other stores are not checked.
    """
    uri = uri or tracking_uri()
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _check_server(_without_credentials(parts), timeout_s)
    else:
        _check_sqlite(uri)


def _check_server(shown: str, timeout_s: float) -> None:
    problem = _http_problem(shown, timeout_s)
    if problem:
        raise UserError(f"MLflow tracking server {shown} is not reachable ({problem}): start it, or {_UNSET}")
    problem = _http_problem(shown, timeout_s, api=True)
    if problem:
        raise UserError(
            f"MLflow tracking server {shown} answers /health but not its API ({problem} to "
            f"{_API_CHECK[0]} {_API_CHECK[1]}): restart it or check its backend store, or {_UNSET}"
        )


def _check_sqlite(uri: str) -> None:
    """The database's folder must exist and be writable (`fsutil.unwritable`: not on a read-only
    mount, a file really creatable there; nothing is left behind), and the database itself, if
    there, writable."""
    db = sqlite_path(uri)
    if db is None:
        return
    folder = db.parent.resolve()
    cannot = unwritable(folder) if folder.is_dir() else None
    if not folder.is_dir():
        problem, fix = f"folder {folder} does not exist", "create it"
    elif cannot:
        at, why, fix = cannot
        problem = f"{at} {why}"
    elif db.exists() and not os.access(db, os.W_OK):
        problem, fix = f"{db.resolve()} is not writable", "fix its permissions"
    else:
        return
    other = _UNSET if os.environ.get("MLFLOW_TRACKING_URI") else "set MLFLOW_TRACKING_URI to another store"
    raise UserError(f"MLflow store {uri} cannot be written ({problem}): {fix}, or {other}")


def _without_credentials(parts: urllib.parse.SplitResult) -> str:
    """The URI with any user:password@ removed (it is printed, and urllib would choke on it)."""
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _http_problem(base: str, timeout_s: float, api: bool = False) -> str | None:
    """Why ``<base>/health`` (``api``: the `_API_CHECK` call) got no usable answer within
    ``timeout_s``; None if it did."""
    import urllib.request  # ~35 ms (http.client, ssl, email): not at `dpstudy --help` time

    headers = {"User-Agent": f"dpstudy/{__version__}"}
    if api:
        method, path, body = _API_CHECK
        request = urllib.request.Request(
            f"{base}{path}", data=body, method=method, headers={**headers, "Content-Type": "application/json"}
        )
    else:
        request = urllib.request.Request(f"{base}/health", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(256)
        return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and not api:  # every MLflow server answers /health: something else is there
            return "HTTP 404 for /health: not an MLflow server?"
        return None if exc.code < 500 else f"HTTP {exc.code} {exc.reason}".strip()
    except urllib.error.URLError as exc:
        return _reason(exc.reason, base, timeout_s)
    except (OSError, ValueError) as exc:  # a timeout while reading, a reset, a malformed URI
        return _reason(exc, base, timeout_s)


def _reason(reason, base: str, timeout_s: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host {urllib.parse.urlsplit(base).hostname}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__
