"""REPORT.html: REPORT.md's content as one self-contained page, each figure embedded as a data URI,
which MLflow's (sandboxed) HTML viewer shows as it is."""

from __future__ import annotations

import base64
import html
import re
import struct
from pathlib import Path
from typing import Sequence

from .render import MLFLOW_NOTE
from .report import VERDICTS


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0 auto; padding: 24px 32px 64px; max-width: 1280px; }
h1 { font-size: 28px; margin: 0 0 12px; }
h2 { font-size: 22px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 18px; margin: 28px 0 6px; }
p, ul { margin: 8px 0; }
li { margin: 4px 0; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f4f6;
       padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 6px 9px; text-align: left; vertical-align: top; }
td a, td code { overflow-wrap: anywhere; }  /* long figure names and checksums wrap in a narrow viewer */
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
figure { margin: 16px 0 24px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
figcaption { font-size: 13px; color: #57606a; margin-top: 4px; }
.verdict { padding: 1px 7px; border-radius: 10px; white-space: nowrap; font-weight: 600; }
.v-supported { background: #dafbe1; color: #116329; }
.v-not-supported { background: #ffebe9; color: #a40e26; }
.v-inconclusive { background: #fff8c5; color: #7d4e00; }
.v-not-testable-here { background: #eaeef2; color: #424a53; }
"""
# MLflow shows an HTML artifact in a sandboxed iframe loaded from a blob: address, where following
# a link to a place in the page (#...) is blocked as a navigation; scrolling to it works everywhere.
_IN_PAGE_LINKS = """
document.addEventListener("click", function (event) {
  var link = event.target.closest ? event.target.closest('a[href^="#"]') : null;
  var place = link && document.getElementById(decodeURIComponent(link.getAttribute("href").slice(1)));
  if (place) { event.preventDefault(); place.scrollIntoView(); }
});
"""
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CLAIM_HEADING = re.compile(r"^([A-Z])(\d): (.+)$")


def render_html(markdown: str, figures: str | Path, *, exclude: Sequence[str] = (MLFLOW_NOTE,)) -> str:
    """REPORT.md's text (`render`) as one self-contained HTML page: the same headings, tables, lists
    and paragraphs, every figure embedded as a PNG data URI read from ``figures`` (no fetch of any
    kind, so it reads the same from disk, in a mail and in MLflow's sandboxed HTML viewer), every
    link to a figure pointing at the figure inside the page and each claim of the verdict table at
    its section (a few lines of inline script scroll there where the sandbox blocks a #-link). The
    paragraphs in ``exclude`` (the note on reading the Markdown in MLflow) are left out."""
    figures = Path(figures)
    lines = markdown.splitlines()
    title = next((line.lstrip("#").strip() for line in lines if line.startswith("# ")), "report")
    ids = {f"claim-{m.group(1)}{m.group(2)}" for line in lines if line.startswith("### ")
           if (m := _CLAIM_HEADING.match(line[4:]))}
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(_heading(level, line[level:].strip()))
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            body.append(_table(rows, ids))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif m := _IMAGE.match(line.strip()):
            body.append(_figure(m.group(1), figures / Path(m.group(2)).name))
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ", "![")):
                para.append(lines[i].strip())
                i += 1
            text = " ".join(para)
            if text not in exclude:
                body.append(f"<p>{_inline(text)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_IN_PAGE_LINKS}</script>\n</body>\n</html>\n")


def figure_anchor(name: str) -> str:
    """The id of a figure inside REPORT.html: ``fig-A3_workers``."""
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]", "-", Path(name).stem)


def _heading(level: int, text: str) -> str:
    level = min(max(level, 1), 6)
    m = _CLAIM_HEADING.match(text) if level == 3 else None
    if m:
        claim, verdict = f"{m.group(1)}{m.group(2)}", m.group(3)
        return (f'<h3 id="claim-{claim}">{claim}: '
                f'<span class="verdict {_verdict_class(verdict)}">{html.escape(verdict)}</span></h3>')
    return f"<h{level}>{_inline(text)}</h{level}>"


def _verdict_class(verdict: str) -> str:
    return "v-" + verdict.replace(" ", "-")


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def _table(rows: list[str], claim_ids: set[str]) -> str:
    head, body = _cells(rows[0]), [_cells(r) for r in rows[1:] if not re.fullmatch(r"[\s|:-]+", r)]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    for cells in body:
        tds = []
        for j, c in enumerate(cells):
            if j == 0 and f"claim-{c}" in claim_ids:  # the verdict table: a claim links to its section
                tds.append(f'<td><a href="#claim-{c}">{html.escape(c)}</a></td>')
            else:
                tds.append(f"<td>{_inline(c)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "\n".join(out + ["</tbody>", "</table>"])


def _figure(alt: str, path: Path) -> str:
    anchor = figure_anchor(path.name)
    if not path.is_file():
        return f'<p id="{anchor}"><em>Figure {html.escape(path.name)} was not drawn.</em></p>'
    data = path.read_bytes()
    size = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        size = f' width="{width}" height="{height}"'
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure id="{anchor}">\n<img alt="{html.escape(alt)}"{size} src="{src}">\n'
            f"<figcaption>{html.escape(path.name)}</figcaption>\n</figure>")


def _inline(text: str) -> str:
    """The Markdown `render` writes inside a line: `code`, **bold**, *italic*, [links](to) and <br>."""
    out = []
    for k, part in enumerate(re.split(r"`([^`]*)`", text)):
        if k % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = html.escape(part).replace("&lt;br&gt;", "<br>")
        part = re.sub(r"\*\*(.+?)\*\*", lambda m: _strong(m.group(1)), part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        part = _LINK.sub(lambda m: _link(m.group(1), m.group(2)), part)
        out.append(part)
    return "".join(out)


def _strong(text: str) -> str:
    if html.unescape(text) in VERDICTS:
        return f'<strong class="verdict {_verdict_class(html.unescape(text))}">{text}</strong>'
    return f"<strong>{text}</strong>"


def _link(text: str, href: str) -> str:
    """A link to a figure goes to the figure embedded in the page; any other keeps its address."""
    target = html.unescape(href)
    if target.lower().endswith(".png") and "://" not in target:
        return f'<a href="#{figure_anchor(target)}">{text}</a>'
    return f'<a href="{href}">{text}</a>'
