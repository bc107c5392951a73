"""The claims report: each claim of the three studies, the evidence this run measured, a verdict.

`judge(tables, evaluations, rules)` applies one stated rule per claim (thresholds in params.yaml's
``plot.rules``) to the result tables and returns a `Verdict` per claim. Every rule works the same
way (`decide`): the claim's effect is computed once per seed, pairing configurations that share a
seed (e.g. the large batch's accuracy minus the small batch's, seed by seed), and a t-interval over
the seeds (``rules.confidence``, 95%) is set against the rule's threshold:

- **supported**: the whole interval lies on the claim's side of the threshold;
- **not supported**: the whole interval lies on the other side;
- **inconclusive**: the interval touches or straddles the threshold, or one seed gave no interval;
- **not testable here**: the run lacks what the claim needs (no GPU, one GPU, one process).

Thresholds are relative (ratios of times, throughputs and utilizations; shares of a step; or
differences of test accuracy and PSNR, which do not depend on the hardware), so a rule means the
same on a laptop CPU and on an H100. Effects are averaged as they are, ratios too.

Accuracy and PSNR come from the evaluate stage (checkpoints scored again on the test split); times
from the training stages' own tables. `render.render` writes the verdicts as REPORT.md and
`html.render_html` that text as REPORT.html.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from ..config import ReportRules
from ..devices import cpu_count
from .figures import (FIGURES, Rows, Stat, Tables, device_mean, groups, mean_std, num, per_device, per_seed, ratios,
                      summarize)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "not supported", "inconclusive", "not testable here"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE)

CLAIMS = {
    "A1": "GPU utilization falls as batch size grows, with and without nn.DataParallel.",
    "A2": "The cause is data-loading speed: the GPU waits for the next batch.",
    "A3": "More DataLoader num_workers raises utilization.",
    "A4": "With large batches, scaling the learning rate (linear, with warmup) gives loss curves and "
          "accuracy comparable to small batches.",
    "B1": "Multi-GPU training under DataParallel is poor: little or no speed-up over one GPU.",
    "B2": "DataParallel loads GPUs unevenly: device 0 holds more memory and work.",
    "B3": "Hardware and hyperparameters (batch size, workers) are not the main cause.",
    "B4": "DDP trains faster than DataParallel.",
    "B5": "DDP needs care to keep accuracy as GPUs are added (the effective batch grows).",
    "C1": "A large fixed batch lowers accuracy relative to a small fixed batch.",
    "C2": "Gradually increasing the batch size and the learning rate keeps accuracy close to the small "
          "fixed batch ...",
    "C3": "... while improving parallel scalability (fewer, larger steps: fewer all-reduces, higher throughput).",
    "C4": "This holds for image restoration (PSNR) as well as classification.",
    "X1": "(a dpstudy claim, beyond the papers) With data resident on the device and the step captured as a CUDA "
          "graph, utilization no longer falls as batch size grows.",
}
STUDY_TITLES = {"A": "Cao & Shen 2023: LeNet, GPU utilization, data loading, large-batch lr",
                "B": "Xue 2023: VGG16, DataParallel vs DistributedDataParallel",
                "C": "Lee et al. 2019: adaptive mini-batch size at run time",
                "X": "dpstudy beyond the papers: feeding the GPU fully (a claim of this package, not of the seeds)"}


@dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str  # the numbers measured, per configuration
    rule: str      # how the verdict follows from them
    why: str = ""  # not testable: what the run lacks; inconclusive: which interval reaches its threshold
    effect: str = ""  # the effect(s) judged: mean ± std over seeds, the interval, each part's verdict
    seeds: str = ""   # how many seeds (or repeated measurements) the verdict rests on

    @property
    def figure(self) -> str:
        return next((name for name, claims in FIGURES.items() if self.claim in claims), "")


# --------------------------------------------------------------------------------------------
# The verdict of one effect: per-seed values, a threshold, the claim's side


@dataclass(frozen=True)
class Decision:
    """An effect measured once per seed, its t-interval, and what it says about a threshold."""

    verdict: str      # supported | not supported | inconclusive
    mean: float
    std: float        # sample standard deviation over seeds (nan with fewer than two)
    n: int            # finite per-seed values
    low: float        # the interval (nan with fewer than two values)
    high: float
    threshold: float
    above: bool       # the claim's side of the threshold: above it (True) or below it
    confidence: float = 0.95
    per: str = "seed"  # what one value is: a seed, or a repeated measurement

    def text(self, fmt: Callable[[float], str]) -> str:
        """``+0.012 ± 0.004 over 3 seeds, 95% interval +0.002 to +0.022``."""
        if self.n == 0:
            return "no finite measurement"
        if self.n == 1:
            return f"{fmt(self.mean)} from one {self.per} (no interval)"
        return (f"{fmt(self.mean)} ± {fmt(self.std).lstrip('+')} over {self.n} {self.per}s, "
                f"{self.confidence:.0%} interval {fmt(self.low)} to {fmt(self.high)}")

    def reason(self, fmt: Callable[[float], str]) -> str:
        """Why the decision is inconclusive (empty when it is not)."""
        if self.verdict != INCONCLUSIVE:
            return ""
        if self.n == 0:
            return "no finite measurement"
        if self.n == 1:
            return f"one {self.per}: no interval"
        return (f"the {self.confidence:.0%} interval {fmt(self.low)} to {fmt(self.high)} reaches the "
                f"threshold {fmt(self.threshold)}")


def decide(values: Iterable[float], threshold: float, *, above: bool, confidence: float = 0.95,
           per: str = "seed") -> Decision:
    """The verdict of one effect given once per seed (nan values are not measurements).

    A two-sided t-interval of the mean at ``confidence``: entirely on the claim's side of the
    threshold (above it when ``above``, else below) is supported, entirely on the other side not
    supported; touching or straddling it, or fewer than two values (no interval), inconclusive."""
    stat = mean_std(values)
    if stat.n < 2:
        return Decision(INCONCLUSIVE, stat.mean, stat.std, stat.n, math.nan, math.nan, threshold, above,
                        confidence, per)
    from scipy import stats  # scipy comes with scikit-learn; imported here, where it is needed

    half = float(stats.t.ppf((1 + confidence) / 2, stat.n - 1)) * stat.std / math.sqrt(stat.n)
    low, high = stat.mean - half, stat.mean + half
    claim_side = low > threshold if above else high < threshold
    other_side = high < threshold if above else low > threshold
    verdict = SUPPORTED if claim_side else NOT_SUPPORTED if other_side else INCONCLUSIVE
    return Decision(verdict, stat.mean, stat.std, stat.n, low, high, threshold, above, confidence, per)


@dataclass(frozen=True)
class Part:
    """One judged effect of a claim (a claim can need several: one per mode, per batch size)."""

    label: str
    decision: Decision
    fmt: Callable[[float], str]
    note: str = ""  # what overrode the interval (e.g. a diverged seed)

    def text(self) -> str:
        d = self.decision
        side = "above" if d.above else "below"
        return (f"{self.label}: {d.text(self.fmt)} (claim side: {side} {self.fmt(d.threshold)}; "
                f"{self.note + ': ' if self.note else ''}{d.verdict})")


def combine(parts: Sequence[Part], every: bool = True) -> tuple[str, str]:
    """(verdict, why) of a claim that needs ``every`` part to hold (else: some part).

    every: one part not supported decides against, all supported for; any: one supported decides
    for, all not supported against. Anything else is inconclusive, with the undecided parts' reasons."""
    verdicts = [p.decision.verdict for p in parts]
    if not parts:
        return INCONCLUSIVE, "nothing to judge"
    decisive, other = (NOT_SUPPORTED, SUPPORTED) if every else (SUPPORTED, NOT_SUPPORTED)
    if decisive in verdicts:
        return decisive, ""
    if all(v == other for v in verdicts):
        return other, ""
    return INCONCLUSIVE, "; ".join(f"{p.label}: {p.decision.reason(p.fmt)}" for p in parts
                                   if p.decision.verdict == INCONCLUSIVE)


