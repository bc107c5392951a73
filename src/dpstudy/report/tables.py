"""The training stages' result CSVs as long-form pandas DataFrames (what the figures and claims read).

`load_tables(results)` checks every input before anything is read into a frame: a missing file
names the stage that writes it, a missing column says to rerun that stage (one line each). A cell
is parsed with Python's own ``float`` (not pandas' fast parser), so a number here is bitwise the
number the CSV text denotes. Text columns stay ``str``; per-device columns ("913.3;736.0") are
text until `per_device` turns them into one row per device; `with_runs` gives evaluation or epoch
rows their configuration's columns (batch, lr rule, world, ...) by joining on the run's name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError

Tables = dict[str, pd.DataFrame]
Rows = list[dict[str, str]]

ADAPTIVE = "train_adaptive"
ADAPTIVE_TASKS = ("classification", "restoration")  # its result folders

_RUN = (
    "name",
    "sweep",
    "model",
    "dataset",
    "mode",
    "world",
    "devices",
    "loader",
    "batch",
    "global_batch",
    "lr_rule",
    "seed",
    "epochs",
    "steps",
    "train_loss",
    "epoch_time_s",
    "data_wait_fraction",
    "device_mem_mib",
    "utilization_pct",
)
_EPOCH = ("series", "epoch", "cum_steps", "cum_time_s", "global_batch", "lr", "train_loss")
# Every input: relative path -> (the stage that writes it, the columns the figures read).
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "profile_dataloader/probes.csv": (
        "profile_dataloader",
        (
            "series",
            "loader",
            "step",
            "batch_size",
            "repeat",
            "data_wait_fraction",
            "utilization_pct",
            "utilization_source",
            "device_busy_pct",
        ),
    ),
    "profile_dataloader/throughput.csv": ("profile_dataloader", ("series", "batch_size", "images_per_s")),
    "profile_dataloader/workers.csv": ("profile_dataloader", ("batch_size", "num_workers", "images_per_s")),
    "train_dp/runs.csv": ("train_dp", (*_RUN, "test_accuracy")),
    "train_dp/epochs.csv": ("train_dp", _EPOCH),
    "train_ddp/runs.csv": ("train_ddp", (*_RUN, "test_accuracy")),
    "train_ddp/epochs.csv": ("train_ddp", (*_EPOCH, "test_accuracy")),
    **{
        f"{ADAPTIVE}/{task}/{kind}.csv": (ADAPTIVE, columns)
        for task in ADAPTIVE_TASKS
        for kind, columns in (
            ("runs", ("name", "schedule", "seed", "target", "steps", "allreduces", "run_images_per_s")),
            ("epochs", _EPOCH),
        )
    },
    f"{ADAPTIVE}/summary.csv": (
        ADAPTIVE,
        (
            "task",
            "schedule",
            "metric",
            "time_to_target_s",
            "time_to_target_s_std",
            "speedup",
            "run_images_per_s",
            "run_images_per_s_std",
            "allreduces",
        ),
    ),
}

# Columns that are text wherever they appear (names, kinds, and the per-device lists "a;b").
TEXT = frozenset(
    {
        "name",
        "series",
        "sweep",
        "task",
        "schedule",
        "model",
        "dataset",
        "mode",
        "loader",
        "step",
        "lr_rule",
        "outcome",
        "metric",
        "utilization_source",
        "study",
        "configuration",
        "checkpoint",
        "device_mem_mib",
    }
)
# Per-device lists only in some tables (profile_dataloader's utilization_pct is one number).
PER_DEVICE_TEXT = {
    "train_dp/runs.csv": {"utilization_pct"},
    "train_ddp/runs.csv": {"utilization_pct"},
    **{f"{ADAPTIVE}/{task}/runs.csv": {"utilization_pct"} for task in ADAPTIVE_TASKS},
}


def load_rows(results: Path) -> dict[str, Rows]:
    """Every input as rows of strings (csv.DictReader); all files and columns checked first."""
    results = Path(results)
    if not results.is_dir():
        raise UserError(f"{results} does not exist: run the training stages first (dvc repro)")
    missing: dict[str, list[str]] = {}
    for rel, (stage, _) in INPUTS.items():
        if not (results / rel).is_file():
            missing.setdefault(stage, []).append(str(results / rel))
    if missing:
        what = "; ".join(f"{', '.join(files)} (written by the {stage} stage)" for stage, files in missing.items())
        raise UserError(f"missing {what}: run `dvc repro {' '.join(missing)}` first")
    rows = {}
    for rel, (stage, columns) in INPUTS.items():
        with open(results / rel, newline="") as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent and reader.fieldnames:  # no header at all: a grid with no runs (drawn as "no data")
                raise UserError(
                    f"{results / rel} has no column {', '.join(absent)}: it is from another version "
                    f"of the {stage} stage; rerun it (dvc repro -f {stage})"
                )
            rows[rel] = list(reader)
    return rows


def load_tables(results: Path) -> Tables:
    """Every input table as a DataFrame (see `frame`), keyed as `INPUTS`; checked as `load_rows`."""
    return frames(load_rows(results))


def frames(rows: dict[str, Rows]) -> Tables:
    """`load_rows`' tables as DataFrames."""
    return {rel: frame(table, rel) for rel, table in rows.items()}


