"""What a person sees while a stage runs: a progress bar on a terminal, one line per finished
configuration in logs (inside `dvc repro` output is not a terminal), and a closing table."""

from __future__ import annotations

from typing import Iterable, Sequence

from tqdm import tqdm


def progress(items: Iterable, desc: str, total: int | None = None):
    """A tqdm bar that hides itself when stderr is not a terminal (``disable=None``)."""
    return tqdm(items, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """Print above any active bar, flushed at once so log order matches event order."""
    tqdm.write(line)


def format_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    def line(values):
        return "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(values, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").isdigit()