def _from_parts(claim: str, parts: Sequence[Part], evidence: str, rule: str, seeds: str,
                every: bool = True) -> Verdict:
    verdict, why = combine(parts, every)
    return Verdict(claim, verdict, evidence, rule, why, "; ".join(p.text() for p in parts), seeds)


# --------------------------------------------------------------------------------------------
# Reading the tables


def _number(spec: str, unit: str = ""):
    """A formatter of finite numbers (``format(x, spec)`` + ``unit``); nan and inf read "n/a"."""
    return lambda x: f"{x:{spec}}{unit}" if math.isfinite(x) else "n/a"


_pct = _number(".0%")          # a share: ``62%``
_util_pct = _number(".1f", "%")  # a utilization already in percent (0-100): ``2.5%``
_pct1 = _number(".1%")
_acc = _number(".3f")          # an accuracy: ``0.988``
_signed = _number("+.3f")      # an accuracy difference: ``+0.012``
_db = _number(".2f", " dB")
_signed_db = _number("+.2f", " dB")
_x = _number(".2f", "x")       # a ratio: ``1.52x``


def _ms(stat: Stat, fmt: Callable[[float], str]) -> str:
    """``0.975 ± 0.004`` (the std only where there are two or more values)."""
    return fmt(stat.mean) + (f" ± {fmt(stat.std).lstrip('+')}" if math.isfinite(stat.std) else "")


def _runs(tables: Tables, stage: str, sweep: str) -> Rows:
    return [r for r in tables[f"{stage}/runs.csv"] if r["sweep"] == sweep]


def _evals(evaluations: Rows, stage: str, sweep: str) -> Rows:
    return [r for r in evaluations if r["stage"] == stage and r["sweep"] == sweep]


def _per_seed(rows: Rows, value: Callable[[dict], float]) -> dict[str, float]:
    """``value(row)`` per seed, the mean where a seed has several rows (e.g. lr rules, modes)."""
    return {seed: mean_std(value(r) for r in group).mean for seed, group in groups(rows, _seed).items()}


def _paired(a: dict[str, float], b: dict[str, float], f: Callable[[float, float], float]) -> list[float]:
    """``f(a[s], b[s])`` for every seed s both have: the per-seed effect of a paired comparison."""
    return [f(a[s], b[s]) for s in sorted(a.keys() & b.keys(), key=_seed_order)]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _seed(row: dict) -> str:
    return str(row.get("seed", ""))


def _seed_order(seed: str):
    value = num(seed)
    return (0, value, "") if math.isfinite(value) else (1, 0.0, seed)


def _seeds(rows: Rows) -> str:
    """``3 seeds (0, 1, 2) per configuration``: the seeds behind a claim's verdict."""
    seeds = sorted({_seed(r) for r in rows if _seed(r)}, key=_seed_order)
    if not seeds:
        return "none"
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(seeds)}) per configuration"


def _test_images(rows: Rows) -> str:
    """`` (test set: 359 images)``: the size of the test split behind an accuracy or PSNR."""
    sizes = sorted({int(num(r["test_images"])) for r in rows if math.isfinite(num(r.get("test_images", "")))})
    return f" (test set: {'/'.join(map(str, sizes))} images)" if sizes else ""


