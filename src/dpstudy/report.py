"""The claims report: each claim of the three studies, the evidence this run measured, a verdict.

`judge(tables, evaluations, rules)` applies one stated rule per claim (thresholds in params.yaml's
``plot.rules``) to the result tables and returns a `Verdict` per claim: supported, not supported,
or not testable here (with why: no GPU, one GPU, one process). `render(...)` writes REPORT.md: the
verdict table, the evidence per claim with its figure, then what the run was (preset, hardware,
versions, commit, dataset checksums) and every assumption params.yaml marks. Accuracy and PSNR come
from the evaluate stage (checkpoints scored again on the test split); times from the training
stages' own tables.
"""

from __future__ import annotations

import math
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Iterable

from .config import ReportRules
from .devices import cpu_count
from .figures import FIGURES, Rows, Tables, device_mean, groups, mean_std, num, per_device, summarize

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable here"

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
}
STUDY_TITLES = {"A": "Cao & Shen 2023: LeNet, GPU utilization, data loading, large-batch lr",
                "B": "Xue 2023: VGG16, DataParallel vs DistributedDataParallel",
                "C": "Lee et al. 2019: adaptive mini-batch size at run time"}


@dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str  # the numbers, one or two sentences
    rule: str      # how the verdict follows from them
    why: str = ""  # for not testable: what the run lacks

    @property
    def figure(self) -> str:
        return next((name for name, claims in FIGURES.items() if self.claim in claims), "")


# --------------------------------------------------------------------------------------------
# Reading the tables


def _mean(values: Iterable[float]) -> float:
    return mean_std(values).mean  # of the finite values: nan ones are not measurements


def _by(rows: Rows, key, value) -> dict:
    """Mean of ``value(row)`` per ``key(row)`` (over seeds and repeats), keys sorted."""
    return {k: stat.mean for k, stat in summarize(rows, key, value).items()}


