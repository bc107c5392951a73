"""What a person sees while a stage runs: a progress bar on a terminal, one line per finished
configuration in logs (inside `dvc repro` output is not a terminal), and a closing table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# tqdm is imported where it is used: importing it costs ~80 ms of CPU (its version lookup reads
# package metadata), which `dpstudy --help` and a one-line argument error should not pay.


def progress(items: Iterable, desc: str, total: int | None = None):
    """A tqdm bar that hides itself when stderr is not a terminal (``disable=None``)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """Print above any active bar, flushed at once so log order matches event order."""
    from tqdm import tqdm

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