def _gpu_sampled(tables: Tables) -> bool:
    """Whether utilization was read from a GPU (NVML) rather than the system CPU."""
    return any(r["utilization_source"].startswith("gpu") for r in tables["profile_dataloader/probes.csv"])


def _dp_devices(tables: Tables) -> int:
    """How many devices DataParallel spanned in train_dp's VGG grid (1 on the CPU or one GPU)."""
    return max((int(num(r["devices"])) for r in _runs(tables, "train_dp", "vgg") if r["mode"] == "dp"), default=0)


def _batch_of(row: dict) -> int:
    return int(num(row["global_batch"]))


def _util(row: dict) -> float:
    return device_mean(row["utilization_pct"])


def _wait(row: dict) -> float:
    return num(row["data_wait_fraction"])


def _interval(rules: ReportRules) -> str:
    return f"{rules.confidence:.0%} interval over seeds"


# --------------------------------------------------------------------------------------------
# One rule per claim


def judge(tables: Tables, evaluations: Rows, rules: ReportRules) -> list[Verdict]:
    gpu, dp_n = _gpu_sampled(tables), _dp_devices(tables)
    out = [_a1(tables, rules, gpu), _a2(tables, rules, gpu), _a3(tables, rules), _a4(tables, evaluations, rules)]
    out += _b(tables, evaluations, rules, dp_n)
    out += _c(tables, evaluations, rules)
    out.append(_x1(tables, rules, gpu))
    return out


def _series_text(rows: Rows, value: Callable[[dict], float], fmt: Callable[[float], str]) -> str:
    """``80% ± 2% at batch 16, 60% at batch 256``: mean (± std over seeds) per global batch."""
    return ", ".join(f"{_ms(s, fmt)} at batch {b}" for b, s in summarize(rows, _batch_of, value).items())


def _a1(tables: Tables, rules: ReportRules, gpu: bool) -> Verdict:
    rows = [r for r in _runs(tables, "train_dp", "lenet_utilization") if r["loader"] == "standard"]
    rule = (f"with the standard DataLoader, the relative fall of utilization from the smallest to the largest "
            f"batch (1 - largest/smallest, per seed) is computed in every mode (single, DP); supported if its "
            f"{_interval(rules)} lies entirely above {rules.a1_min_relative_drop:.0%} in every mode, not supported "
            f"if entirely below it in some mode. A ratio of utilizations means the same on any GPU")
    by_mode = groups(rows, lambda r: r["mode"])
    evidence = "; ".join(f"{mode}: {_series_text(group, _util, _util_pct)}" for mode, group in by_mode.items())
    if not gpu:
        return Verdict("A1", NOT_TESTABLE, f"system CPU utilization, shown for context only: {evidence}", rule,
                       "no GPU: the claim is about an accelerator's utilization, and here the CPU both loads and "
                       "computes, so its utilization cannot show a device idling while it waits for data. What a "
                       "CPU run can show is A2's data-wait share, timed the same way on any device",
                       seeds=_seeds(rows))
    parts = []
    for mode, group in by_mode.items():
        batches = sorted({_batch_of(r) for r in group})
        if len(batches) < 2:
            continue
        small, big = (_per_seed([r for r in group if _batch_of(r) == b], _util) for b in (batches[0], batches[-1]))
        drops = _paired(small, big, lambda s, l: 1 - l / s if s > 0 else math.nan)
        parts.append(Part(f"{mode}, relative fall from batch {batches[0]} to {batches[-1]}",
                          decide(drops, rules.a1_min_relative_drop, above=True, confidence=rules.confidence), _pct1))
    if not parts:
        return Verdict("A1", NOT_TESTABLE, evidence or "no runs", rule, "lenet_utilization needs two batch sizes",
                       seeds=_seeds(rows))
    return _from_parts("A1", parts, f"GPU utilization (NVML): {evidence}", rule, _seeds(rows))


def _x1(tables: Tables, rules: ReportRules, gpu: bool) -> Verdict:
    probes = tables["profile_dataloader/probes.csv"]
    rule = (f"profile_dataloader's training probes with the resident loader and CUDA-graph steps: the relative fall "
            f"of NVML utilization from the smallest to the largest batch (1 - largest/smallest), paired by probe "
            f"repeat; supported if its {rules.confidence:.0%} interval over repeats lies entirely below "
            f"{rules.x1_max_relative_drop:.0%}, not supported if entirely above. The eager probes' fall and the "
            f"profiler's device busy share are quoted beside it. A ratio of utilizations means the same on any GPU")

    def series(rows: Rows, value: Callable[[dict], float]) -> str:
        return ", ".join(f"{_ms(stat, _util_pct)} at batch {int(b)}"
                         for b, stat in summarize(rows, _probe_batch, value).items())

    by = groups(probes, lambda r: (r["loader"], r.get("step", "eager")))
    evidence = "; ".join(f"{loader} loader, {step} step: NVML {series(rows, _probe_util)}; device busy "
                         f"{series(rows, lambda r: num(r.get('device_busy_pct', '')))}"
                         for (loader, step), rows in by.items() if loader == "resident")
    trained = [r for r in tables["train_dp/runs.csv"] if r.get("step") == "graph"]
    for sweep, rows in groups(trained, lambda r: r["sweep"]).items():
        evidence += (f"; train_dp {sweep} (CUDA-graph steps, resident data, over seeds): NVML "
                     f"{_series_text(rows, _util, _util_pct)}; device busy "
                     f"{_series_text(rows, lambda r: num(r.get('device_busy_pct', '')), _util_pct)}")
    repeats = max((int(num(r.get("repeat", "0"))) + 1 for r in probes), default=0)
    seeds = f"{repeats} repeated probe{'s' if repeats != 1 else ''} per (loader, step, batch size)"
    if not gpu:
        return Verdict("X1", NOT_TESTABLE, evidence or "no probes", rule,
                       "no GPU: X1 is about a GPU's utilization, and a CUDA graph needs a GPU "
                       "(profile_dataloader.probe.step: [eager, graph] on a GPU tests it)", seeds=seeds)
    graph = by.get(("resident", "graph"), [])
    batches = sorted({int(num(r["batch_size"])) for r in graph})
    if len(batches) < 2:
        return Verdict("X1", NOT_TESTABLE, evidence or "no probes", rule,
                       "needs resident probes with CUDA-graph steps at two batch sizes or more "
                       "(profile_dataloader.probe.step must hold graph)", seeds=seeds)
    small, big = ({str(r.get("repeat", i)): _probe_util(r) for i, r in enumerate(graph)
                   if int(num(r["batch_size"])) == b} for b in (batches[0], batches[-1]))
    drops = _paired(small, big, lambda s, l: 1 - l / s if s > 0 else math.nan)
    part = Part(f"resident loader, graph step, relative fall from batch {batches[0]} to {batches[-1]}",
                decide(drops, rules.x1_max_relative_drop, above=False, confidence=rules.confidence, per="repeat"),
                _pct1)
    return _from_parts("X1", [part], evidence, rule, seeds)


