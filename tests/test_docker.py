"""The container and cluster recipes, checked without a Docker engine: the Dockerfile (hadolint, the
base matching the locked torch, installs through the Makefile), .dockerignore, docker/snapshot.sh and
docker/entrypoint.sh run for real on a build-context copy (as a uid without a passwd entry where
this runs as root), the compose file's MLflow server run for real, the Slurm script run against
stand-in srun/scontrol, the Kubernetes manifest's wiring through the real `dpstudy launch`, `make
image` / `make image-test` and CI's call of it, and the Docker commands of docs/ against all of them.
The image itself is built and run by `make image-test` (docker/image_test.sh), not here."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent  # the venv: dpstudy, dvc, mlflow, hadolint
DOCKER = REPO / "docker"
LAUNCH_VARS = {
    "DPSTUDY_NPROC_PER_NODE",
    "DPSTUDY_NNODES",
    "DPSTUDY_RDZV_ENDPOINT",
    "DPSTUDY_RDZV_ID",
    "DPSTUDY_MAX_RESTARTS",
}


# --------------------------------------------------------------------------------------------
# Readers


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        buf = f"{buf} {text}" if buf else text
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    """ARG defaults (a bare `ARG NAME` after FROM only brings the default into the stage)."""
    return dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)


def workdir() -> str:
    return [a for i, a in dockerfile() if i == "WORKDIR"][-1]


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(re-include?, regex) per .dockerignore line; patterns cleaned as Docker does."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            include = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!")).lstrip("/")
            regex = re.sub(
                r"\\\*\\\*/|\\\*\\\*|\\\*|\\\?",
                lambda m: {r"\*\*/": "(?:.*/)?", r"\*\*": ".*", r"\*": "[^/]*", r"\?": "[^/]"}[m.group()],
                re.escape(pattern),
            )
            rules.append((include, re.compile(regex)))
    return rules


def excluded(rel: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    candidates = [rel, *(str(p) for p in PurePosixPath(rel).parents if str(p) != ".")]
    verdict = False
    for include, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not include
    return verdict


def build_context(dest: Path) -> Path:
    """What `COPY . .` puts in the image: the work tree less what .dockerignore keeps out."""
    rules = dockerignore_rules()
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO)
        dirs[:] = [
            d
            for d in dirs
            if not excluded((rel_root / d).as_posix(), rules)
            or any(inc and r.pattern.startswith(re.escape((rel_root / d).as_posix() + "/")) for inc, r in rules)
        ]
        for name in files:
            rel = (rel_root / name).as_posix()
            if not excluded(rel, rules):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)
    return dest


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split("\0") if f and (REPO / f).exists()]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def kubernetes() -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all((DOCKER / "kubernetes.yaml").read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def one(manifest: dict, kind: str) -> tuple[str, dict]:
    ((name, doc),) = [(n, d) for (k, n), d in manifest.items() if k == kind]
    return name, doc


def dvc_cmd(stage: str) -> list[str]:
    return shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "MLFLOW_", "DPSTUDY_", "SLURM_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


# --------------------------------------------------------------------------------------------
# Commands: every command a recipe or the README runs must be one the tools accept


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` is a dpstudy, dvc or mlflow command that tool's own parser accepts."""
    quiet = contextlib.ExitStack()
    err = quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    with quiet:
        if argv[0] == "dpstudy":
            from dpstudy.cli import build_parser

            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as exc:  # --help exits 0; a bad command exits 2
                assert exc.code == 0, f"{shlex.join(argv)}: {err.getvalue()}"
        elif argv[0] == "dvc":
            from dvc.cli import DvcParserError, parse_args

            try:
                parse_args(argv[1:])
            except DvcParserError:
                pytest.fail(f"{shlex.join(argv)}: {err.getvalue()}")
        elif argv[0] == "mlflow":
            import click
            from mlflow.cli import cli

            command = cli.get_command(click.Context(cli), argv[1])  # knows aliases (ui = server)
            assert command is not None, f"{shlex.join(argv)}: no such mlflow command"
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            assert [a for a in argv[2:] if a.startswith("-") and a.split("=")[0] not in known] == [], shlex.join(argv)
        else:
            pytest.fail(f"{shlex.join(argv)}: not a dpstudy, dvc or mlflow command")
    if argv[0] == "dvc" and "-S" in argv:  # dvc exp run -S key=value: a key of params.yaml, a value it takes
        key, _, value = option(argv, "-S").partition("=")
        from dpstudy.config import PRESETS

        assert key == "preset" and key in yaml.safe_load((REPO / "params.yaml").read_text()) and value in PRESETS


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile_and_does_find_a_bad_one(tmp_path):
    hadolint = BIN / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    caught = subprocess.run([str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert caught.returncode != 0 and "DL3006" in caught.stdout and "DL3015" in caught.stdout


def test_base_image_is_the_cuda_runtime_of_the_locked_torch_build():
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^torch==2\.14\.1\s*$", lock, re.M), "the torch pin moved: check the base image"
    runtime = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", lock, re.M)
    froms = [a for i, a in dockerfile() if i == "FROM"]
    assert froms == ["${BASE_IMAGE}"]  # a build-arg: make image-test builds on a Debian stand-in
    base = dockerfile_args()["BASE_IMAGE"]
    tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu24\.04", base)
    assert tag, f"expected an nvidia/cuda runtime tag, got {base}"
    assert tag.groups()[:2] == runtime.groups(), f"{base} vs nvidia-cuda-runtime {runtime.group(0)}"
    # The variables the NVIDIA Container Toolkit reads, as nvidia/cuda sets them, so that a plain
    # ubuntu:24.04 base (torch's wheels carry the CUDA libraries) sees the GPUs too.
    env = " ".join(a for i, a in dockerfile() if i == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_dockerfile_installs_through_the_makefile_targets_that_read_the_lock():
    steps = dockerfile()
    runs = [a for i, a in steps if i == "RUN"]
    makes = [m for a in runs for m in re.findall(r"(?:^|&&)\s*(make [^&]+?)\s*(?=&&|$)", a)]
    assert makes == ["make deps VENV=/opt/venv", "make env VENV=/opt/venv"]
    assert not any("pip install" in a or "requirements" in a for a in runs)
    copy_lock = steps.index(("COPY", "Makefile requirements.lock ./"))
    # the Makefile includes docker/image.mk: without it `make deps` stops before reading the lock
    copy_mk = steps.index(("COPY", "docker/image.mk docker/"))
    assert max(copy_lock, copy_mk) < next(n for n, (i, a) in enumerate(steps) if "make deps" in a)
    includes = re.findall(r"^-?include (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert includes == ["docker/image.mk"]
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "VENV=/opt/venv" in env and "PATH=/opt/venv/bin:$PATH" in env
    # ... and those targets are the ones `make test` and CI use: uv, pinned by the lock, installs it.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^deps: \$\(VENV\)/\.deps$", makefile, re.M)
    assert re.search(
        r"^\$\(VENV\)/\.deps: requirements\.lock\n(?:\t.*\n)*\t\$\(BIN\)/uv pip install .*-r requirements\.lock$",
        makefile,
        re.M,
    )
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^uv==[\d.]+$", lock, re.M) and "UV_NO_CACHE=1" in env  # no 6 GB cache in the image
    assert re.search(r"^env: \$\(VENV\)/\.installed$", makefile, re.M)
    assert re.search(r"^test: env plots-assets lint$", makefile, re.M)  # + vega for dvc plots show offline, + ruff


def test_dockerfile_user_workdir_labels_and_default_command():
    steps = dockerfile()
    args = dockerfile_args()
    user = [a for i, a in steps if i == "USER"][-1]
    uid, gid = (args[v.strip("${}")] for v in user.split(":"))
    assert uid.isdigit() and int(uid) != 0 and int(gid) != 0, f"USER {user}"
    assert workdir() == "/workspace/dpstudy"
    labels = dict(
        re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', " ".join(a for i, a in steps if i == "LABEL"))
    )
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == "${VCS_REF}"
    assert labels["org.opencontainers.image.base.name"] == "${BASE_IMAGE}"
    assert {"org.opencontainers.image.title", "org.opencontainers.image.description"} <= set(labels)
    # A new VCS_REF re-runs every RUN after its ARG: it must come after the dependency layers.
    assert steps.index(("ARG", "VCS_REF=unknown")) > max(n for n, (i, a) in enumerate(steps) if "make " in a)
    # The image's own copy gets its snapshot commit at build time, as the image's user, after the
    # revision is known; the entry point never commits.
    snapshot = steps.index(("RUN", 'docker/snapshot.sh "${VCS_REF}"'))
    assert snapshot > steps.index(("ARG", "VCS_REF=unknown")) and snapshot > steps.index(("USER", user))
    entry = yaml.safe_load([a for i, a in steps if i == "ENTRYPOINT"][-1])
    assert entry == ["/usr/bin/tini", "--", "/usr/local/bin/dpstudy-entrypoint"]
    assert any(
        "install -m 755 docker/entrypoint.sh /usr/local/bin/dpstudy-entrypoint" in a for i, a in steps if i == "RUN"
    )
    cmd = yaml.safe_load([a for i, a in steps if i == "CMD"][-1])
    assert cmd == ["dvc", "exp", "run", "-S", "preset=gpu"]
    check_command(cmd)


def pipeline_outputs() -> list[str]:
    """dvc.lock and every path a dvc.yaml stage writes (outs, metrics, plots files)."""
    paths = ["dvc.lock"]
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            paths += [next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage.get(key, [])]
    return paths


def is_pipeline_output(rel: str, outputs: list[str]) -> bool:
    return any(rel == out or rel.startswith(out.rstrip("/") + "/") for out in outputs)


def test_dockerignore_keeps_data_stores_and_caches_out_and_every_tracked_file_in():
    rules = dockerignore_rules()
    outputs = pipeline_outputs()
    # Every tracked file enters the build, except what the pipeline writes: README asks users to
    # commit dvc.lock and the results/*/metrics.json files, and the image rebuilds those itself
    # (a lock whose outputs are not in the image would make its `dvc exp run` fail).
    assert [f for f in tracked_files() if excluded(f, rules) and not is_pipeline_output(f, outputs)] == []
    assert is_pipeline_output("results/train_dp/metrics.json", outputs) and is_pipeline_output("dvc.lock", outputs)
    assert not is_pipeline_output("src/dpstudy/cli.py", outputs) and not is_pipeline_output("params.yaml", outputs)
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "data/prepared/digits.pt",
        "data/raw/train.gz",
        "results/train_dp/metrics.json",
        "mlflow.db",
        "mlartifacts/1/a/model.pt",
        "mlruns/0/meta.yaml",
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/tmp/lock",
        ".dvc/config.local",
        "dvc_plots/index.html",
        "src/dpstudy/__pycache__/cli.cpython-312.pyc",
        "src/dpstudy.egg-info/PKG-INFO",
        ".pytest_cache/v",
    ):
        assert excluded(path, rules), f"{path} would be sent to the build"


# --------------------------------------------------------------------------------------------
# The build-time snapshot and the entry point, for real, outside Docker


def entrypoint(cwd: Path, *cmd: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    extra = {"PATH": path} if path else {}
    return subprocess.run(
        [str(DOCKER / "entrypoint.sh"), *cmd],
        cwd=cwd,
        env={**clean_env(**env), **extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


def git_in(cwd: Path, *args: str, home: Path) -> str:
    return subprocess.run(
        ["git", "-c", f"safe.directory={cwd}", *args],
        cwd=cwd,
        env=clean_env(HOME=str(home)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def small_clone(repo: Path, home: Path) -> Path:
    """A git repository with one commit of params.yaml, dvc.yaml and .gitignore (no identity kept)."""
    for rel in ("params.yaml", "dvc.yaml", ".gitignore"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, repo / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "host"]):
        subprocess.run([*git, *step], cwd=repo, check=True, env=clean_env(HOME=str(home)))
    return repo


@pytest.mark.slow
def test_snapshot_commits_the_build_context_and_the_entrypoint_runs_experiment_after_experiment(tmp_path):
    ctx = build_context(tmp_path / "workspace")
    assert not (ctx / ".git").exists() and not (ctx / "mlflow.db").exists() and (ctx / "dvc.yaml").is_file()
    home = tmp_path / "home"  # no git identity in it, none in the environment (clean_env drops GIT_*)
    home.mkdir()
    dvc_run = ("dvc", "exp", "run", "-S", "preset=quick", "download")  # the image's CMD, one stage
    # Without a repository DVC cannot run experiments ...
    bare = subprocess.run(
        [str(BIN / "dvc"), *dvc_run[1:]],
        cwd=ctx,
        env=clean_env(HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bare.returncode != 0
    # ... and the entry point gives it none: a tree without .git (a mounted export) is refused in one
    # line naming the fix, and left as it was (no `git init` in the user's folder).
    refused = entrypoint(ctx, *dvc_run, HOME=str(home))
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused
    assert "git clone" in refused.stderr and not (ctx / ".git").exists()

    # The build-time snapshot (Dockerfile: `RUN docker/snapshot.sh "${VCS_REF}"`): one commit ...
    def snap():
        return subprocess.run(
            [str(DOCKER / "snapshot.sh"), "abc123"],
            cwd=ctx,
            env=clean_env(HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = snap()
    assert made.returncode == 0, made.stderr
    assert git_in(ctx, "rev-list", "--count", "HEAD", home=home) == "1"
    assert "source revision: abc123" in git_in(ctx, "log", "-1", "--format=%s", home=home)
    assert git_in(ctx, "status", "--porcelain", home=home) == ""  # every file of the context is in it
    # ... never over an existing repository.
    again = snap()
    assert again.returncode == 2 and git_in(ctx, "rev-list", "--count", "HEAD", home=home) == "1"
    committed_params = (ctx / "params.yaml").read_bytes()
    # Experiments in a row with no git identity configured anywhere. The first (-S preset=quick, the
    # value already there) leaves params.yaml byte-identical; a value that changes it (as the image's
    # `-S preset=gpu` does) leaves a modified tracked file, which the next `dvc exp run` stashes: a
    # commit that needs an identity ("Git user name and email must be configured").
    ran = entrypoint(ctx, *dvc_run, HOME=str(home))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (ctx / "data" / "prepared" / "digits.pt").is_file()
    assert (ctx / "params.yaml").read_bytes() == committed_params  # DVC's rewrite of the same value is exact
    for n in (2, 3):
        ran = entrypoint(ctx, "dvc", "exp", "run", "-S", "download.timeout_s=61", "download", HOME=str(home))
        assert ran.returncode == 0, f"run {n}: {ran.stdout}{ran.stderr}"
    assert git_in(ctx, "status", "--porcelain", "--untracked-files=no", home=home) == "M params.yaml"
    assert len(git_in(ctx, "for-each-ref", "refs/exps", home=home).splitlines()) >= 2, "no experiments recorded"
    # The identity lived in the environment: no config file got one; HOME's .gitconfig only lists
    # the work tree as safe.
    for config in (ctx / ".git" / "config", home / ".gitconfig"):
        assert "[user]" not in config.read_text(), config
    assert str(ctx) in git_in(ctx, "config", "--global", "--get-all", "safe.directory", home=home).splitlines()
    # A start with an unwritable HOME (docker run --user <unknown uid>) gets one of its own.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    moved = entrypoint(ctx, "git", "rev-list", "--count", "HEAD", HOME="/nonexistent/home", TMPDIR=str(tmp))
    assert moved.returncode == 0 and moved.stdout.strip() == "1", moved.stderr
    assert str(ctx) in (tmp / "dpstudy-home" / ".gitconfig").read_text()


def test_entrypoint_names_a_uid_without_passwd_entry_and_a_missing_git_identity(tmp_path):
    """`docker run --user 4242:4242`: no passwd entry (Python's getpass.getuser() would fail, so DVC
    did: "getpwuid(): uid not found") and no git identity. An `id` stand-in plays that uid."""
    home = tmp_path / "home"
    home.mkdir()
    repo = small_clone(tmp_path / "checkout", home)
    stub = tmp_path / "bin"
    stub.mkdir()
    real_id = shutil.which("id")
    (stub / "id").write_text(
        f'#!/bin/sh\ncase "$*" in\n  -u|-g) echo 4242 ;;\n'
        f'  -un) echo "id: cannot find name for user ID 4242" >&2; exit 1 ;;\n'
        f'  *) exec {real_id} "$@" ;;\nesac\n'
    )
    (stub / "id").chmod(0o755)
    path = f"{stub}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    show = (
        "python",
        "-c",
        "import getpass, os; print(getpass.getuser(), *(os.environ.get(k) for k in "
        "('LOGNAME', 'GIT_AUTHOR_NAME', 'GIT_AUTHOR_EMAIL', 'GIT_COMMITTER_NAME', 'GIT_COMMITTER_EMAIL')), sep='|')",
    )
    unset = {k: "" for k in ("USER", "LOGNAME")}
    env = {k: v for k, v in clean_env(HOME=str(home)).items() if k not in unset}
    ran = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), *show],
        cwd=repo,
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().split("|") == [
        "uid4242",
        "uid4242",
        "dpstudy container (uid4242)",
        "uid4242@dpstudy.invalid",
        "dpstudy container (uid4242)",
        "uid4242@dpstudy.invalid",
    ]
    # A name and identity of the user's own win: -e USER=..., -e GIT_AUTHOR_NAME=..., or git config.
    ran = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), *show],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PATH": path, "USER": "ada", "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@x"},
    )
    assert ran.stdout.strip().split("|") == ["ada", "ada", "Ada", "ada@x", "Ada", "ada@x"], ran.stderr
    git_in(repo, "config", "user.name", "Repo Owner", home=home)
    git_in(repo, "config", "user.email", "owner@x", home=home)
    ran = entrypoint(repo, *show, path=path, HOME=str(home))
    assert ran.stdout.strip().split("|")[2:] == ["None"] * 4, ran.stdout + ran.stderr


def test_entrypoint_lets_git_use_a_checkout_owned_by_another_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving the checkout another owner needs root")
    home = tmp_path / "home"
    home.mkdir()
    repo = small_clone(tmp_path / "checkout", home)
    head = git_in(repo, "rev-parse", "HEAD", home=home)
    subprocess.run(["chown", "-R", "4321:4321", str(repo)], check=True)
    refused = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, env=clean_env(HOME=str(home)), capture_output=True, text=True
    )
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr
    trusted = entrypoint(repo, "git", "rev-parse", "HEAD", HOME=str(home))
    assert trusted.returncode == 0 and trusted.stdout.strip() == head and trusted.stderr == "", trusted.stderr
    assert git_in(repo, "rev-list", "--count", "HEAD", home=home) == "1"  # its own history, nothing added


def test_shell_scripts_parse():
    for script in (DOCKER / "entrypoint.sh", DOCKER / "snapshot.sh", DOCKER / "image_test.sh", DOCKER / "slurm.sbatch"):
        assert os.access(script, os.X_OK) or script.suffix == ".sbatch", f"{script} is not executable"
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


# --------------------------------------------------------------------------------------------
# make image, make image-test, and CI's call of it (the build itself is make image-test's)


def make_image(tmp_path: Path, stubs: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`make image` with only stand-in engines on PATH (each logs its argv and cwd)."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for tool in ("make", "git", "sh", "cat"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "engine.log"
    for name, info_rc in stubs.items():
        (bin_dir / name).write_text(
            f'#!/bin/sh\n[ "$1" = info ] && exit {info_rc}\necho "{name} $* @ $(pwd)" >> {log}\n'
        )
        (bin_dir / name).chmod(0o755)
    ran = subprocess.run(
        [str(bin_dir / "make"), "--no-print-directory", "-C", str(REPO), "image", *args],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return ran, log


@pytest.mark.parametrize(
    "stubs, engine",
    [
        ({"docker": 0, "podman": 0, "buildah": 0}, "docker"),
        ({"docker": 1, "podman": 0, "buildah": 0}, "podman"),  # no daemon
        ({"docker": 1, "buildah": 0}, "buildah"),
        ({"docker": 1}, None),
    ],
)
def test_make_image_builds_with_the_engine_that_is_here_and_passes_vcs_ref(tmp_path, stubs, engine):
    ran, log = make_image(tmp_path, stubs)
    if engine is None:
        assert ran.returncode != 0 and "no container engine" in ran.stderr and not log.exists()
        return
    assert ran.returncode == 0, ran.stderr
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert log.read_text().splitlines() == [f"{engine} build --build-arg VCS_REF={head} -t dpstudy . @ {REPO}"]
    # ... docs/docker.md's own `docker build`, and a base of your choice
    _, commands = readme_docker_commands()
    (readme_build,) = [c for c in commands if c[:2] == ["docker", "build"]]
    assert readme_build == ["docker", "build", "--build-arg", "VCS_REF=$(git rev-parse HEAD)", "-t", "dpstudy", "."]
    log.unlink()
    ran, log = make_image(tmp_path, stubs, "IMAGE=x", "IMAGE_BUILD_FLAGS=--build-arg BASE_IMAGE=ubuntu:24.04")
    assert ran.returncode == 0, ran.stderr
    assert (
        log.read_text().split(" @ ")[0]
        == f"{engine} build --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg VCS_REF={head} -t x ."
    )


def test_image_test_runs_the_readme_command_as_a_stranger_and_ci_runs_it_after_make_test():
    script = (DOCKER / "image_test.sh").read_text()
    mk = (DOCKER / "image.mk").read_text()
    assert re.search(r"^image-test:\n\tdocker/image_test\.sh$", mk, re.M)
    assert re.search(r"make .*-C \"\$ROOT\" image ENGINE=buildah", script)  # the build goes through make image
    # The command it runs is the image's default with the quick preset (a CPU), through the image's
    # ENTRYPOINT, as a uid:gid that is neither root nor the image's user.
    cmd = yaml.safe_load([a for i, a in dockerfile() if i == "CMD"][-1])
    quick = [a.replace("preset=gpu", "preset=quick") for a in cmd]
    assert f'drun "$CHECKOUT" {shlex.join(quick)}' in script
    assert '["OCIv1"]["config"]["Entrypoint"]' in script
    uid, gid = re.search(r'RUN_AS="\$\{IMAGE_TEST_USER:-(\d+):(\d+)\}"', script).groups()
    args = dockerfile_args()
    assert int(uid) not in (0, int(args["USER_UID"])) and int(gid) not in (0, int(args["USER_GID"]))
    # CI: the README's test command first, then the image.
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make test") < ci.index("$sudo make image-test")
    assert [line for line in ci if re.match(r"(\$sudo )?make ", line)][-2:] == [
        "make test",
        "$sudo make image-test",
    ]  # nothing after it but the time it took


# --------------------------------------------------------------------------------------------
# Compose


def test_compose_wires_the_trainer_to_the_mlflow_server_and_the_gpus():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"mlflow", "trainer"}
    for svc in services.values():
        assert svc["image"] == "dpstudy"
        context = (DOCKER / svc["build"]["context"]).resolve()
        assert context == REPO and (context / svc["build"]["dockerfile"]).is_file()
    mlflow, trainer = services["mlflow"], services["trainer"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    check_command(mlflow["command"])
    port = option(mlflow["command"], "--port")
    # The server's store and artifacts live in a declared named volume.
    volume, target = mlflow["volumes"][0].split(":")
    assert volume in spec["volumes"]
    for flag in ("--backend-store-uri", "--artifacts-destination"):
        assert option(mlflow["command"], flag).replace("sqlite:///", "").startswith(target + "/")
    published = {p.rsplit(":", 1)[1]: p.rsplit(":", 2)[-2] for p in mlflow["ports"]}
    assert port in published, "the UI port is not published"
    assert mlflow["healthcheck"]["test"][0] == "CMD" and f"localhost:{port}/health" in mlflow["healthcheck"]["test"][-1]
    # The trainer: the image's default command, the tracking server by service name, all GPUs.
    assert "command" not in trainer
    uri = urlsplit(trainer["environment"]["MLFLOW_TRACKING_URI"])
    assert (uri.scheme, uri.hostname, str(uri.port)) == ("http", "mlflow", port)
    from mlflow.server.security_utils import is_allowed_host_header  # the server's own Host check

    allowed = option(mlflow["command"], "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, uri.netloc) and is_allowed_host_header(
        allowed, f"localhost:{published[port]}"
    )
    assert trainer["depends_on"]["mlflow"]["condition"] == "service_healthy"
    (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
    source, target = trainer["volumes"][0].rsplit(":", 1)
    assert (DOCKER / source).resolve() == REPO and target == workdir()
    assert trainer["shm_size"]
    # The checkout's owner, with no default: a guessed uid (the image's) leaves a checkout owned by
    # anyone else unwritable, so Compose must stop, naming what to set, until both are given.
    uid, gid = re.fullmatch(r"\$\{(\w+):\?([^$}]+)\}:\$\{(\w+):\?([^$}]+)\}", trainer["user"]).group(1, 3)
    assert (uid, gid) == ("HOST_UID", "HOST_GID") and ":-" not in trainer["user"]
    assert compose_variables() == {"HOST_UID", "HOST_GID"}


def compose_variables() -> set[str]:
    """Every variable compose.yaml interpolates (Compose does so for the whole file, every command)."""
    text = "\n".join(
        line for line in (DOCKER / "compose.yaml").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return set(re.findall(r"\$\{(\w+)", text))


@pytest.mark.slow
def test_compose_mlflow_server_runs_and_answers_the_trainer_and_the_browser(tmp_path):
    """The compose server command itself (its volume moved into tmp_path, a free port, loopback)."""
    svc = compose()["services"]["mlflow"]
    target = svc["volumes"][0].split(":")[1]
    port = free_port()
    cmd = [
        str(tmp_path) + a[len(target) :]
        if a.startswith(target + "/")
        else a.replace(f"///{target}/", f"///{tmp_path}/")
        for a in svc["command"]
    ]
    cmd[0] = str(BIN / "mlflow")
    cmd[cmd.index("--port") + 1], cmd[cmd.index("--host") + 1] = str(port), "127.0.0.1"
    assert any(str(tmp_path) in a for a in cmd)
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[
                    -3000:
                ]
                time.sleep(1)

        def status(host: str) -> int:
            req = urllib.request.Request(
                f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
            )
            try:
                return urllib.request.urlopen(req, timeout=30).status
            except urllib.error.HTTPError as exc:
                return exc.code

        trainer_host = urlsplit(compose()["services"]["trainer"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
        assert status(trainer_host) == 200 and status("localhost:5000") == 200
        assert status("attacker.example:5000") == 403  # the allow-list is in force, not off
        # The healthcheck command, as Docker runs it (our port).
        check = [
            str(BIN / "python") if a == "python" else a.replace("localhost:5000", f"localhost:{port}")
            for a in svc["healthcheck"]["test"][1:]
        ]
        assert subprocess.run(check, timeout=60).returncode == 0
        # A run with an artifact goes through the server into the artifacts volume.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=base)
        run = client.create_run(client.create_experiment("compose-check"))
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        stored = list((tmp_path / "artifacts").rglob("hello.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello"
        assert (tmp_path / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


# --------------------------------------------------------------------------------------------
# Several machines: Slurm and Kubernetes run dvc.yaml's train_ddp command through `dpstudy launch`


@pytest.mark.slow
def test_slurm_script_prepares_data_once_then_launches_every_node_with_a_rendezvous(tmp_path):
    script = (DOCKER / "slurm.sbatch").read_text().splitlines()
    directives = [n for n, line in enumerate(script) if line.startswith("#SBATCH")]
    first_command = next(n for n, line in enumerate(script) if n and line.strip() and not line.startswith("#"))
    assert directives and max(directives) < first_command, "sbatch stops reading #SBATCH at the first command"
    assert "#SBATCH --ntasks-per-node=1" in script  # one torchrun agent per node
    # Stand-ins: scontrol names three nodes; srun logs each step and runs it here as one node would
    # (the launch with --dry-run, so it prints the torchrun command it would start).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\n[[ "$*" == "show hostnames node-[a-c]" ]] || exit 9\nprintf \'node-a\\nnode-b\\nnode-c\\n\'\n'
    )
    (bin_dir / "srun").write_text(
        '#!/bin/bash\n{ echo "STEP $*"; env | grep -E "^(DPSTUDY_|SRUN_CPUS)" | sort; } >> "$SRUN_LOG"\n'
        "while [[ $1 == --* ]]; do shift; done\n"
        '[[ $1 == dpstudy && $2 == launch ]] && set -- dpstudy launch --dry-run "${@:3}"\nexec "$@"\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    log = tmp_path / "srun.log"
    env = clean_env(
        PATH=f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        SRUN_LOG=str(log),
        SLURM_SUBMIT_DIR=str(work),
        SLURM_JOB_NODELIST="node-[a-c]",
        SLURM_JOB_NUM_NODES="3",
        SLURM_JOB_ID="777",
        SLURM_CPUS_PER_TASK="8",
        HOME=str(tmp_path),
    )
    ran = subprocess.run(
        ["bash", str(DOCKER / "slurm.sbatch")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    steps = [line[5:].split() for line in log.read_text().splitlines() if line.startswith("STEP ")]
    assert len(steps) == 2
    assert steps[0][:2] == ["--nodes=1", "--ntasks=1"] and steps[0][2:] == dvc_cmd("download")
    assert "--nodes=3" in steps[1] and "--ntasks-per-node=1" in steps[1]
    assert steps[1][steps[1].index("dpstudy") :] == dvc_cmd("train_ddp")
    assert {
        "DPSTUDY_NNODES=3",
        "DPSTUDY_RDZV_ENDPOINT=node-a:29500",
        "DPSTUDY_RDZV_ID=slurm-777",
        "DPSTUDY_NPROC_PER_NODE=gpu",
        "SRUN_CPUS_PER_TASK=8",
    } <= set(log.read_text().splitlines())
    assert (work / "data" / "prepared" / "digits.pt").is_file()  # the download step really ran
    assert (
        "--nproc-per-node gpu --nnodes 3 --rdzv-backend c10d --rdzv-endpoint node-a:29500 --rdzv-id slurm-777"
        in ran.stdout
    ), ran.stdout
    assert ran.stdout.rstrip().endswith("-m dpstudy " + shlex.join(dvc_cmd("train_ddp")[2:]))


def test_kubernetes_indexed_job_headless_service_and_mlflow_fit_together(tmp_path):
    manifest = kubernetes()
    job_name, job = one(manifest, "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    (trainer,) = pod["containers"]
    env = env_of(trainer)
    assert int(env["DPSTUDY_NNODES"]) == spec["completions"]
    assert {n for n in env if n.startswith("DPSTUDY_")} <= LAUNCH_VARS
    # The headless Service names the Job's pods; pod 0's full name is the rendezvous endpoint.
    service = manifest[("Service", pod["subdomain"])]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    endpoint = env["DPSTUDY_RDZV_ENDPOINT"].replace("$(POD_NAMESPACE)", "ns")
    host, port = endpoint.rsplit(":", 1)
    assert host == f"{job_name}-0.{pod['subdomain']}.ns.svc.cluster.local"
    assert int(port) in [p["port"] for p in service["ports"]] and int(port) in [
        p["containerPort"] for p in trainer["ports"]
    ]
    assert [e["valueFrom"]["fieldRef"]["fieldPath"] for e in trainer["env"] if e["name"] == "POD_NAMESPACE"] == [
        "metadata.namespace"
    ]
    # Every container runs the image through its entry point, with a command its tool accepts.
    _, deployment = one(manifest, "Deployment")
    containers = [*pod["initContainers"], trainer, *deployment["spec"]["template"]["spec"]["containers"]]
    for c in containers:
        assert c["image"].rsplit("/", 1)[-1].split(":")[0] == "dpstudy" and "command" not in c
        check_command(c["args"])
    assert trainer["args"] == dvc_cmd("train_ddp") and pod["initContainers"][0]["args"] == dvc_cmd("download")
    # Mounts: declared volumes; the prepared data the init container writes is what the trainer reads;
    # results on the shared claim.
    pvcs = {n for k, n in manifest if k == "PersistentVolumeClaim"}
    for spec_ in (pod, deployment["spec"]["template"]["spec"]):
        volumes = {v["name"]: v for v in spec_["volumes"]}
        for c in [*spec_.get("initContainers", []), *spec_["containers"]]:
            assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
        for v in volumes.values():
            assert "persistentVolumeClaim" not in v or v["persistentVolumeClaim"]["claimName"] in pvcs

    def mounts(c):
        return {m["mountPath"]: m["name"] for m in c["volumeMounts"]}

    data = f"{workdir()}/{option(trainer['args'], '--data')}"
    assert mounts(trainer)[data] == mounts(pod["initContainers"][0])[data]
    results = next(
        name
        for path, name in mounts(trainer).items()
        if f"{workdir()}/{option(trainer['args'], '--out')}".startswith(path + "/")
    )
    claim = {v["name"]: v for v in pod["volumes"]}[results]["persistentVolumeClaim"]["claimName"]
    assert manifest[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    # MLflow: the pods' tracking URI is the Service, which selects the server, whose Host check admits it.
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow_service = manifest[("Service", uri.hostname)]["spec"]
    (svc_port,) = mlflow_service["ports"]
    assert (
        svc_port["port"] == uri.port
        and mlflow_service["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    named = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert named[svc_port["targetPort"]] == int(option(server["args"], "--port"))
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = option(server["args"], "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, uri.netloc) and is_allowed_host_header(allowed, "localhost:5000")

    # The same server as compose's, but for the Host names.
    def strip(argv):
        return [a for a in argv if a != option(argv, "--allowed-hosts")]

    assert strip(server["args"]) == strip(compose()["services"]["mlflow"]["command"])
    # The real launcher, given the pod's environment, starts a multi-node torchrun.
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    dry = subprocess.run(
        [str(BIN / "dpstudy"), "launch", "--dry-run", *trainer["args"][2:]],
        cwd=tmp_path,
        env=clean_env(**{**env, "DPSTUDY_RDZV_ENDPOINT": endpoint}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        f"--nproc-per-node gpu --nnodes {spec['completions']} --rdzv-backend c10d --rdzv-endpoint {endpoint} "
        f"--rdzv-id {env['DPSTUDY_RDZV_ID']}"
    ) in dry.stdout


# --------------------------------------------------------------------------------------------
# README's Docker pages (docs/docker.md, docs/machines.md): their commands are the ones the files support


def readme_docker_commands() -> tuple[str, list[list[str]]]:
    """The text and commands of docs/docker.md and of docs/machines.md's section on Slurm and
    Kubernetes (the rest of that page runs `dpstudy launch` by hand: tests/test_multinode.py)."""
    machines = (REPO / "docs" / "machines.md").read_text()
    cluster = re.search(r"^## Slurm and Kubernetes\n(.*?)(?=^## |\Z)", machines, re.M | re.S).group(1)
    section = (REPO / "docs" / "docker.md").read_text() + "\n" + cluster
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
                argv.pop(0)
            if argv:
                commands.append(argv)
    return section, commands


def split_options(argv: list[str], flags: set[str], valued: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    opts: dict[str, list[str]] = {}
    while argv and argv[0].startswith("-"):
        name, eq, value = argv.pop(0).partition("=")
        assert name in flags | valued, f"unknown option {name}: teach this test what it means"
        opts.setdefault(name, []).append(value if eq else (argv.pop(0) if name in valued else ""))
    return opts, argv


def test_readme_docker_commands_refer_to_what_the_files_contain():
    section, commands = readme_docker_commands()
    tag = None
    services = compose()["services"]
    manifest = kubernetes()
    seen = set()
    exported: set[str] = set()
    image_targets = set(re.findall(r"^([\w-]+):", (DOCKER / "image.mk").read_text(), re.M))
    for argv in commands:
        tool, rest = argv[0], argv[1:]
        seen.add((tool, rest[0] if tool in ("docker", "kubectl", "make") else ""))
        if tool == "export":
            assert all(re.fullmatch(r"[A-Z_]+=.+", a) for a in rest), shlex.join(argv)
            exported |= {a.split("=")[0] for a in rest}
        elif tool == "make":
            assert rest[0] in image_targets and all(re.fullmatch(r"[A-Z_]+=.*", a) for a in rest[1:]), shlex.join(argv)
        elif tool == "docker" and rest[0] == "build":
            opts, ctx = split_options(rest[1:], set(), {"-t", "--build-arg", "-f"})
            tag = opts["-t"][0]
            assert {a.split("=")[0] for a in opts.get("--build-arg", [])} <= set(dockerfile_args())
            assert ctx == ["."] and (REPO / opts.get("-f", ["Dockerfile"])[0]).is_file()
            assert tag == services["trainer"]["image"]
        elif tool == "docker" and rest[0] == "run":
            opts, rest = split_options(rest[1:], {"--rm", "-it", "-d"}, {"--gpus", "--shm-size", "--user", "-v", "-p"})
            assert rest[0] == tag, "docker run of an image docs/docker.md did not build"
            for volume in opts.get("-v", []):
                assert volume == f"$PWD:{workdir()}"
            for publish in opts.get("-p", []):
                assert publish.rsplit(":", 1)[1] == (option(rest, "--port") if "--port" in rest else "5000")
            if rest[1:]:
                check_command(rest[1:])
            else:
                assert opts.get("--gpus") == ["all"], "the default command (the paper pipeline) needs the GPUs"
        elif tool == "docker" and rest[0] == "compose":
            assert compose_variables() <= exported, "compose.yaml's variables are not exported before"
            opts, rest = split_options(rest[1:], set(), {"-f"})
            assert opts["-f"] == ["docker/compose.yaml"] and (REPO / opts["-f"][0]).is_file()
            sub, sub_opts = rest[0], split_options(rest[1:], {"--rm", "-d", "-v"}, set())
            assert sub in {"build", "up", "run", "down"}
            named = sub_opts[1]
            if sub == "run":
                assert named[0] in services
                if named[1:]:
                    check_command(named[1:])
            else:
                assert set(named) <= set(services)
        elif tool == "sbatch":
            assert rest == ["docker/slurm.sbatch"] and (REPO / rest[0]).is_file()
        elif tool == "kubectl" and rest[0] == "apply":
            assert rest[1:] == ["-f", "docker/kubernetes.yaml"] and (REPO / rest[2]).is_file()
        elif tool == "kubectl" and rest[0] == "port-forward":
            kind, name = rest[1].split("/")
            _local, remote = rest[2].split(":")
            assert kind == "service" and int(remote) in [
                p["port"] for p in manifest[("Service", name)]["spec"]["ports"]
            ]
        else:
            pytest.fail(f"docs/docker.md or docs/machines.md: {shlex.join(argv)} is not checked here")
    assert {
        ("docker", "build"),
        ("docker", "run"),
        ("docker", "compose"),
        ("sbatch", ""),
        ("kubectl", "apply"),
        ("make", "image"),
        ("make", "image-test"),
    } <= seen
    # The prose: the base image and the smaller option, the multi-node command and the variables the
    # recipes set.
    assert set(re.findall(r"nvidia/cuda:[\w.-]+", section)) == {dockerfile_args()["BASE_IMAGE"]}
    assert "--build-arg BASE_IMAGE=ubuntu:24.04" in section
    assert f"`{shlex.join(dvc_cmd('train_ddp'))}`" in section
    assert set(re.findall(r"DPSTUDY_[A-Z_]+", section)) <= LAUNCH_VARS
    from dpstudy import launch

    assert set(launch.ENV.values()) == LAUNCH_VARS