def read_table(path: Path) -> pd.DataFrame:
    """One CSV file (e.g. evaluate/evaluations.csv) as a DataFrame typed as `frame` types."""
    with open(path, newline="") as fh:
        return frame(list(csv.DictReader(fh)), Path(path).name)


def frame(rows: Rows, rel: str = "") -> pd.DataFrame:
    """Rows of strings as a DataFrame: a text column (`TEXT`, a per-device list, or one with a cell
    that is not a number) stays str; other columns become int64 where every cell is an integer,
    float64 otherwise (an empty cell: nan). An input's declared numeric columns are numbers even
    with unparsable cells (nan: not measured). An empty file gives the declared columns, no rows."""
    declared = INPUTS.get(rel, ("", ()))[1]
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object if _is_text(c, rel) else float) for c in declared})
    columns = list(rows[0])
    out = {}
    for c in columns:
        cells = [r.get(c) or "" for r in rows]
        out[c] = _column(cells, text=_is_text(c, rel), numeric=c in declared)
    return pd.DataFrame(out)


def _is_text(column: str, rel: str) -> bool:
    return column in TEXT or column in PER_DEVICE_TEXT.get(rel, ())


def _column(cells: list[str], *, text: bool, numeric: bool) -> np.ndarray:
    if not text:
        ints = _parse(cells, int)
        if ints is not None:
            return np.array(ints, dtype=np.int64)
        floats = _parse(cells, float, empty=True)
        if floats is not None or numeric:
            return np.array([num(c) for c in cells], dtype=np.float64)
    return np.array(cells, dtype=object)


def _parse(cells: list[str], kind, empty: bool = False) -> list | None:
    """Every cell as ``kind`` (empty cells as nan where ``empty``), or None if one is not."""
    out = []
    for cell in cells:
        if empty and not cell.strip():
            out.append(np.nan)
            continue
        try:
            out.append(kind(cell))
        except ValueError:
            return None
    return out


def num(text: str) -> float:
    """A CSV cell as a float: empty or unparsable cells are nan (not measured)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan


def per_device(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Long form of a per-device column ("913.3;736.0"): one row per device, the other columns
    repeated, ``device`` (0, 1, ...) and ``column`` as a float. A row with no value has no devices."""
    cells = df[column].map(
        lambda v: [] if isinstance(v, float) and np.isnan(v) else [p for p in str(v).split(";") if p.strip()]
    )
    long = df.drop(columns=[column]).assign(**{column: cells}).explode(column, ignore_index=False)
    long = long[long[column].notna()]
    long = long.assign(
        device=long.groupby(level=0).cumcount().astype(np.int64), **{column: long[column].map(num).astype(np.float64)}
    )
    return long.reset_index(drop=True)


def with_runs(evals: pd.DataFrame, runs: pd.DataFrame, on: str = "name") -> pd.DataFrame:
    """``evals`` rows (evaluations.csv; or epochs.csv with ``on="series"``) joined with their
    configuration's runs.csv row by run name, so batch, lr rule, world size and seed are columns.
    Columns both have keep ``evals``' values; rows without a run are dropped; order is ``evals``'."""
    extra = [c for c in runs.columns if c not in evals.columns or c == "name"]
    right = runs[extra].rename(columns={"name": on}) if on != "name" else runs[extra]
    return evals.merge(right, on=on, how="inner", sort=False)