def _probe_batch(row: dict) -> float:
    return num(row["batch_size"])


def _probe_util(row: dict) -> float:
    """A probe's NVML utilization (nan: its window was too short for NVML's averaging period)."""
    return num(row["utilization_pct"])


def _a2(tables: Tables, rules: ReportRules, gpu: bool) -> Verdict:
    rows = _runs(tables, "train_dp", "lenet_utilization")
    factor = 1 / rules.a2_resident_factor
    rule = (f"at the largest batch, in every mode: the standard loader's data-wait share of each step (time blocked "
            f"on the next batch / step time), per seed, has its {_interval(rules)} entirely above "
            f"{rules.a2_min_wait_fraction:.0%}; and the resident loader (data already on the device, augmented there) "
            f"waits at most 1/{rules.a2_resident_factor:g} as long: the ratio resident/standard, paired by seed, has "
            f"its interval entirely below {factor:.2f}. Supported if both hold in every mode; not supported if either "
            f"interval lies entirely on the wrong side in some mode. Shares and ratios of time mean the same on any "
            f"hardware")
    by_mode_loader = groups(rows, lambda r: (r["mode"], r["loader"]))
    evidence = ("data-wait share of a step: "
                + "; ".join(f"{mode}, {loader} loader: {_series_text(group, _wait, _pct)}"
                            for (mode, loader), group in by_mode_loader.items()))
    if not gpu:
        evidence += (". No GPU: here the CPU computes and the loop waits for the loader as a GPU's would; the share "
                     "is timed the same way as on a GPU, so A2 is tested on this run while A1 (device utilization) "
                     "is not")
    parts = []
    for mode in dict.fromkeys(m for m, _ in by_mode_loader):
        std, res = by_mode_loader.get((mode, "standard"), []), by_mode_loader.get((mode, "resident"), [])
        if not std or not res:
            continue
        big = max(_batch_of(r) for r in std)
        standard = _per_seed([row for row in std if _batch_of(row) == big], _wait)
        resident = _per_seed([row for row in res if _batch_of(row) == big], _wait)
        parts += [Part(f"{mode}, standard loader's wait share at batch {big}",
                       decide(standard.values(), rules.a2_min_wait_fraction, above=True, confidence=rules.confidence),
                       _pct),
                  Part(f"{mode}, resident/standard wait at batch {big}",
                       decide(_paired(resident, standard, _ratio), factor, above=False, confidence=rules.confidence),
                       _x)]
    if not parts:
        return Verdict("A2", NOT_TESTABLE, "train_dp ran without both loaders", rule,
                       "lenet_utilization.loaders must hold standard and resident", seeds=_seeds(rows))
    return _from_parts("A2", parts, evidence, rule, _seeds(rows))


def _a3(tables: Tables, rules: ReportRules) -> Verdict:
    rows = tables["profile_dataloader/workers.csv"]
    by_batch = dict(sorted(groups(rows, lambda r: int(r["series"].split()[-1])).items()))
    need = 1 + rules.a3_min_gain
    rule = (f"judged at the largest batch, where loading starves the device most (the smaller batches are quoted): "
            f"the worker count with the most images/s is set against num_workers = 0, measurement by measurement; "
            f"supported if the {rules.confidence:.0%} interval of that ratio over repeated measurements lies entirely "
            f"above {need:.2f}x (at least {need:.2f}x the images/s of num_workers = 0), not supported if entirely "
            f"below. A ratio of throughputs means the same on any machine")
    if not by_batch:
        return Verdict("A3", NOT_TESTABLE, "profile_dataloader measured no worker grid", rule, "no data")
    cells = {b: {w: _repeats(group) for w, group in sorted(groups(batch_rows, _workers).items())}
             for b, batch_rows in by_batch.items()}
    evidence = []
    for b, by_workers in cells.items():
        base = mean_std(by_workers.get(0, {}).values()).mean
        evidence.append(f"batch {b}: " + ", ".join(
            f"{w} worker{'s' if w != 1 else ''} {mean_std(v.values()).mean:,.0f} images/s"
            + (f" ({mean_std(v.values()).mean / base:.2f}x)" if w and base > 0 else "") for w, v in by_workers.items()))
    repeats = max(len(v) for by_workers in cells.values() for v in by_workers.values())
    seeds = ("one measurement per (batch size, num_workers) cell: profile_dataloader does not repeat its grid, so "
             "A3 has no interval" if repeats == 1 else
             f"{repeats} repeated measurements per (batch size, num_workers) cell")
    text = "; ".join(evidence) + f"; {cpu_count()} CPU cores on this machine"
    big = max(cells)
    base = cells[big].get(0)
    workers = {w: v for w, v in cells[big].items() if w > 0}
    if not base or not workers:
        return Verdict("A3", NOT_TESTABLE, text, rule, "the grid needs num_workers = 0 and some num_workers > 0",
                       seeds=seeds)
    best = max(workers, key=lambda w: mean_std(workers[w].values()).mean)
    gains = _paired(workers[best], base, _ratio)
    part = Part(f"batch {big}, {best} workers vs 0", decide(gains, need, above=True, confidence=rules.confidence,
                                                            per="measurement"), _x)
    return _from_parts("A3", [part], text, rule, seeds)


