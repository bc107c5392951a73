"""`dvc plots show` with no network: every interactive plot of dvc.yaml renders in headless Chromium.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline (clusters, the container)
every interactive plot is blank. .dvc/config names .dvc/plots/offline_page.html as the page
(`plots.html_template`); it loads those libraries from build/dvc-plots/, which `make plots-assets`
(a prerequisite of `make test` and `make repro`) fetches from the npm registry, and only where they
are missing from the CDN.

A tiny repository is built here: this project's dvc.yaml (every plot definition, as is), its
.dvc/config and .dvc/plots templates, build/dvc-plots, small CSVs shaped like a real run's tables
and eight PNGs (one wider than the window). Plain `dvc plots show` writes dvc_plots/index.html;
Chromium opens it offline with every non-file request aborted and recorded, and each vega plot must
have drawn a non-empty canvas or svg, each PNG must fit the window, and nothing may have been
requested from the network. Also checked: the generated specs (the loss plot has a panel per sweep,
the throughput axes are logarithmic, the world-size axis has whole-number ticks), and that without
build/dvc-plots each plot says to run `make plots-assets` instead of staying blank.

Without build/dvc-plots here (`make plots-assets` not run) the tests skip; without Chromium the
browser tests skip, or fail where DPSTUDY_REQUIRE_BROWSER=1 (CI, see .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import dvc, make_png
from mlflow_browser import browser  # noqa: F401  (the fixture: Debian's chromium, skip or fail as CI says)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "build" / "dvc-plots"  # `make plots-assets`
LIBRARIES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
VIEWPORT = {"width": 1280, "height": 900}

# Small tables with the columns of a real quick run's (only those a plot reads, plus its keys).
RUNS_HEADER = "series,sweep,world,global_batch,data_wait_fraction,epoch_time_s"
EPOCHS_HEADER = "series,sweep,cum_steps,cum_time_s,epoch,train_loss,test_accuracy,test_psnr"


def _epochs(rows: list[tuple[str, str]]) -> str:
    lines = [EPOCHS_HEADER]
    for series, sweep in rows:
        for epoch in range(3):
            lines.append(
                f"{series},{sweep},{45 * (epoch + 1)},{2.5 * (epoch + 1):.1f},{epoch},"
                f"{2.2 / (epoch + 1):.3f},{0.5 + 0.15 * epoch:.2f},{14 + 1.5 * epoch:.1f}"
            )
    return "\n".join(lines) + "\n"


TABLES = {
    "results/profile_dataloader/throughput.csv": "series,batch_size,images_per_s\n"
    '"standard, 0 workers",16,2499.9\n"standard, 0 workers",256,2874.3\n'
    "resident,16,121716.1\nresident,256,430736.2\n",
    "results/profile_dataloader/workers.csv": "series,batch_size,num_workers,repeat,images_per_s\n"
    "batch 16,16,0,0,2591.7\nbatch 16,16,1,0,2086.9\nbatch 16,16,2,0,2966.3\n",
    "results/profile_dataloader/probes.csv": "series,loader,batch_size,data_wait_fraction\n"
    "standard,standard,16,0.548\nstandard,standard,64,0.706\n"
    "resident,resident,16,0.01\nresident,resident,64,0.02\n",
    "results/train_dp/runs.csv": RUNS_HEADER
    + "\nlenet_utilization single standard linear,lenet_utilization,1,16,0.52,0.87\n"
    "lenet_utilization single standard linear,lenet_utilization,1,64,0.61,0.55\n"
    "vgg single standard linear,vgg,1,32,0.2,2.3\nvgg single standard linear,vgg,1,128,0.25,1.9\n",
    "results/train_dp/epochs.csv": _epochs(
        [
            ("lenet_lr_scaling-single-resident-b16-linear-s0", "lenet_lr_scaling"),
            ("lenet_lr_scaling-single-resident-b16-linear-s1", "lenet_lr_scaling"),
            ("lenet_lr_scaling-single-resident-b256-sqrt-s0", "lenet_lr_scaling"),
            ("vgg-single-standard0w-b32-linear-s0", "vgg"),
            ("vgg-dp-standard0w-b128-linear-s0", "vgg"),
        ]
    ),
    "results/train_ddp/runs.csv": RUNS_HEADER
    + "\nvgg ddp standard none,vgg,1,32,0.2,2.32\nvgg ddp standard none,vgg,1,32,0.2,2.41\n"
    "vgg ddp standard none,vgg,2,64,0.2,1.35\nvgg ddp standard none,vgg,4,128,0.2,0.81\n",
    "results/train_ddp/epochs.csv": _epochs(
        [("vgg-ddp1-standard0w-b32-none-s0", "vgg"), ("vgg-ddp2-standard0w-b64-linear-s0", "vgg")]
    ),
    "results/train_adaptive/classification/epochs.csv": _epochs(
        [
            ("classification-fixed_small-ddp2-resident-b32-none-s0", "classification"),
            ("classification-noise_scale-ddp2-resident-b32-sqrt-s0", "classification"),
        ]
    ),
    "results/train_adaptive/restoration/epochs.csv": _epochs(
        [("restoration-fixed_small-ddp2-resident-b16-none-s0", "restoration")]
    ),
}
WIDE_PNG_PX = 1700  # wider than the window: the page must scale it, not clip it


def _plot_definitions() -> tuple[list[str], int]:
    """dvc.yaml's image plots (paths) and the number of its interactive (vega) plot definitions."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    images, vega = [], 0
    for stage in spec.get("stages", {}).values():
        for entry in stage.get("plots", []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            if name.endswith(".png"):
                images.append(name)
            else:
                vega += 1
    for entry in spec.get("plots", []):  # top level: a PNG path, or {title: definition}
        if isinstance(entry, str) and entry.endswith(".png"):
            images.append(entry)
        else:
            vega += 1
    return images, vega


def _show(repo: Path, with_assets: bool) -> Path:
    """Plain `dvc plots show` in a new tiny repository with this project's plot definitions."""
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    init = dvc("init", "-q", cwd=repo, timeout=120)
    assert init.returncode == 0, init.stderr
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # plots.html_template
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")
    if with_assets:
        shutil.copytree(ASSETS, repo / ASSETS.relative_to(REPO))
    for rel, text in TABLES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    images, _ = _plot_definitions()
    for i, rel in enumerate(images):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(make_png(WIDE_PNG_PX if i == 0 else 400, 60))
    show = dvc("plots", "show", cwd=repo, timeout=300)
    assert show.returncode == 0, show.stdout + show.stderr
    assert "failed to load" not in (show.stdout + show.stderr).lower(), show.stdout + show.stderr
    html = repo / "dvc_plots" / "index.html"
    assert html.is_file(), show.stdout
    return html


@pytest.fixture(scope="module")
def plots_html(tmp_path_factory) -> Path:
    missing = [name for name in LIBRARIES if not (ASSETS / name).is_file()]
    if missing:
        pytest.skip(
            f"{ASSETS.relative_to(REPO)}/ lacks {', '.join(missing)}: run `make plots-assets` "
            "(fetches vega from the npm registry)"
        )
    return _show(tmp_path_factory.mktemp("plots_repo"), with_assets=True)


def _open_offline(browser, html: Path):
    """The page in a fresh offline context; every request but file:// is aborted and recorded."""
    requested, errors = [], []

    def refuse(route):
        requested.append(route.request.url)
        route.abort()

    context = browser.new_context(offline=True, viewport=VIEWPORT)
    context.route(re.compile(r"^(?!file:)"), refuse)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(html.as_uri())
    return context, page, requested, errors


def _specs(html: str) -> dict[str, dict]:
    """The vega-lite spec of each plot div, by div id."""
    found = re.findall(
        r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*'
        r"vegaEmbed\(",
        html,
        flags=re.S,
    )
    return {div: json.loads(spec) for div, spec in found}


def test_page_loads_vega_from_the_local_build(plots_html):
    html = plots_html.read_text(encoding="utf-8")
    sources = re.findall(r"<script[^>]+src\s*=\s*\"([^\"]+)\"", html)
    local = [src for src in sources if not src.startswith("https://cdn.jsdelivr.net/")]  # the fallback
    assert local == [f"../build/dvc-plots/{name}" for name in LIBRARIES], sources
    for src in local:
        assert (plots_html.parent / src).is_file(), src
    assert len(_specs(html)) == _plot_definitions()[1]


def test_plot_defects_fixed_in_the_specs(plots_html):
    specs = _specs(plots_html.read_text(encoding="utf-8"))
    loss = specs["results_train_dp_epochs_csv"]  # A4/B: LeNet and VGG in separate panels
    assert loss["facet"]["row"]["field"] == "sweep"
    assert loss["resolve"]["scale"]["color"] == "independent"
    assert loss["spec"]["encoding"]["color"]["legend"]["labelLimit"] == 0  # names not cut
    throughput = specs["results_profile_dataloader_throughput_csv"]  # A1/A3: log axes
    assert throughput["encoding"]["y"]["scale"]["type"] == "log"
    world = specs["results_train_ddp_runs_csv"]  # B4: 1, 2, 4, ...
    assert world["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}


def test_every_plot_renders_in_chromium_offline(plots_html, browser):
    expected = sorted(_specs(plots_html.read_text(encoding="utf-8")))
    context, page, requested, errors = _open_offline(browser, plots_html)
    try:
        try:
            page.wait_for_function(
                """ids => ids.every(id => { const d = document.getElementById(id);
                        const g = d && d.querySelector('canvas, svg');
                        return g && g.getBoundingClientRect().width > 0; })""",
                arg=expected,
                timeout=60_000,
            )
        except Exception as e:  # playwright's TimeoutError: say what the page tried instead
            pytest.fail(
                f"not every vega plot rendered ({type(e).__name__}); "
                f"network requests refused: {requested}; page errors: {errors}"
            )
        drawn = page.evaluate(
            """ids => Object.fromEntries(ids.map(id => {
                    const g = document.getElementById(id).querySelector('canvas, svg');
                    const r = g.getBoundingClientRect(); return [id, [r.width, r.height]]; }))""",
            expected,
        )
        images = page.evaluate("""() => Array.from(document.images).map(i =>
                [i.getAttribute('src'), i.naturalWidth, i.getBoundingClientRect().right])""")
    finally:
        context.close()
    assert not requested, f"network requests: {requested}"
    assert not errors, errors
    assert all(w > 50 and h > 50 for w, h in drawn.values()), drawn
    assert len(images) == len(_plot_definitions()[0]), images
    for src, natural, right in images:
        assert natural > 0, f"{src} did not load"
        assert right <= VIEWPORT["width"], f"{src} runs past the window ({right:.0f} px): clipped"


def test_without_the_assets_each_plot_says_what_to_run(plots_html, browser, tmp_path):
    """No `make plots-assets` and no network: `dvc plots show` still works and every vega plot
    names the fix (after one CDN attempt, which is refused here), instead of a blank page."""
    html = _show(tmp_path, with_assets=False)
    expected = sorted(_specs(html.read_text(encoding="utf-8")))
    context, page, requested, errors = _open_offline(browser, html)
    try:
        page.wait_for_load_state("load")
        texts = page.evaluate("ids => ids.map(id => document.getElementById(id).innerText)", expected)
    finally:
        context.close()
    assert all("make plots-assets" in text for text in texts), texts
    assert requested and all(url.startswith("https://cdn.jsdelivr.net/npm/vega") for url in requested)
    assert not [e for e in errors if "ERR_" not in e and "Failed to load resource" not in e], errors
