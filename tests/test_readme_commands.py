"""The documentation's commands as a user runs them: each ```bash block of README.md and of
docs/*.md pasted into a fresh shell (bash with only the system PATH, no .venv/bin, nothing
inherited but HOME and the locale), in a copy of the repository. Every command line is run except
those in `NOT_RUN`, each with its reason; a command that fails fails the test with the command's
own output. And every relative link of those pages leads somewhere: a file that exists and, for
`#anchor`, a heading of that file.

- `test_readme_experiment_commands_in_a_fresh_shell`: the blocks with `dvc exp run`, against a copy
  whose stages only print `dpstudy --version` (seconds): the commands find `dpstudy`, the `-S`
  forms are accepted and each experiment re-runs only the stage that reads the value.
- `test_readme_commands_in_a_fresh_shell_after_make_repro` (slow): every block, README's first,
  then each page of docs/ by name, in a copy of the session's real quick pipeline run
  (`quick_run`, what `make repro` leaves).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, dvc, tracked_copy
from markdown_it import MarkdownIt

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # a fresh login's PATH: no virtual environment on it
MARK = "@@ README command: "

# Commands of the pages this file does not run, and why (one entry per pattern, each matching a
# command of some page); every other command of every bash block runs.
NOT_RUN = [
    (
        r"make (repro|test)\b",
        "`make repro` is the quick_run fixture (dvc repro of the quick pipeline in a fresh "
        "copy); `make test` is this test suite; both may (re)install the venv",
    ),
    (
        r"(\.venv/bin/)?dpstudy (launch )?(--dry-run )?(download|profile_dataloader|train_dp|train_ddp|train_adaptive"
        r"|evaluate|plot)\b",
        "runs a whole stage: tests/test_stages.py and the quick pipeline run each",
    ),
    (r"export DPSTUDY_", "settings of a launch on several machines (tests/test_multinode.py)"),
    (r"(\.venv/bin/)?mlflow (server|ui)\b", "a server that runs until stopped (tests/test_mlflow_ui.py)"),
    (r"make image(-test)?\b", "builds the image (7 GB, ~5 min): CI runs `make image-test` after `make test`"),
    (r".*\bdocker (build|run|compose)\b", "needs Docker and a GPU host (tests/test_docker.py checks these)"),
    (r"(sbatch|kubectl) ", "needs a Slurm or Kubernetes cluster (tests/test_docker.py checks these)"),
    (
        r"bash benchmarks/gpu_check\.sh ",
        "needs a GPU and a folder of MNIST files; without a GPU it only says so (tests/test_benchmarks.py checks that)",
    ),
]


def pages() -> list[Path]:
    """The documentation a user reads: README.md, then docs/*.md by name (paths in REPO)."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def page_blocks() -> list[tuple[str, str]]:
    """(page: section heading, block text) of every ```bash block of every page, in order."""
    return [
        (f"{page.relative_to(REPO)}: {heading}", block)
        for page in pages()
        for heading, block in bash_blocks(page.read_text())
    ]


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, block text) of every ```bash block, in order."""
    blocks, heading, fence, lines = [], "", None, []
    for line in text.splitlines():
        if fence is None and line.startswith("```"):
            fence, lines = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == "bash":
                blocks.append((heading, "\n".join(lines)))
            fence = None
        elif fence is not None:
            lines.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined; blank and comment lines dropped."""
    out, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].rstrip() + " "
            continue
        command = (current + line.strip()).strip()
        current = ""
        if command and not command.startswith("#"):
            out.append(command)
    return out


def not_run_reason(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN if re.match(pattern, command)), None)


def fresh_shell_env() -> dict[str, str]:
    return {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}


def run_block(block: str, cwd: Path, timeout: float) -> tuple[int, str, dict[str, str]]:
    """Run a block's commands as one script in a fresh bash, stopping at the first that fails.
    Returns the exit status, the whole output and each command's output (stdout + stderr)."""
    script = ["set -e", """trap 'echo "README command failed (exit status $?): $BASH_COMMAND" >&2' ERR"""]
    for command in commands(block):
        if not_run_reason(command) is None:
            script += [f"echo {shlex.quote(MARK + command)}", command]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=fresh_shell_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    outputs = {}
    for chunk in done.stdout.split(MARK)[1:]:
        command, _, output = chunk.partition("\n")
        outputs[command] = output
    return done.returncode, done.stdout, outputs


def with_venv(repo: Path) -> None:
    """The copy gets the environment a user's checkout has: `.venv` (this interpreter's; git-ignored)."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "dvc").is_file():
        pytest.skip(
            f"tests not run from a virtual environment with dvc ({venv}): nothing for README's "
            "`source .venv/bin/activate` to activate"
        )
    (repo / ".venv").symlink_to(venv, target_is_directory=True)
    with open(repo / ".git" / "info" / "exclude", "a") as fh:  # a symlink is not the ignored folder /.venv/
        fh.write("/.venv\n")


def stages_run(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", output, re.MULTILINE)


def test_readme_blocks_are_found_and_every_skip_has_a_reason():
    blocks = page_blocks()
    everything = [c for _, block in blocks for c in commands(block)]
    run = [c for c in everything if not_run_reason(c) is None]
    patterns = [pattern for pattern, _ in NOT_RUN]
    assert len(set(patterns)) == len(patterns), "NOT_RUN: one entry per pattern"
    for pattern, reason in NOT_RUN:
        assert reason.strip(), f"NOT_RUN: {pattern} has no reason"
        assert any(re.match(pattern, c) for c in everything), f"NOT_RUN: {pattern} matches no command of the pages"
    assert any(c.startswith("dvc exp run -S") for c in run), run
    assert any(re.fullmatch(r"dvc exp run -S '[\w.]+\.(quick|paper)=.*'", c.split("  ")[0]) for c in run), (
        "no page shows a per-preset `-S` override"
    )
    # A command that runs a stage needs `dpstudy` on PATH: no such command without the venv activated.
    for heading, block in blocks:
        cmds = commands(block)
        for i, c in enumerate(cmds):
            if re.match(r"(\S*/)?dvc (exp run|repro)\b", c):
                assert any(p.startswith("source .venv/bin/activate") for p in cmds[:i]), (
                    f"README ({heading}): `{c}` runs dvc.yaml's `dpstudy ...` commands: activate .venv first"
                )