def _workers(row: dict) -> int:
    return int(num(row["num_workers"]))


def _repeats(rows: Rows) -> dict[str, float]:
    """images/s per repeated measurement of one cell (by its `repeat` column, else by order)."""
    return {str(r.get("repeat", i)): num(r["images_per_s"]) for i, r in enumerate(rows)}


def _a4(tables: Tables, evaluations: Rows, rules: ReportRules) -> Verdict:
    evals = _evals(evaluations, "train_dp", "lenet_lr_scaling")
    by = groups(evals, lambda r: (_batch(r["configuration"]), _rule(r["configuration"])))
    batches = sorted({b for b, _ in by})
    tol = rules.a4_accuracy_tolerance
    rule = (f"per seed, the test accuracy of each larger batch trained with the linear rule (and warmup) minus the "
            f"smallest batch's (same seed, linear rule; the rules coincide there); supported if for every larger "
            f"batch the {_interval(rules)} of that difference lies entirely above -{tol:g} (within {tol:g} of the "
            f"small batch, or better), not supported if entirely below it for some batch; a diverged seed counts "
            f"against. A difference of test accuracy does not depend on the hardware")
    if len(batches) < 2 or not any(lr == "linear" for _, lr in by):
        return Verdict("A4", NOT_TESTABLE, "the lr-scaling grid needs two batch sizes and the linear rule", rule,
                       "lenet_lr_scaling grid too small", seeds=_seeds(evals))
    small = batches[0]
    ref_rows = by.get((small, "linear")) or [r for (b, _), rows in by.items() if b == small for r in rows]
    ref = _per_seed(ref_rows, lambda r: num(r["test_metric"]))
    acc = {k: mean_std(num(r["test_metric"]) for r in rows) for k, rows in by.items()}
    evidence = [f"test accuracy{_test_images(evals)}, mean ± std over seeds: "
                + "; ".join(f"batch {b}: " + _rules_text(acc, b) for b in batches)]
    runs = _runs(tables, "train_dp", "lenet_lr_scaling")
    steps = summarize(runs, _batch_of, lambda r: num(r.get("steps", "")))
    epochs = {int(num(r["epochs"])) for r in runs if math.isfinite(num(r.get("epochs", "")))}
    if any(math.isfinite(s.mean) for s in steps.values()):
        evidence.append("Optimizer steps per run" + (f" ({epochs.pop()} epochs for every batch)" if len(epochs) == 1
                                                     else "") + ": "
                        + ", ".join(f"{s.mean:,.0f} at batch {b}" for b, s in steps.items()))
    loss = summarize([r for r in runs if r.get("lr_rule") == "linear"], _batch_of,
                     lambda r: num(r.get("train_loss", "")))
    if any(math.isfinite(s.mean) for s in loss.values()):
        evidence.append("Final training loss, linear rule (the end of the figure's loss curves): "
                        + ", ".join(f"{_ms(s, lambda v: f'{v:.3g}')} at batch {b}" for b, s in loss.items()))
    parts = []
    for b in batches[1:]:
        rows = by.get((b, "linear"), [])
        mine = _per_seed(rows, lambda r: num(r["test_metric"]))
        failed = {_seed(r) for r in rows if r.get("outcome") == "diverged" or not math.isfinite(num(r["test_metric"]))}
        diverged = sorted(failed, key=_seed_order)
        d = decide(_paired(ref, mine, lambda s, l: l - s), -tol, above=True, confidence=rules.confidence)
        note = ""
        if diverged:
            d, note = replace(d, verdict=NOT_SUPPORTED), f"seed {', '.join(diverged)} diverged"
        parts.append(Part(f"batch {b} (linear) minus batch {small}", d, _signed, note))
    return _from_parts("A4", parts, ". ".join(evidence), rule, _seeds(evals))


