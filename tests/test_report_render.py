"""REPORT.md from its jinja2 template and REPORT.html from that Markdown through markdown-it-py: the
templates ship with the package, the tables tabulate draws are Markdown tables, and the page marks
every verdict, links every claim to its section and lets no HTML from the inputs through."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from conftest import AGREED, DIGITS_FACTS, REPO, make_png
from markdown_it import MarkdownIt

from dpstudy.claims import CLAIMS, Verdict
from dpstudy.report.html import figure_anchor, render_html
from dpstudy.report.render import MLFLOW_NOTE, StageRun, render
from dpstudy.report.stats import VERDICTS

WRITTEN = datetime(2026, 12, 1, 10, 40, tzinfo=UTC)


def verdicts() -> list[Verdict]:
    """One verdict per claim, the four verdicts in turn."""
    return [
        Verdict(
            claim=c,
            verdict=VERDICTS[i % len(VERDICTS)],
            evidence=f"evidence of {c}",
            rule=f"rule of {c}",
            why=f"why {c}" if VERDICTS[i % len(VERDICTS)] in VERDICTS[2:] else "",
            effect=f"effect of {c}",
            seeds="3 seeds (0, 1, 2) per configuration",
        )
        for i, c in enumerate(CLAIMS)
    ]


def report(
    *,
    params_text: str = "x: 1  # ASSUMPTION: made up\n",
    confidence: float = 0.95,
    stage_runs: list[StageRun] | None = None,
) -> str:
    start = WRITTEN.timestamp() - 600
    runs = [StageRun("download"), StageRun("train_dp", (("A", "a" * 32),), start, start + 300)]
    return render(
        verdicts(),
        preset="quick",
        commit="c" * 40,
        dirty=False,
        hardware=["Machine: x"],
        datasets=[DIGITS_FACTS],
        evaluation_check=AGREED,
        params_text=params_text,
        written=WRITTEN,
        stage_runs=runs if stage_runs is None else stage_runs,
        confidence=confidence,
    )


def tables(markdown: str) -> list[list[list[str]]]:
    """Every table a CommonMark + table parser finds, as rows of cell sources (header row first)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    out: list[list[list[str]]] = []
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            out.append([])
        elif t.type == "tr_open":
            out[-1].append([])
        elif t.type == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            out[-1][-1].append(t.content)
    return out


def figures_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "figures"
    folder.mkdir()
    for v in verdicts():
        if v.figure:
            (folder / v.figure).write_bytes(make_png(20, 10))
    return folder


def test_the_templates_are_package_data():
    """A wheel carries every template: pyproject's package-data globs match each file in report/templates/."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dpstudy.report"]
    templates = resources.files("dpstudy.report") / "templates"
    names = [f"templates/{t.name}" for t in templates.iterdir() if t.is_file()]
    assert {"templates/REPORT.md.j2", "templates/REPORT.html.j2"} <= set(names)
    assert all(any(fnmatch.fnmatch(n, g) for g in globs) for n in names), (names, globs)


def test_report_tables_are_markdown_tables():
    runs, claims, datasets = tables(report())
    assert runs == [
        ["stage", "MLflow parent run (study)", "started", "duration"],
        ["download", "no run in the MLflow store", "", ""],
        ["train_dp", f"`{'a' * 32}` (A)", "2026-12-01 10:30:00 UTC", "5 min 0 s"],
    ]
    assert claims[0] == ["claim", "statement", "verdict", "seeds", "figure"]
    assert [row[:4] for row in claims[1:]] == [
        [v.claim, CLAIMS[v.claim].statement, f"**{v.verdict}**", "3"] for v in verdicts()
    ]
    assert all(
        row[4] == (f"[{v.figure}](./figures/{v.figure})" if v.figure else "") for row, v in zip(claims[1:], verdicts())
    )
    assert datasets[1] == [
        "digits",
        "seeded",
        "1438 / 359",
        f"`{'f' * 64}`",
        f"sklearn: `{'0' * 32}`<br>other: `{'1' * 32}`",
    ]


def test_report_without_stage_runs_has_no_runs_table():
    assert len(tables(report(stage_runs=[]))) == 2  # the verdict table and the datasets table


def test_a_wrapped_paragraph_of_the_template_is_one_line_of_markdown():
    """The intro the template writes over ten lines is one paragraph on one line, stating the confidence."""
    text = report(confidence=0.9)
    tokens = MarkdownIt("commonmark").parse(text)
    stated = [t for t in tokens if t.type == "inline" and "90% t-interval" in t.content]
    assert len(stated) == 1 and stated[0].map[1] - stated[0].map[0] == 1 and "95%" not in text
    assert not re.search(r"\n\n\n", text) and text.endswith(":\n\n- `x`: made up\n")


def test_every_verdict_is_marked_and_every_claim_linked_to_its_section(tmp_path):
    page = render_html(report(), figures_dir(tmp_path))
    for v in verdicts():
        badge = f'class="verdict v-{v.verdict.replace(" ", "-")}"'
        assert re.search(rf'<h3 id="claim-{v.claim}">{v.claim}: <span {badge}>{v.verdict}</span></h3>', page), v.claim
        row = re.search(rf'<tr>\s*<td><a href="#claim-{v.claim}">{v.claim}</a></td>.*?</tr>', page, re.S)
        assert row and f"<strong {badge}>{v.verdict}</strong>" in row.group(0), v.claim
        if v.figure:
            assert f'href="#{figure_anchor(v.figure)}"' in row.group(0)
    assert "<title>dpstudy claims report</title>" in page


def test_html_lets_no_markup_from_the_inputs_through(tmp_path):
    """An assumption's text is shown as written, never run or fetched; the report's own <br> stays a break."""
    text = report(params_text="x: 1  # ASSUMPTION: <script>alert(1)</script> and <img src=x>\n")
    page = render_html(text, figures_dir(tmp_path))
    assert page.count("<script") == 1 and "<img src=x" not in page  # the page's own script only
    assert "&lt;script&gt;alert(1)&lt;/script&gt; and &lt;img src=x&gt;" in page
    assert f"</code><br>other: <code>{'1' * 32}</code>" in page


def test_only_the_excluded_paragraph_is_left_out(tmp_path):
    text, folder = report(), figures_dir(tmp_path)
    note = MLFLOW_NOTE.strip("*")
    assert note not in render_html(text, folder)
    kept = render_html(text, folder, exclude=())
    assert f"<p><em>{note}</em></p>" in kept
    assert kept.count("<p>") == render_html(text, folder).count("<p>") + 1
