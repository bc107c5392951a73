"""The study figures: the training stages' result tables drawn as PNGs (the `plot` stage's library).

`make_figures(results, out_dir)` reads the tables with `report.tables.load_tables` (every input is
checked before anything is drawn: a missing file or column is a one-line `UserError` naming the
stage that writes it), then writes one PNG per entry of `FIGURES`, each atomically. One module per
study (study_a, study_b, study_c), one function per figure, shared helpers in `common`.

Lines are means over seeds; error bars and shaded bands are ± one sample standard deviation over
seeds and appear only where there are at least two finite values (one seed, or a nan on a CPU-only
run, draws none). Where a seed has several rows (DDP's lr rules), they are averaged within the seed
first, so a bar is never a spread over lr rules. Each footnote says how many seeds the lines
average. Epochs are numbered as epochs.csv numbers them (from 0: the first epoch is 0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from ...claims.registry import DECLARATIONS
from ...fsutil import atomic_path
from ..tables import INPUTS, Tables, load_tables
from . import study_a, study_b, study_c
from .common import DPI, EPOCH_LABEL, Sizes
from .study_c import reached

__all__ = [
    "DPI",
    "EPOCH_LABEL",
    "FIGURES",
    "INPUTS",
    "Tables",
    "draw",
    "load_tables",
    "make_figures",
    "reached",
    "write_figures",
]

_DRAW: dict[str, Callable[[Tables, Sizes], Figure]] = {
    "A1_A2_data_wait_utilization.png": study_a.a1_a2,
    "A3_workers.png": study_a.a3,
    "A4_lr_scaling.png": study_a.a4,
    "B1_B3_B4_epoch_time.png": study_b.b1_b4,
    "B2_device_balance.png": study_b.b2,
    "B5_ddp_accuracy.png": study_b.b5,
    "C1_C3_adaptive_classification.png": study_c.c1_c3,
    "C4_adaptive_restoration.png": study_c.c4,
    "X1_graph_utilization.png": study_a.x1,
}
# Each figure and the claims it shows: those whose declaration names it (a claim names its figure).
FIGURES: dict[str, tuple[str, ...]] = {name: tuple(c.id for c in DECLARATIONS if c.figure == name) for name in _DRAW}


def draw(name: str, tables: Tables, test_images: Sizes | None = None) -> Figure:
    """The figure ``name`` (a `FIGURES` key) drawn from `load_tables`' DataFrames; ``test_images``:
    the test split's size per dataset, stated beside accuracies where known."""
    return _DRAW[name](tables, test_images or {})


def make_figures(results: Path, out_dir: Path, test_images: Sizes | None = None) -> list[Path]:
    """Write every figure into out_dir (created), return the paths written, in FIGURES order."""
    return write_figures(load_tables(Path(results)), out_dir, test_images)


def write_figures(tables: Tables, out_dir: Path, test_images: Sizes | None = None) -> list[Path]:
    """`make_figures` for tables already read with `load_tables`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FIGURES:
        path = out_dir / name
        with atomic_path(path) as tmp:
            draw(name, tables, test_images).savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        written.append(path)
    return written