def _b(tables: Tables, evaluations: Rows, rules: ReportRules, dp_n: int) -> list[Verdict]:
    vgg = _runs(tables, "train_dp", "vgg")
    ddp = _runs(tables, "train_ddp", "vgg")
    epoch = lambda r: num(r["epoch_time_s"])  # noqa: E731
    cell = {k: _per_seed(rows, epoch) for k, rows in groups(vgg, lambda r: (r["mode"], _batch_of(r))).items()}
    batches = sorted(b for m, b in cell if m == "dp" and ("single", b) in cell)
    speedup = {b: _paired(cell[("single", b)], cell[("dp", b)], _ratio) for b in batches}  # single / DP, per seed
    times = "; ".join(f"batch {b}: single {_ms(mean_std(cell[('single', b)].values()), _s)}, DP "
                      f"{_ms(mean_std(cell[('dp', b)].values()), _s)} per epoch" for b in batches)
    seeds = _seeds(vgg + ddp)
    need = f"needs at least 2 GPUs; DataParallel here spanned {dp_n} device(s)"
    top = rules.b1_max_speedup
    b1_rule = (f"the speed-up of DataParallel over N >= 2 GPUs against one GPU (epoch time single / DP, per seed, "
               f"averaged over the batch sizes); supported if its {_interval(rules)} lies entirely below {top:g}x, "
               f"not supported if entirely above. A ratio of times means the same on any GPU")
    b3_rule = (f"the same speed-up at each batch size separately; supported if at every batch size its "
               f"{_interval(rules)} lies entirely below {top:g}x (no batch size fixes it), not supported if at "
               f"some batch size it lies entirely above")
    b2_rule = (f"DataParallel's device 0 memory over the other devices' mean, per seed (averaged over batch sizes); "
               f"supported if its {_interval(rules)} lies entirely above {rules.b2_min_imbalance:g}x, not supported "
               f"if entirely below")
    b4_rule = (f"at each global batch that DataParallel and DDP both ran on the same N >= 2 GPUs: DP epoch time / DDP "
               f"epoch time, paired by seed; supported if every such {_interval(rules)} lies entirely above "
               f"{rules.b4_min_speedup:g}x, not supported if one lies entirely below")
    if dp_n < 2:
        return [Verdict("B1", NOT_TESTABLE, f"epoch time per batch size: {times}", b1_rule, need, seeds=seeds),
                Verdict("B2", NOT_TESTABLE, _b2_evidence(vgg), b2_rule, need, seeds=seeds),
                Verdict("B3", NOT_TESTABLE, f"epoch time per batch size: {times}", b3_rule, need, seeds=seeds),
                Verdict("B4", NOT_TESTABLE, _b4_context(ddp, vgg), b4_rule, need, seeds=seeds),
                _b5(evaluations, rules)]
    mean_speedup = [mean_std(v).mean for v in zip(*speedup.values())]  # per seed, over batch sizes
    b1 = Part(f"DP over {dp_n} GPUs vs one, mean over batch sizes",
              decide(mean_speedup, top, above=False, confidence=rules.confidence), _x)
    b3 = [Part(f"batch {b}", decide(s, top, above=False, confidence=rules.confidence), _x) for b, s in speedup.items()]
    imbalance = _per_seed([r for r in vgg if r["mode"] == "dp"], _imbalance)
    b2 = Part("device 0 / others", decide(imbalance.values(), rules.b2_min_imbalance, above=True,
                                          confidence=rules.confidence), _x)
    ddp_cell = {k: _per_seed(rows, epoch)
                for k, rows in groups(ddp, lambda r: (int(num(r["world"])), _batch_of(r))).items()}
    b4 = [Part(f"global batch {b} on {w} GPUs, DP/DDP",
               decide(_paired(cell[("dp", b)], t, _ratio), rules.b4_min_speedup, above=True,
                      confidence=rules.confidence), _x)
          for (w, b), t in sorted(ddp_cell.items()) if w == dp_n and ("dp", b) in cell]
    b4_evidence = "; ".join(f"global batch {b}: DDP on {w} GPUs {_ms(mean_std(t.values()), _s)} vs DP "
                            f"{_ms(mean_std(cell[('dp', b)].values()), _s)} per epoch"
                            for (w, b), t in sorted(ddp_cell.items()) if w == dp_n and ("dp", b) in cell)
    verdicts = [_from_parts("B1", [b1], f"DP over {dp_n} GPUs vs one: {times}", b1_rule, seeds),
                _from_parts("B2", [b2], _b2_evidence(vgg), b2_rule, seeds),
                _from_parts("B3", b3, f"DP speed-up per batch size: {times}", b3_rule, seeds)]
    if b4:
        verdicts.append(_from_parts("B4", b4, f"{b4_evidence}. {_b4_context(ddp, vgg)}", b4_rule, seeds))
    else:
        verdicts.append(Verdict("B4", NOT_TESTABLE, _b4_context(ddp, vgg), b4_rule,
                                "train_ddp and train_dp share no (devices, global batch) pair", seeds=seeds))
    return verdicts + [_b5(evaluations, rules)]


def _s(x: float) -> str:
    return f"{x:.2f} s" if math.isfinite(x) else "n/a"


def _imbalance(row: dict) -> float:
    """Device 0's memory over the other devices' mean (nan with one device)."""
    mem = per_device(row["device_mem_mib"])
    return mem[0] / mean_std(mem[1:]).mean if len(mem) > 1 else math.nan


def _b2_evidence(rows: Rows) -> str:
    dp = [r for r in rows if r["mode"] == "dp"]
    cells = []
    for b, group in sorted(groups(dp, _batch_of).items()):
        memory = [per_device(r["device_mem_mib"]) for r in group]
        devices = max(map(len, memory), default=0)
        cells.append(f"batch {b}: " + " / ".join(
            f"{mean_std(m[d] for m in memory if len(m) > d).mean:,.0f}" for d in range(devices)) + " MiB")
    cells = "; ".join(cells)
    ratio = mean_std(_imbalance(r) for r in dp)
    return (f"DataParallel peak memory per device (device 0 / 1 / ..., mean over seeds): {cells or 'none'}"
            + (f"; device 0 / others: {_ms(ratio, _x)}" if math.isfinite(ratio.mean) else "; one device: no ratio"))