def _pct(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "n/a"


def _acc(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "n/a"


def _runs(tables: Tables, stage: str, sweep: str) -> Rows:
    return [r for r in tables[f"{stage}/runs.csv"] if r["sweep"] == sweep]


def _evals(evaluations: Rows, stage: str, sweep: str) -> Rows:
    return [r for r in evaluations if r["stage"] == stage and r["sweep"] == sweep]


def _gpu_sampled(tables: Tables) -> bool:
    """Whether utilization was read from a GPU (NVML) rather than the system CPU."""
    return any(r["utilization_source"].startswith("gpu") for r in tables["profile_dataloader/probes.csv"])


def _dp_devices(tables: Tables) -> int:
    """How many devices DataParallel spanned in train_dp's VGG grid (1 on the CPU or one GPU)."""
    return max((int(num(r["devices"])) for r in _runs(tables, "train_dp", "vgg") if r["mode"] == "dp"), default=0)


# --------------------------------------------------------------------------------------------
# One rule per claim


def judge(tables: Tables, evaluations: Rows, rules: ReportRules) -> list[Verdict]:
    gpu, dp_n = _gpu_sampled(tables), _dp_devices(tables)
    out = [_a1(tables, rules, gpu), _a2(tables, rules, gpu), _a3(tables, rules), _a4(evaluations, rules)]
    out += _b(tables, evaluations, rules, dp_n)
    out += _c(tables, evaluations, rules)
    return out


def _a1(tables: Tables, rules: ReportRules, gpu: bool) -> Verdict:
    rows = [r for r in _runs(tables, "train_dp", "lenet_utilization") if r["loader"] == "standard"]
    rule = (f"supported if, with the standard DataLoader, utilization at the largest batch is at least "
            f"{rules.a1_min_drop_pts:g} points below the smallest batch's, in every mode (single, DP)")
    by_mode = {mode: _by(group, lambda r: int(num(r["global_batch"])), lambda r: device_mean(r["utilization_pct"]))
               for mode, group in groups(rows, lambda r: r["mode"]).items()}
    evidence = "; ".join(f"{mode}: " + ", ".join(f"{u:.0f}% at batch {b}" for b, u in util.items())
                         for mode, util in by_mode.items())
    if not gpu:
        return Verdict("A1", NOT_TESTABLE, f"CPU utilization as a proxy: {evidence}", rule,
                       "no GPU: the claim is about a GPU's utilization, and here the CPU both loads and computes")
    drops = {mode: list(util.values())[0] - list(util.values())[-1] for mode, util in by_mode.items() if len(util) > 1}
    ok = bool(drops) and all(d >= rules.a1_min_drop_pts for d in drops.values())
    note = "; ".join(f"{mode} drop {d:.1f} points" for mode, d in drops.items())
    return Verdict("A1", SUPPORTED if ok else NOT_SUPPORTED, f"GPU utilization (NVML): {evidence} ({note})", rule)


def _a2(tables: Tables, rules: ReportRules, gpu: bool) -> Verdict:
    rows = _runs(tables, "train_dp", "lenet_utilization")
    wait = {loader: _by(group, lambda r: int(num(r["global_batch"])), lambda r: num(r["data_wait_fraction"]))
            for loader, group in groups(rows, lambda r: r["loader"]).items()}
    rule = (f"supported if the standard loader waits for data for at least {rules.a2_min_wait_fraction:.0%} of "
            f"each step at the largest batch, and the resident loader (data already on the device, augmented "
            f"there) waits at least {rules.a2_resident_factor:g}x less")
    std, res = wait.get("standard", {}), wait.get("resident", {})
    if not std or not res:
        return Verdict("A2", NOT_TESTABLE, "train_dp ran without both loaders", rule,
                       "lenet_utilization.loaders must hold standard and resident")
    big = max(std)
    s, r = std[big], res.get(big, math.nan)
    ok = s >= rules.a2_min_wait_fraction and r * rules.a2_resident_factor <= s
    evidence = ("data-wait share of a step, standard loader: "
                + ", ".join(f"{_pct(v)} at batch {b}" for b, v in std.items())
                + "; resident loader: " + ", ".join(f"{_pct(v)} at batch {b}" for b, v in res.items())
                + ("" if gpu else " (no GPU: the CPU computes, and the loop waits for the loader as a GPU would)"))
    return Verdict("A2", SUPPORTED if ok else NOT_SUPPORTED, evidence, rule)


def _a3(tables: Tables, rules: ReportRules) -> Verdict:
    rows = tables["profile_dataloader/workers.csv"]
    by_batch = groups(rows, lambda r: int(r["series"].split()[-1]))
    rule = (f"supported if, at the largest batch, some num_workers > 0 delivers at least "
            f"{1 + rules.a3_min_gain:.2f}x the images/s of num_workers = 0 (the loader is what starves the device)")
    if not by_batch:
        return Verdict("A3", NOT_TESTABLE, "profile_dataloader measured no worker grid", rule, "no data")
    big = max(by_batch)
    ips = _by(by_batch[big], lambda r: int(num(r["num_workers"])), lambda r: num(r["images_per_s"]))
    base = ips.get(0, math.nan)
    best_w = max((w for w in ips if w > 0), key=lambda w: ips[w], default=None)
    gain = ips[best_w] / base if best_w is not None and base > 0 else math.nan
    cores = cpu_count()
    evidence = (f"batch {big}: " + ", ".join(f"{v:,.0f} images/s with {w} worker(s)" for w, v in ips.items())
                + (f" (best: {best_w} workers, {gain:.2f}x); {cores} CPU cores on this machine" if best_w else ""))
    if best_w is None:
        return Verdict("A3", NOT_TESTABLE, evidence, rule, "the grid has no num_workers > 0")
    return Verdict("A3", SUPPORTED if gain >= 1 + rules.a3_min_gain else NOT_SUPPORTED, evidence, rule)


def _a4(evaluations: Rows, rules: ReportRules) -> Verdict:
    acc = _by_rule(evaluations, "train_dp", "lenet_lr_scaling", _batch)
    batches = sorted({b for b, _ in acc})
    rule = (f"supported if every larger batch trained with the linear rule (and warmup) ends within "
            f"{rules.a4_accuracy_tolerance:g} of the smallest batch's test accuracy")
    if len(batches) < 2 or not any(lr == "linear" for _, lr in acc):
        return Verdict("A4", NOT_TESTABLE, "the lr-scaling grid needs two batch sizes and the linear rule", rule,
                       "lenet_lr_scaling grid too small")
    small = _mean(v for (b, _), v in acc.items() if b == batches[0])
    worst = min(acc.get((b, "linear"), math.nan) for b in batches[1:])
    evidence = (f"test accuracy at batch {batches[0]}: {_acc(small)}; at larger batches: "
                + "; ".join(f"batch {b}: {_rules_text(acc, b)}" for b in batches[1:]))
    ok = math.isfinite(worst) and worst >= small - rules.a4_accuracy_tolerance
    return Verdict("A4", SUPPORTED if ok else NOT_SUPPORTED, evidence, rule)


def _b(tables: Tables, evaluations: Rows, rules: ReportRules, dp_n: int) -> list[Verdict]:
    vgg = _runs(tables, "train_dp", "vgg")
    epoch = _by(vgg, lambda r: (r["mode"], int(num(r["global_batch"]))), lambda r: num(r["epoch_time_s"]))
    speedup = {b: epoch[("single", b)] / epoch[("dp", b)] for (m, b) in epoch if m == "dp" and ("single", b) in epoch}
    times = ", ".join(f"batch {b}: single {epoch[('single', b)]:.2f} s, DP {epoch[('dp', b)]:.2f} s ({s:.2f}x)"
                      for b, s in speedup.items())
    need = f"needs at least 2 GPUs; DataParallel here spanned {dp_n} device(s)"
    b1_rule = (f"supported if DataParallel over N >= 2 GPUs is on average less than {rules.b1_max_speedup:g}x "
               f"faster per epoch than one GPU")
    b3_rule = (f"supported if DataParallel's speed-up stays below {rules.b1_max_speedup:g}x at every batch size "
               f"tried (no hyperparameter choice fixes it)")
    b2_rule = f"supported if DataParallel's device 0 holds at least {rules.b2_min_imbalance:g}x the other devices' mean memory"
    b4_rule = (f"supported if DDP's epoch time is at least {rules.b4_min_speedup:g}x shorter than DataParallel's "
               f"on the same number of devices and global batch")
    if dp_n < 2:
        verdicts = [Verdict("B1", NOT_TESTABLE, f"epoch time per batch size: {times}", b1_rule, need),
                    Verdict("B2", NOT_TESTABLE, _b2_evidence(vgg), b2_rule, need),
                    Verdict("B3", NOT_TESTABLE, f"epoch time per batch size: {times}", b3_rule, need),
                    Verdict("B4", NOT_TESTABLE, _b4_context(tables), b4_rule, need)]
    else:
        mean_s = _mean(speedup.values())
        ratio = _imbalance(vgg)
        ddp = _by(_runs(tables, "train_ddp", "vgg"), lambda r: (int(num(r["world"])), int(num(r["global_batch"]))),
                  lambda r: num(r["epoch_time_s"]))
        pairs = {(w, b): epoch[("dp", b)] / t for (w, b), t in ddp.items() if w == dp_n and ("dp", b) in epoch}
        b4 = (SUPPORTED if pairs and min(pairs.values()) >= rules.b4_min_speedup else NOT_SUPPORTED) if pairs else NOT_TESTABLE
        verdicts = [
            Verdict("B1", SUPPORTED if mean_s < rules.b1_max_speedup else NOT_SUPPORTED,
                    f"DP over {dp_n} GPUs vs one: {times}; mean {mean_s:.2f}x", b1_rule),
            Verdict("B2", SUPPORTED if ratio >= rules.b2_min_imbalance else NOT_SUPPORTED, _b2_evidence(vgg), b2_rule),
            Verdict("B3", SUPPORTED if max(speedup.values()) < rules.b1_max_speedup else NOT_SUPPORTED,
                    f"DP speed-up per batch size: {times}", b3_rule),
            Verdict("B4", b4, "; ".join(f"global batch {b}: DDP on {w} GPUs {epoch[('dp', b)] / s:.2f} s vs DP "
                                         f"{epoch[('dp', b)]:.2f} s per epoch ({s:.2f}x)" for (w, b), s in pairs.items())
                    or "no DDP configuration on as many GPUs as DP at the same global batch", b4_rule,
                    "" if pairs else "train_ddp and train_dp share no (devices, global batch) pair")]
    return verdicts + [_b5(evaluations, rules)]


def _imbalance(rows: Rows) -> float:
    ratios = []
    for r in rows:
        mem = per_device(r["device_mem_mib"])
        if r["mode"] == "dp" and len(mem) > 1:
            ratios.append(mem[0] / _mean(mem[1:]))
    return _mean(ratios)


def _b2_evidence(rows: Rows) -> str:
    dp = [r for r in rows if r["mode"] == "dp"]
    cells = "; ".join(f"batch {r['global_batch']}: {r['device_mem_mib']} MiB" for r in dp)
    ratio = _imbalance(rows)
    return (f"DataParallel memory per device: {cells or 'none'}"
            + (f" (device 0 / others: {ratio:.2f}x)" if math.isfinite(ratio) else " (one device: no ratio)"))


def _b4_context(tables: Tables) -> str:
    ddp = _by(_runs(tables, "train_ddp", "vgg"), lambda r: int(num(r["world"])), lambda r: num(r["epoch_time_s"]))
    return "DDP epoch time by processes: " + ", ".join(f"{w}: {t:.2f} s" for w, t in ddp.items())


def _b5(evaluations: Rows, rules: ReportRules) -> Verdict:
    acc = _by_rule(evaluations, "train_ddp", "vgg", _world)
    worlds = sorted({w for w, _ in acc})
    rule = (f"supported if, without lr scaling, test accuracy at the largest world size falls more than "
            f"{rules.b5_accuracy_drop:g} below world size 1 (the per-process batch is fixed, so the global batch grows)")
    evidence = "; ".join(f"{w} process(es): {_rules_text(acc, w)}" for w in worlds)
    if len(worlds) < 2:
        return Verdict("B5", NOT_TESTABLE, evidence or "no DDP runs", rule,
                       f"only world size {worlds[0] if worlds else 0} ran: needs 2+ GPUs (or CPU processes)")
    drop = acc.get((worlds[0], "none"), math.nan) - acc.get((worlds[-1], "none"), math.nan)
    return Verdict("B5", SUPPORTED if drop > rules.b5_accuracy_drop else NOT_SUPPORTED,
                   f"{evidence} (drop without scaling: {drop:+.3f})", rule)


def _c(tables: Tables, evaluations: Rows, rules: ReportRules) -> list[Verdict]:
    out = {}
    for task in ("classification", "restoration"):
        runs = tables[f"train_adaptive/{task}/runs.csv"]
        metric = _by(_evals(evaluations, "train_adaptive", task), lambda r: r["configuration"].split("-")[0],
                     lambda r: num(r["test_metric"]))
        target = _mean(num(r["target"]) for r in runs)
        figs = {s: _by(runs, lambda r: r["schedule"], lambda r: num(r[col])) for s, col in
                (("steps", "steps"), ("allreduces", "allreduces"), ("ips", "run_images_per_s"))}
        fmt = _acc if task == "classification" else (lambda v: f"{v:.2f} dB")
        tol = "accuracy" if task == "classification" else "PSNR"
        have = {"fixed_small", "fixed_large", "step_growth"} <= set(metric)
        if not have:
            out[task] = None
            continue
        c1 = Verdict("C1", SUPPORTED if metric["fixed_large"] < target else NOT_SUPPORTED,
                     f"{task}: test {tol} fixed small {fmt(metric['fixed_small'])}, fixed large "
                     f"{fmt(metric['fixed_large'])} (target {fmt(target)})",
                     "supported if the large fixed batch ends below the target (small fixed batch's mean minus "
                     "train_adaptive's target_tolerance)")
        c2 = Verdict("C2", SUPPORTED if metric["step_growth"] >= target else NOT_SUPPORTED,
                     f"{task}: step growth {fmt(metric['step_growth'])} vs fixed small {fmt(metric['fixed_small'])} "
                     f"(target {fmt(target)})"
                     + (f"; noise-scale schedule {fmt(metric['noise_scale'])}" if "noise_scale" in metric else ""),
                     "supported if step growth ends at or above the target")
        steps, ars, ips = (figs[k] for k in ("steps", "allreduces", "ips"))
        gain = ips["step_growth"] / ips["fixed_small"]
        fewer_ar = ars["fixed_small"] == 0 or ars["step_growth"] < ars["fixed_small"]
        ok = steps["step_growth"] < steps["fixed_small"] and fewer_ar and gain >= rules.c3_min_throughput_gain
        c3 = Verdict("C3", SUPPORTED if ok else NOT_SUPPORTED,
                     f"{task}: step growth {steps['step_growth']:.0f} steps and {ars['step_growth']:.0f} all-reduces vs "
                     f"{steps['fixed_small']:.0f} and {ars['fixed_small']:.0f} for the small fixed batch; whole-run "
                     f"throughput {ips['step_growth']:,.0f} vs {ips['fixed_small']:,.0f} images/s ({gain:.2f}x)"
                     + (" (one process: no all-reduces to count)" if ars["fixed_small"] == 0 else ""),
                     f"supported if step growth takes fewer steps and all-reduces and its whole-run images/s is at "
                     f"least {rules.c3_min_throughput_gain:g}x the small fixed batch's")
        out[task] = (c1, c2, c3)
    cls, res = out["classification"], out["restoration"]
    missing = "train_adaptive needs fixed_small, fixed_large and step_growth"
    verdicts = list(cls) if cls else [Verdict(c, NOT_TESTABLE, "no runs", "", missing) for c in ("C1", "C2", "C3")]
    if res:
        c4 = SUPPORTED if res[1].verdict == res[2].verdict == SUPPORTED else NOT_SUPPORTED
        verdicts.append(Verdict("C4", c4, f"{res[1].evidence}. {res[2].evidence}. (C1 on restoration: "
                                          f"{res[0].verdict}: {res[0].evidence})",
                                "supported if C2's and C3's rules both hold for restoration"))
    else:
        verdicts.append(Verdict("C4", NOT_TESTABLE, "no restoration runs", "", missing))
    return verdicts


def _by_rule(evaluations: Rows, stage: str, sweep: str, key) -> dict[tuple, float]:
    """Mean test figure per (key(configuration), lr rule), over seeds."""
    return _by(_evals(evaluations, stage, sweep), lambda r: (key(r["configuration"]), _rule(r["configuration"])),
               lambda r: num(r["test_metric"]))


def _rules_text(acc: dict[tuple, float], key) -> str:
    """``linear 0.975, none 0.972``: the figure of each lr rule at one key."""
    return ", ".join(f"{lr} {_acc(acc[(k, lr)])}" for k, lr in sorted(acc) if k == key)


def _batch(configuration: str) -> int:
    return int(re.search(r"-b(\d+)-", f"-{configuration}-").group(1))


def _rule(configuration: str) -> str:
    return configuration.rsplit("-", 1)[-1]


def _world(configuration: str) -> int:
    return int(re.search(r"ddp(\d+)", configuration).group(1))


# --------------------------------------------------------------------------------------------
# The run's facts


_ASSUMPTION = re.compile(r"ASSUMPTION\s*(\([^)]*\))?\s*[:,]\s*")


def assumptions(params_text: str) -> list[tuple[str, str]]:
    """(key path, text) of every ``ASSUMPTION:`` comment in params.yaml. A comment block names the
    key below it (the block goes on over deeper-indented lines, or same-indented ones until a
    sentence ends); an end-of-line comment names its own line's key."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    pending: list[list] = []           # [comment column, text] of blocks waiting for their key
    for line in params_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:]
            column, text = len(body) - len(body.lstrip()), body.strip()
            found = _ASSUMPTION.search(text)
            if found:
                pending.append([column, (found.group(1) or "") + " " + text[found.end():]])
            elif pending and text and (column > pending[-1][0]
                                       or column == pending[-1][0] and not pending[-1][1].rstrip().endswith(".")):
                pending[-1][1] += " " + text
            elif pending and pending[-1][0] >= 0:
                pending[-1][0] = -1  # the block has ended; it still waits for its key
            continue
        m = re.match(r"(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
        path = ".".join(k for _, k in stack)
        out += [(path, text) for _, text in pending]
        pending = []
        found = _ASSUMPTION.search(line.split("#", 1)[1]) if "#" in line else None
        if found:
            comment = line.split("#", 1)[1]
            out.append((path, (found.group(1) or "") + " " + comment[found.end():]))
    return [(path, " ".join(text.split())) for path, text in out]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dpstudy", "torch", "torchvision", "dvc", "mlflow", "numpy", "nvidia-ml-py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --------------------------------------------------------------------------------------------
# REPORT.md


def render(verdicts: list[Verdict], *, preset: str, commit: str, dirty: bool, hardware: list[str],
           datasets: list[dict], evaluation_check: dict, params_text: str, figures_dir: str = "figures") -> str:
    counts = {v: sum(x.verdict == v for x in verdicts) for v in (SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE)}
    lines = [
        "# dpstudy claims report",
        "",
        f"Preset **{preset}** · commit `{commit[:12]}`{' (uncommitted changes)' if dirty else ''} · "
        + ", ".join(f"{n} {v}" for v, n in counts.items()),
        "",
        "Each claim of the three studies, the evidence this run measured, and the verdict its stated rule "
        "gives. A verdict holds for this preset and this hardware only; *not testable here* says what is missing.",
        "",
        "| claim | statement | verdict | figure |",
        "| --- | --- | --- | --- |",
    ]
    for v in verdicts:
        fig = f"[{v.figure}]({figures_dir}/{v.figure})" if v.figure else ""
        lines.append(f"| {v.claim} | {CLAIMS[v.claim]} | **{v.verdict}** | {fig} |")
    for study, title in STUDY_TITLES.items():
        lines += ["", f"## {study}. {title}"]
        shown = set()
        for v in (v for v in verdicts if v.claim.startswith(study)):
            lines += ["", f"### {v.claim}: {v.verdict}", "", f"*{CLAIMS[v.claim]}*", "",
                      f"- Evidence: {v.evidence}.", f"- Rule: {v.rule}."]
            if v.why:
                lines.append(f"- Not testable because: {v.why}.")
            if v.figure and v.figure not in shown:
                shown.add(v.figure)
                lines += ["", f"![{v.figure}]({figures_dir}/{v.figure})"]
    lines += ["", "## The run", "", f"- Preset: `{preset}`", f"- Git commit: `{commit}`"
              + (" with uncommitted changes" if dirty else ""), *[f"- {h}" for h in hardware],
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              f"- Evaluation: {evaluation_check['checkpoints']} checkpoints scored again on their test splits; "
              f"{evaluation_check['agree_with_training']} agree with the figure training reported "
              f"(largest difference {evaluation_check['max_abs_difference']:g})",
              "", "### Datasets", "", "| dataset | split | train / test images | prepared file sha256 | source md5 |",
              "| --- | --- | --- | --- | --- |"]
    for d in datasets:
        md5 = "<br>".join(f"{k}: `{v}`" for k, v in d["source_md5"].items())
        lines.append(f"| {d['name']} | {d['split']} | {d['train']} / {d['test']} | `{d['sha256']}` | {md5} |")
    lines += ["", "### Assumptions", "",
              "What the papers do not fix, as params.yaml sets it (each marked ASSUMPTION there):", ""]
    lines += [f"- `{path}`: {text}" for path, text in assumptions(params_text)]
    return "\n".join(lines) + "\n"
