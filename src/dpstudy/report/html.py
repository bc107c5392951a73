"""REPORT.html: REPORT.md's content as one self-contained page, each figure embedded as a data URI,
which MLflow's (sandboxed) HTML viewer shows as it is.

The Markdown is parsed by markdown-it-py (CommonMark and its table extension) and the tokens are
adjusted before they are rendered: a claim's heading gets its anchor and its verdict a badge, a
verdict in bold gets the verdict's colours, the verdict table's claims link to their sections, links
to figures go to the figures inside the page, and a paragraph that is only a figure becomes the
embedded figure. The page around it is ``templates/REPORT.html.j2`` (its CSS and the script that
makes in-page links work in MLflow's viewer)."""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import jinja2
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from .render import MLFLOW_NOTE
from .stats import VERDICTS

_CLAIM_HEADING = re.compile(r"^([A-Z]\d): (.+)$")


def render_html(markdown: str, figures: str | Path, *, exclude: Sequence[str] = (MLFLOW_NOTE,)) -> str:
    """REPORT.md's text (`render`) as one self-contained HTML page: the same headings, tables, lists
    and paragraphs, every figure embedded as a PNG data URI read from ``figures`` (no fetch of any
    kind, so it reads the same from disk, in a mail and in MLflow's sandboxed HTML viewer), every
    link to a figure pointing at the figure inside the page and each claim of the verdict table at
    its section (a few lines of inline script scroll there where the sandbox blocks a #-link). The
    paragraphs in ``exclude`` (the note on reading the Markdown in MLflow) are left out."""
    env = {"figures": Path(figures)}
    tokens = _drop_paragraphs(_MD.parse(markdown, env), markdown.splitlines(), set(exclude))
    claims = _claim_headings(tokens)
    _claim_links(tokens, claims)
    for token in tokens:
        if token.type == "inline":
            _inline(token.children or [])
    tokens = _figures(tokens)
    title = next(
        (tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1"), "report"
    )
    body = _MD.renderer.render(tokens, _MD.options, env).rstrip("\n")
    return _PAGE.render(title=title, body=Markup(body))


def figure_anchor(name: str) -> str:
    """The id of a figure inside REPORT.html: ``fig-A3_workers``."""
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]", "-", Path(name).stem)


def _verdict_class(verdict: str) -> str:
    return "verdict v-" + verdict.replace(" ", "-")


def _drop_paragraphs(tokens: list[Token], lines: list[str], exclude: set[str]) -> list[Token]:
    """The tokens less each paragraph whose Markdown source (its lines joined) is one of ``exclude``."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if (
            t.type == "paragraph_open"
            and t.map
            and " ".join(line.strip() for line in lines[t.map[0] : t.map[1]]) in exclude
        ):
            i += 3  # paragraph_open, inline, paragraph_close
            continue
        out.append(t)
        i += 1
    return out


def _claim_headings(tokens: list[Token]) -> set[str]:
    """``### A1: supported`` becomes ``<h3 id="claim-A1">A1: <span class="verdict ...">supported</span>``;
    returns the claims that have a section."""
    claims = set()
    for i, t in enumerate(tokens[:-1]):
        if t.type != "heading_open" or t.tag != "h3":
            continue
        m = _CLAIM_HEADING.match(tokens[i + 1].content)
        if m:
            claim, verdict = m.groups()
            claims.add(claim)
            t.attrSet("id", f"claim-{claim}")
            badge = Token("verdict_open", "span", 1, attrs={"class": _verdict_class(verdict)})
            tokens[i + 1].children = [
                Token("text", "", 0, content=f"{claim}: "),
                badge,
                Token("text", "", 0, content=verdict),
                Token("verdict_close", "span", -1),
            ]
    return claims


def _claim_links(tokens: list[Token], claims: set[str]) -> None:
    """A table row whose first cell is a claim with a section (the verdict table): the claim links there."""
    for i, t in enumerate(tokens[:-2]):
        if t.type == "tr_open" and tokens[i + 1].type == "td_open" and tokens[i + 2].content in claims:
            claim = tokens[i + 2].content
            tokens[i + 2].children = [
                Token("link_open", "a", 1, attrs={"href": f"#claim-{claim}"}),
                Token("text", "", 0, content=claim),
                Token("link_close", "a", -1),
            ]


def _inline(children: list[Token]) -> None:
    """Within a line: a verdict in bold takes the verdict's colours; a link to a figure goes to the
    figure inside the page (any other link keeps its address)."""
    for k, t in enumerate(children):
        if (
            t.type == "strong_open"
            and k + 2 < len(children)
            and children[k + 2].type == "strong_close"
            and children[k + 1].type == "text"
            and children[k + 1].content in VERDICTS
        ):
            t.attrSet("class", _verdict_class(children[k + 1].content))
        elif t.type == "link_open":
            href = str(t.attrGet("href") or "")
            if href.lower().endswith(".png") and "://" not in href:
                t.attrSet("href", f"#{figure_anchor(href)}")


def _figures(tokens: list[Token]) -> list[Token]:
    """A paragraph that holds one image and nothing else becomes a ``figure`` token (`_render_figure`)."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        children = tokens[i + 1].children if t.type == "paragraph_open" and i + 1 < len(tokens) else None
        if children and len(children) == 1 and children[0].type == "image":
            image = children[0]
            out.append(
                Token(
                    "figure",
                    "figure",
                    0,
                    block=True,
                    meta={"alt": image.content, "name": Path(str(image.attrGet("src"))).name},
                )
            )
            i += 3
            continue
        out.append(t)
        i += 1
    return out


def _render_figure(self, tokens: list[Token], idx: int, options, env: dict) -> str:
    """The figure as a PNG data URI at its own size, or a line saying it was not drawn."""
    alt, name = tokens[idx].meta["alt"], tokens[idx].meta["name"]
    path = env["figures"] / name
    anchor = figure_anchor(name)
    if not path.is_file():
        return f'<p id="{anchor}"><em>Figure {html.escape(name)} was not drawn.</em></p>\n'
    data = path.read_bytes()
    size = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        size = f' width="{width}" height="{height}"'
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure id="{anchor}">\n<img alt="{html.escape(alt)}"{size} src="{src}">\n'
        f"<figcaption>{html.escape(name)}</figcaption>\n</figure>\n"
    )


def _render_raw_html(self, tokens: list[Token], idx: int, options, env: dict) -> str:
    """HTML written in the Markdown: the report's own line breaks in a table cell (``<br>``) are kept;
    anything else is text (an assumption in params.yaml may mention ``<angle>`` brackets)."""
    content = tokens[idx].content
    return "<br>" if content.strip().lower() in ("<br>", "<br/>", "<br />") else html.escape(content)


_MD = MarkdownIt("commonmark").enable("table")
_MD.add_render_rule("figure", _render_figure)
_MD.add_render_rule("html_inline", _render_raw_html)
_MD.add_render_rule("html_block", _render_raw_html)
_PAGE = jinja2.Environment(
    loader=jinja2.PackageLoader("dpstudy.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    keep_trailing_newline=True,
).get_template("REPORT.html.j2")
