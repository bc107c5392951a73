"""The claims report as MLflow shows it: a real plot stage logged to a fresh store, a real `mlflow
server`, and headless Chromium doing what a reader does in the plot run's Artifacts tab.

REPORT.html must show every figure as an image (embedded: MLflow's HTML viewer is a sandboxed blob
iframe, where a relative address resolves nowhere) and hold no link that leads to a 404; REPORT.md,
whose relative figure links MLflow would send to the server's root, must show them inactive; each
figure is also a run image on the Model metrics tab.

The plot stage runs on the results of a finished quick pipeline: the session's `quick_run` (a real
`dvc repro`), or, to work on the UI without one, the folder DPSTUDY_QUICK_RUN names (results/,
data/prepared/ and params.yaml of an earlier quick run; only read). Browser: Debian's ``chromium``,
never a Playwright download; without it the tests skip, or fail where DPSTUDY_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import png_size
from mlflow_browser import Server, browser, expect, explained, page, serve  # noqa: F401

from dpstudy.report.figures import FIGURES, INPUTS
from dpstudy.report.html import figure_anchor
from dpstudy.report.render import MLFLOW_NOTE

pytestmark = [pytest.mark.slow, pytest.mark.quick_run]  # on the session's pipeline run (conftest)

EXPERIMENT, RUN = "dpstudy-claims-report", "plot"


# -- a plot run of its own, in a fresh MLflow store ----------------------------------------------
@pytest.fixture(scope="module")
def quick(request) -> Path:
    given = os.environ.get("DPSTUDY_QUICK_RUN")
    if given:
        return Path(given)
    return request.getfixturevalue("quick_run")


@dataclass
class Plotted:
    root: Path  # results/, data/prepared/, params.yaml, mlflow.db, mlartifacts/
    experiment_id: str
    run_id: str

    @property
    def figures(self) -> Path:
        return self.root / "results" / "figures"


@pytest.fixture(scope="module")
def plotted(quick, tmp_path_factory) -> Plotted:
    """`python -m dpstudy plot` on a copy of the quick run's tables, logging to a store of its own."""
    root = tmp_path_factory.mktemp("report-ui")
    for rel in [*INPUTS, "evaluate/evaluations.csv", "evaluate/metrics.json"]:
        (root / "results" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(quick / "results" / rel, root / "results" / rel)
    shutil.copytree(quick / "data" / "prepared", root / "data" / "prepared")
    shutil.copy2(quick / "params.yaml", root / "params.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpstudy",
            "plot",
            "--params",
            "params.yaml",
            "--results",
            "results",
            "--data",
            "data/prepared",
            "--out",
            "results",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{RUN}'")
    assert len(runs) == 1
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"REPORT.md", "REPORT.html", "figures", "images"} <= logged
    return Plotted(root, exp.experiment_id, runs[0].info.run_id)


# -- the server and the browser -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(plotted):
    """README's `mlflow server` command on the plot run's store, ready once /health answers."""
    with serve(plotted.root / "mlflow.db", plotted.root / "server.log", wait_s=120) as srv:
        yield srv


def open_artifact(page, server: Server, plotted: Plotted, name: str) -> None:
    page.goto(f"{server.url}/#/experiments/{plotted.experiment_id}/runs/{plotted.run_id}")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text(name, exact=True).first.click()


def report_frame(page):
    """The frame of MLflow's HTML viewer (a blob: iframe, sandboxed) once the report is in it."""
    expect(page.locator("iframe.mlflow-html-iframe")).to_be_visible()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.startswith("blob:") and frame.locator("h1").count():
                return frame
        page.wait_for_timeout(200)
    raise AssertionError(f"no report in MLflow's HTML viewer; frames: {[f.url for f in page.frames]}")


# -- the tests ------------------------------------------------------------------------------------
def test_report_html_shows_every_figure_and_no_dead_link(page, server, plotted, tmp_path):
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    with explained(page, server, tmp_path):
        open_artifact(page, server, plotted, "REPORT.html")
        frame = report_frame(page)
        expect(frame.get_by_role("heading", name="dpstudy claims report", exact=True)).to_be_visible()

        # Every figure: an image decoded at its own size, from inside the page (no fetch at all).
        for name in FIGURES:
            image = frame.locator(f"#{figure_anchor(name)} img")
            expect(image).to_have_count(1)
            image.scroll_into_view_if_needed()
            expect(image).to_be_visible()
            loaded = image.evaluate("img => [img.complete, img.naturalWidth, img.src.slice(0, 22)]")
            width = png_size((plotted.figures / name).read_bytes(), name)[0]
            assert loaded == [True, width, "data:image/png;base64,"], (name, loaded)
        assert frame.locator("link, script[src], iframe, object, embed").count() == 0

        # Every link: an anchor inside the page that exists, or an address the server answers.
        hrefs = frame.locator("a[href]").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert len(hrefs) >= len(FIGURES)
        for href in set(hrefs):
            if href.startswith("#"):
                assert frame.locator(f"[id='{href[1:]}']").count() == 1, f"{href}: no such place in the page"
            else:
                assert server.status(href) != 404, f"{href} is a 404"

        # The verdict table's links take the reader to the figure and to the claim's section, inside the
        # viewer (the sandbox blocks following a #-link as a navigation: the page scrolls instead).
        before = page.url
        for href, place in (
            (f"#{figure_anchor('A4_lr_scaling.png')}", f"#{figure_anchor('A4_lr_scaling.png')} img"),
            ("#claim-C4", "#claim-C4"),
        ):
            frame.locator(f"table a[href='{href}']").first.click()
            expect(frame.locator(place)).to_be_in_viewport()
        assert page.url == before  # MLflow itself stayed put
        assert not [m for m in console if "blob:" in m], console  # e.g. "Not allowed to load local resource"
        page.screenshot(path=str(tmp_path / "report-html.png"))


def test_report_markdown_links_are_inactive_not_dead(page, server, plotted, tmp_path):
    with explained(page, server, tmp_path):
        open_artifact(page, server, plotted, "REPORT.md")
        expect(page.get_by_role("heading", name="dpstudy claims report", exact=True)).to_be_visible()
        expect(page.get_by_text(MLFLOW_NOTE.strip("*"), exact=True)).to_be_visible()  # points to REPORT.html
        links = page.locator("a[href*='figures/']")
        assert links.count() >= len(FIGURES)
        for link in links.all():
            href = link.get_attribute("href")
            if link.get_attribute("aria-disabled") != "true":
                assert server.status(href) != 404, f"REPORT.md links to {href}, a 404 in MLflow"
        # clicking an inactive link goes nowhere: no new page, no request for the figure
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        before = page.url
        links.first.click(force=True)
        page.wait_for_timeout(500)
        assert page.url == before and len(page.context.pages) == 1
        assert not [u for u in requests if "/figures/" in u and "get-artifact" not in u]


def test_each_figure_is_a_run_image(page, server, plotted, tmp_path):
    with explained(page, server, tmp_path):
        page.goto(f"{server.url}/#/experiments/{plotted.experiment_id}/runs/{plotted.run_id}")
        page.get_by_role("tab", name="Model metrics").click()
        for name in FIGURES:
            key = Path(name).stem
            page.get_by_placeholder("Search metric charts").fill(key)
            image = page.locator(f"img[src*='path=images%2F{key}%2B']").first
            expect(image).to_be_visible()
            assert image.evaluate("img => img.complete && img.naturalWidth") > 0, f"run image {key} did not load"