def test_readme_experiment_commands_in_a_fresh_shell(tmp_path):
    """The blocks with `dvc exp run`, as written, on stages as cheap as `dpstudy --version`: each
    stage started the way dvc.yaml starts it, reading the params it reads."""
    repo = tracked_copy(tmp_path / "repo")
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    fake = {
        name: {
            "cmd": f"{stage['cmd'].split()[0]} --version > fake_{name}.txt",
            "params": stage.get("params", []),
            "outs": [f"fake_{name}.txt"],
        }
        for name, stage in real.items()
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": fake}, sort_keys=False))
    git = ["git", "-c", "user.email=ci@dpstudy", "-c", "user.name=ci"]
    subprocess.run([*git, "commit", "-qam", "cheap stages"], cwd=repo, check=True)
    first = dvc("repro", cwd=repo)  # what `make repro` leaves: every stage run, dvc.lock written
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    with_venv(repo)

    blocks = [(h, b) for h, b in page_blocks() if "dvc exp run" in b]
    assert blocks
    for heading, block in blocks:
        rc, output, outputs = run_block(block, repo, timeout=600)
        assert rc == 0, f"README ({heading}) failed in a fresh shell:\n{output[-4000:]}"
        for command, out in outputs.items():
            if command.startswith("dvc exp run"):
                ran = stages_run(out)
                assert ran, f"{command}: no stage ran\n{out[-2000:]}"
                # -S a.b.c=... re-runs exactly the stages that read section a
                section = re.search(r"-S '?([\w]+)\.", command)[1]
                assert ran == [n for n in real if section in real[n].get("params", [])], (command, ran)
            if command.startswith("dvc exp show"):
                for assignment in re.findall(r"-S '?([\w.]+)=", block):
                    assert assignment in out, f"{command} does not show {assignment}:\n{out[-2000:]}"


@pytest.mark.slow
def test_readme_commands_in_a_fresh_shell_after_make_repro(quick_run, tmp_path):
    """Every bash block of the pages in order, as written, each in a fresh shell, in a copy of the real
    quick pipeline's run: the report, metrics and plots, the experiments (one re-runs plot only, the
    per-preset one train_dp and what follows it), and `dvc exp show` comparing them."""
    repo = tmp_path / "repo"
    shutil.copytree(quick_run, repo, symlinks=True)
    with_venv(repo)
    ran: dict[str, str] = {}
    for heading, block in page_blocks():
        rc, output, outputs = run_block(block, repo, timeout=1800)
        assert rc == 0, f"README ({heading}) failed in a fresh shell:\n{output[-6000:]}"
        ran.update(outputs)

    def output_of(prefix: str) -> str:
        found = [out for command, out in ran.items() if command.startswith(prefix)]
        assert found, f"no README command starting {prefix!r} ran: {list(ran)}"
        return found[0]

    assert "# dpstudy claims report" in output_of("less results/REPORT.md")
    assert "resident_speedup" in output_of("dvc metrics show")
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert stages_run(output_of("dvc exp run -S plot.")) == ["plot"]
    per_preset = output_of("dvc exp run -S 'train_dp.")
    assert stages_run(per_preset)[0] == "train_dp" and stages_run(per_preset)[-1] == "plot", per_preset[-3000:]
    shown = output_of("dvc exp show")
    assert "plot.rules.a3_min_gain" in shown and "train_dp.seeds.quick" in shown, shown[-3000:]
    assert output_of(".venv/bin/dpstudy --help").count("usage: dpstudy") == 1


# -- links between the pages -------------------------------------------------------------------


def inline_tokens(text: str) -> list:
    """The inline tokens of a Markdown text: links, images, text of paragraphs, headings and table
    cells (code blocks have none, so a `#` comment or a URL in one is no link)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [child for t in tokens if t.type == "inline" for child in t.children or []]


def heading_anchors(text: str) -> set[str]:
    """The #anchors GitHub gives a page's headings: the heading's text (code without its
    backticks), lower-cased, punctuation dropped, spaces as hyphens; a repeat gets -1, -2, ..."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    found: set[str] = set()
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open":
            words = "".join(c.content for c in inline.children if c.type in ("text", "code_inline"))
            slug = re.sub(r"[^\w\- ]", "", words.strip().lower()).replace(" ", "-")
            repeat = next(n for n in range(len(found) + 1) if (f"{slug}-{n}" if n else slug) not in found)
            found.add(f"{slug}-{repeat}" if repeat else slug)
    return found