def _b4_context(ddp: Rows, vgg: Rows) -> str:
    """DDP's epoch time by world size, and its speed-up against both baselines: DDP with 1 process and
    the single-device run (train_dp) at the same per-process batch. Each seed's time is its mean over
    the lr rules first, so every ± is a spread over seeds."""
    if not ddp:
        return "no DDP runs"
    epoch = lambda r: num(r["epoch_time_s"])  # noqa: E731
    out = []
    for b, rows in sorted(groups(ddp, _per_rank_batch).items()):
        worlds = groups(rows, lambda r: int(num(r["world"])))
        by_world = {w: per_seed(group, epoch) for w, group in sorted(worlds.items())}
        text = (f"DDP epoch time by processes, batch {b:g} per process (each seed's mean over its lr rules, then "
                "mean ± std over seeds): " + ", ".join(f"{w}: {_ms(mean_std(t.values()), _s)}"
                                                      for w, t in by_world.items()))
        single = per_seed([r for r in vgg if r["mode"] == "single" and _batch_of(r) == b], epoch)
        one, most = by_world.get(1), max(by_world)
        against = []
        if one and most > 1:
            against.append(f"{_ms(ratios(one, by_world[most]), _x)} against DDP with 1 process")
        if single and most > 1:
            against.append(f"{_ms(ratios(single, by_world[most]), _x)} against the single-device run (train_dp, "
                           f"batch {b:g}: {_ms(mean_std(single.values()), _s)} per epoch)")
        if against:
            text += f"; speed-up at {most} processes, seed by seed: " + " and ".join(against)
        if one and single:
            slower = ratios(one, single)
            text += (f"; DDP with 1 process carries DDP's own overheads (process group, gradient all-reduce) and "
                     f"takes {_ms(slower, _x)} the single-device run's epoch time"
                     + (", so a speed-up against it alone flatters DDP" if slower.mean > 1 else ""))
        out.append(text)
    return ". ".join(out)


def _per_rank_batch(row: dict) -> int:
    """A DDP run's batch per process (its global batch over the world size where not recorded)."""
    b = num(row.get("batch", ""))
    return int(b) if math.isfinite(b) else int(num(row["global_batch"]) / num(row["world"]))


def _b5(evaluations: Rows, rules: ReportRules) -> Verdict:
    evals = _evals(evaluations, "train_ddp", "vgg")
    by = groups(evals, lambda r: (_world(r["configuration"]), _rule(r["configuration"])))
    worlds = sorted({w for w, _ in by})
    drop = rules.b5_accuracy_drop
    rule = (f"the change of test accuracy from world size 1 to the largest world size without lr scaling (largest "
            f"minus 1, paired by seed; negative: accuracy fell); the per-process batch is fixed, so the global batch "
            f"grows. Supported if its {_interval(rules)} lies entirely below -{drop:g} (a fall of more than {drop:g}), "
            f"not supported if entirely above. A difference of test accuracy does not depend on the hardware")
    acc = {k: mean_std(num(r["test_metric"]) for r in rows) for k, rows in by.items()}
    evidence = (f"test accuracy{_test_images(evals)}: "
                + "; ".join(f"{w} process{'es' if w != 1 else ''}: "
                            + _rules_text(acc, w)
                            for w in worlds))
    if len(worlds) < 2:
        return Verdict("B5", NOT_TESTABLE, evidence if evals else "no DDP runs", rule,
                       f"only world size {worlds[0] if worlds else 0} ran: needs 2+ GPUs (or CPU processes)",
                       seeds=_seeds(evals))
    one, most = worlds[0], worlds[-1]
    parts = []
    for lr in ("none", "linear"):
        if (one, lr) in by and (most, lr) in by:
            change = _paired(*(_per_seed(by[(w, lr)], lambda r: num(r["test_metric"])) for w in (one, most)),
                             lambda a, b: b - a)
            if lr == "none":
                parts.append(Part(f"change from {one} to {most} processes, lr rule none", decide(
                    change, -drop, above=False, confidence=rules.confidence), _signed))
            else:
                evidence += (f". With the linear rule, for comparison: change {_ms(mean_std(change), _signed)} "
                             f"from {one} to {most} processes")
    if not parts:
        return Verdict("B5", NOT_TESTABLE, evidence, rule, "no runs without lr scaling (lr rule none) at both ends",
                       seeds=_seeds(evals))
    return _from_parts("B5", parts, evidence, rule, _seeds(evals))


def _c(tables: Tables, evaluations: Rows, rules: ReportRules) -> list[Verdict]:
    judged = {task: _adaptive(tables[f"train_adaptive/{task}/runs.csv"],
                              _evals(evaluations, "train_adaptive", task), task, rules)
              for task in ("classification", "restoration")}
    missing = "train_adaptive needs fixed_small, fixed_large and step_growth"
    cls, res = judged["classification"], judged["restoration"]
    verdicts = list(cls[:3]) if cls else [Verdict(c, NOT_TESTABLE, "no runs", "", missing) for c in ("C1", "C2", "C3")]
    if not res:
        return verdicts + [Verdict("C4", NOT_TESTABLE, "no restoration runs", "", missing)]
    c1, c2, c3, parts = res
    [own] = parts["C1"]
    outcome = {SUPPORTED: "the large fixed batch lowered PSNR by more than the tolerance",
               NOT_SUPPORTED: "the large fixed batch did not lower PSNR by more than the tolerance",
               INCONCLUSIVE: "the seeds cannot tell whether the large fixed batch lowered PSNR"}[c1.verdict]
    evidence = (f"{c2.evidence}. {c3.evidence}. Restoration's own C1 result is {c1.verdict}: {outcome}. Fixed large "
                f"minus fixed small, per seed, is {own.decision.text(own.fmt)}, against C1's threshold "
                f"{own.fmt(own.decision.threshold)}")
    rule = ("C2's and C3's rules applied to restoration; supported if both hold, not supported if either fails "
            "(restoration's C1 is stated beside them, not part of the rule)")
    verdicts.append(_from_parts("C4", parts["C2"] + parts["C3"], evidence, rule, c2.seeds))
    return verdicts


