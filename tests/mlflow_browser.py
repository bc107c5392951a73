"""What the UI tests share: README's own `mlflow server` command on a store, and headless Chromium.

`serve` starts the server exactly as README's section "Browse the runs" says (its environment and
flags; only the store and the port replaced) on a free loopback port in a range Chromium accepts,
and stops its whole process group afterwards. `browser` and `page` are pytest fixtures (import
them into a test module): Debian's ``chromium`` under Playwright, never a Playwright download;
without it the tests skip, or fail where ``DPSTUDY_REQUIRE_BROWSER=1`` (CI, see .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
PORTS = range(15000, 16000)  # Chromium refuses some ports (e.g. 5061); none of these


def readme_browse_command() -> tuple[dict[str, str], list[str]]:
    """README's command for browsing the runs (the first ``mlflow server`` in its section "Browse
    the runs"): the environment it sets (``export``s before it, assignments in front of it) and the
    arguments after ``server``."""
    section = re.search(r"^### Browse the runs\n(.*?)(?=^#{2,3} |\Z)", README.read_text(), re.S | re.M)
    assert section, "README has no section '### Browse the runs'"
    assignment = re.compile(r"[A-Za-z_]\w*=\S*")
    for block in re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M):
        env: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                assert all(assignment.fullmatch(w) for w in words[1:]), f"README: {line}"
                env.update(w.split("=", 1) for w in words[1:])
            elif "server" in words and words[words.index("server") - 1].endswith("mlflow"):
                at = words.index("server")
                assert all(assignment.fullmatch(w) for w in words[: at - 1]), f"README: {line}"
                env.update(w.split("=", 1) for w in words[: at - 1])
                return env, words[at + 1 :]
    raise AssertionError("README's section 'Browse the runs' has no `mlflow server` command")


def replaced(args: list[str], flag: str, value: str) -> list[str]:
    assert flag in args, f"README's `mlflow server` command has no {flag}"
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def free_port() -> int:
    import socket

    for port in random.Random(os.getpid()).sample(PORTS, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {PORTS}")


def session_commands(sid: int) -> list[str]:
    """The command lines of the live processes of session ``sid`` (Linux /proc)."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _ppid, _pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            if int(session) == sid and state != "Z":
                commands.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
    return commands


@dataclass
class Server:
    url: str
    log: Path
    ready_s: float = 0.0  # from start to the first healthy /health
    processes: tuple[str, ...] = ()  # its command lines at that moment

    def log_tail(self, lines: int = 40) -> str:
        """The log's last lines, without the flood of successful requests."""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if '" 200 OK' not in line][-lines:])

    def status(self, url: str) -> int:
        """The HTTP status of a GET of ``url`` (relative to the server)."""
        try:
            with urllib.request.urlopen(urllib.parse.urljoin(self.url + "/", url), timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code


@contextlib.contextmanager
def serve(store: Path, log: Path, wait_s: float = 180) -> Iterator[Server]:
    """README's `mlflow server` command (the venv's mlflow) on the sqlite ``store``, run in its
    folder on a free loopback port; yields once /health answers."""
    port = free_port()
    readme_env, args = readme_browse_command()
    assert args[args.index("--host") + 1] == "127.0.0.1", "README's server should listen on loopback only"
    args = replaced(replaced(args, "--backend-store-uri", f"sqlite:///{store}"), "--port", str(port))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", **readme_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.monotonic()
    with open(log, "wb") as out:  # its own session: uvicorn is a child, stopped with the group
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *args],
            cwd=store.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    srv = Server(f"http://127.0.0.1:{port}", log)
    try:
        while not _healthy(srv):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{srv.log_tail()}")
            if time.monotonic() > start + wait_s:
                pytest.fail(f"mlflow server not healthy after {wait_s:.0f} s:\n{srv.log_tail()}")
            time.sleep(0.25)
        srv.ready_s, srv.processes = time.monotonic() - start, tuple(session_commands(proc.pid))
        yield srv
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthy(srv: Server) -> bool:
    try:
        return srv.status("health") == 200
    except OSError:  # refused or timed out: not up yet
        return False


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright; a skip (a failure in CI) when it is not installed."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is missing: run `make env`"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found: install it with `apt-get install chromium` (Debian)"
    if missing:
        if os.environ.get("DPSTUDY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DPSTUDY_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page in its own browser context (no cookies or local storage carried over)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


@contextlib.contextmanager
def explained(page, server: Server, tmp_path: Path):
    """Re-raise a failure with what a person would need to see: the URL, a screenshot, the server log."""
    try:
        yield
    except Exception as exc:
        shot = tmp_path / "failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(
            f"{exc}\n--- page: {page.url} (screenshot {shot})\n--- mlflow server log, last lines:\n{server.log_tail()}"
        ) from exc


def expect(locator):
    from playwright.sync_api import expect as playwright_expect  # imported late: see `browser`

    # The pages' own default wait, not expect's 5 s: on a loaded 2-core machine a chart of a run
    # with many metrics can take longer than that to draw.
    playwright_expect.set_options(timeout=30_000)
    return playwright_expect(locator)


def choose_model_training(page) -> None:
    """README's two clicks: **Model training** in the sidebar's switch (MLflow 3.17 opens every
    experiment on its GenAI overview otherwise) and the assistant panel's close button, to leave
    the tables their width. The browser keeps both in its localStorage."""
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("button", name="Close", exact=True).click()