def relative_links(page: Path) -> list[str]:
    """The link and image targets of a page that are not addresses elsewhere (no scheme)."""
    targets = []
    for token in inline_tokens(page.read_text()):
        target = (
            token.attrGet("href")
            if token.type == "link_open"
            else token.attrGet("src")
            if token.type == "image"
            else None
        )
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):
            targets.append(target)
    return targets


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_a_file_and_heading(page):
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.relative_to(REPO)}: link {link}: no file {path}"
        if anchor:
            assert target.suffix == ".md", f"{page.relative_to(REPO)}: link {link}: an anchor into a non-Markdown file"
            assert anchor in heading_anchors(target.read_text()), (
                f"{page.relative_to(REPO)}: link {link}: {path or page.name} has no heading #{anchor}"
            )


def test_heading_anchors_as_github_makes_them(tmp_path):
    text = "# Title\n\n## The headline figures: `dvc metrics show`\n\n## Again\n\n### Again\n\n"
    text += "```bash\n# a comment\n```\n"
    assert heading_anchors(text) == {"title", "the-headline-figures-dvc-metrics-show", "again", "again-1"}
    page = tmp_path / "page.md"
    page.write_text(
        "[a](other.md#x) ![b](fig.png) [c](https://example.org/y) [d](#title)\n\n```bash\n[e](no.md)\n```\n"
    )
    assert relative_links(page) == ["other.md#x", "fig.png", "#title"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / link.partition("#")[0]).resolve() for link in relative_links(REPO / "README.md")}
    assert set(pages()[1:]) <= linked, "a page of docs/ that README's index does not list"