def _adaptive(runs: Rows, evals: Rows, task: str, rules: ReportRules):
    """(C1, C2, C3, their parts) of one task; None without the three schedules the rules compare."""
    by_schedule = groups(evals, lambda r: r["configuration"].split("-")[0])
    score = {s: _per_seed(rows, lambda r: num(r["test_metric"])) for s, rows in by_schedule.items()}
    if not {"fixed_small", "fixed_large", "step_growth"} <= set(score):
        return None
    classification = task == "classification"
    fmt, diff, what = (_acc, _signed, "accuracy") if classification else (_db, _signed_db, "PSNR")
    tol = _tolerance(runs, score["fixed_small"])
    small, large, growth = score["fixed_small"], score["fixed_large"], score["step_growth"]
    seeds = _seeds(evals)
    conf = rules.confidence
    scores = (f"{task}: test {what}{_test_images(evals)}, mean ± std over seeds: "
              + ", ".join(f"{s.replace('_', ' ')} {_ms(mean_std(v.values()), fmt)}" for s, v in score.items()))
    tol_text = f"{diff(-tol)} (train_adaptive's target_tolerance)"
    c1 = Part(f"{task}: fixed large minus fixed small", decide(_paired(small, large, lambda s, l: l - s), -tol,
                                                               above=False, confidence=conf), diff)
    c1_rule = (f"per seed, the large fixed batch's test {what} minus the small fixed batch's; supported if its "
               f"{_interval(rules)} lies entirely below {tol_text}, not supported if entirely above. A difference "
               f"of test {what} does not depend on the hardware")
    c2 = Part(f"{task}: step growth minus fixed small", decide(_paired(small, growth, lambda s, g: g - s), -tol,
                                                               above=True, confidence=conf), diff)
    c2_rule = (f"per seed, step growth's test {what} minus the small fixed batch's; supported if its "
               f"{_interval(rules)} lies entirely above {tol_text}, i.e. within the tolerance or better; not supported "
               f"if entirely below")
    by_run = groups(runs, lambda r: r["schedule"])
    figure = {name: {s: _per_seed(rows, lambda r, name=name: num(r.get(name, ""))) for s, rows in by_run.items()}
              for name in ("steps", "allreduces", "run_images_per_s")}
    steps, allreduces, ips = (figure[k] for k in ("steps", "allreduces", "run_images_per_s"))
    c3 = [Part(f"{task}: steps, step growth / fixed small",
               decide(_paired(steps.get("step_growth", {}), steps.get("fixed_small", {}), _ratio), 1.0, above=False,
                      confidence=conf), _x)]
    one_process = all(v == 0 for v in allreduces.get("fixed_small", {}).values())
    if not one_process:
        c3.append(Part(f"{task}: all-reduces, step growth / fixed small",
                       decide(_paired(allreduces.get("step_growth", {}), allreduces.get("fixed_small", {}), _ratio),
                              1.0, above=False, confidence=conf), _x))
    c3.append(Part(f"{task}: whole-run images/s, step growth / fixed small",
                   decide(_paired(ips.get("step_growth", {}), ips.get("fixed_small", {}), _ratio),
                          rules.c3_min_throughput_gain, above=True, confidence=conf), _x))

    def mean(figures: dict, schedule: str) -> float:
        return mean_std(figures.get(schedule, {}).values()).mean

    c3_evidence = (f"{task}: step growth {mean(steps, 'step_growth'):,.0f} optimizer steps and "
                   f"{mean(allreduces, 'step_growth'):,.0f} all-reduces vs {mean(steps, 'fixed_small'):,.0f} and "
                   f"{mean(allreduces, 'fixed_small'):,.0f} for the small fixed batch; whole-run throughput "
                   f"{mean(ips, 'step_growth'):,.0f} vs {mean(ips, 'fixed_small'):,.0f} images/s"
                   + ("; one process: no all-reduces to count" if one_process else ""))
    c3_rule = (f"per seed, step growth against the small fixed batch: the ratios of optimizer steps and all-reduces "
               f"must lie entirely below 1 and the ratio of whole-run images/s entirely above "
               f"{rules.c3_min_throughput_gain:g}x ({_interval(rules)}); supported if all hold, not supported if one "
               f"lies entirely on the wrong side. Ratios mean the same on any hardware")
    return (_from_parts("C1", [c1], scores, c1_rule, seeds), _from_parts("C2", [c2], scores, c2_rule, seeds),
            _from_parts("C3", c3, c3_evidence, c3_rule, _seeds(runs)), {"C1": [c1], "C2": [c2], "C3": c3})


def _tolerance(runs: Rows, small: dict[str, float]) -> float:
    """train_adaptive's target_tolerance: the small fixed batch's mean minus the target runs.csv records
    (the training figure train_adaptive took it from, else the re-evaluated one)."""
    column = next((c for c in ("test_accuracy", "test_psnr") if runs and c in runs[0]), None)
    mean = (mean_std(num(r[column]) for r in runs if r["schedule"] == "fixed_small").mean if column
            else mean_std(small.values()).mean)
    target = mean_std(num(r["target"]) for r in runs).mean
    return round(mean - target, 6)


def _rules_text(stats: dict[tuple, Stat], key) -> str:
    """``linear 0.975 ± 0.002, none 0.972 ± 0.003``: the test figure of each lr rule at one key."""
    return ", ".join(f"{lr} {_ms(stats[(k, lr)], _acc)}" for k, lr in sorted(stats) if k == key)


def _batch(configuration: str) -> int:
    return int(re.search(r"-b(\d+)-", f"-{configuration}-").group(1))


def _rule(configuration: str) -> str:
    return configuration.rsplit("-", 1)[-1]


def _world(configuration: str) -> int:
    return int(re.search(r"ddp(\d+)", configuration).group(1))
