"""Re-evaluate every trained checkpoint on its dataset's held-out test split (the evaluate stage).

A checkpoint carries what evaluation needs (unwrapped weights, the model's build arguments, input
shape and normalisation, and the checksum of the prepared data it was trained on), so a model is
rebuilt and scored here without any training code path: the test split only, never training data.
Each figure is set beside the one the training stage reported at its last epoch; the two must
agree (same images, same weights), which checks the whole train → checkpoint → reload chain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import UserError
from .track.tracking import SWEEP_STUDY

# torch and the training code are imported where a checkpoint is read or scored, not here: the
# plot stage reads evaluations.csv back as Evaluations without them (seconds of start-up).

TRAINING_STAGES = ("train_dp", "train_ddp", "train_adaptive")
# How far a re-evaluated figure may sit from the training stage's own (summation order on
# another device or world size; cuDNN kernels): accuracy in [0, 1], PSNR in dB.
AGREEMENT = {"accuracy": 1e-3, "psnr": 1e-2}


@dataclass
class Evaluation:
    """One trained configuration scored on its test split."""

    stage: str
    study: str
    sweep: str
    name: str
    configuration: str  # the name without grid and seed: seeds of one configuration share it
    seed: int
    task: str
    model: str
    dataset: str
    outcome: str
    epochs: int
    metric: str  # accuracy | psnr
    test_metric: float
    test_loss: float
    test_baseline: float  # bicubic PSNR for restoration; nan for classification
    test_images: int
    trained_metric: float  # what the training stage reported after its last epoch
    checkpoint: str

    @property
    def agrees(self) -> bool:
        if math.isnan(self.trained_metric) and math.isnan(self.test_metric):
            return True  # a diverged run scores nan both times
        return abs(self.test_metric - self.trained_metric) <= AGREEMENT[self.metric]

    def row(self) -> dict:
        return {**asdict(self), "agrees": self.agrees}

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Evaluation:
        """An evaluations.csv row (`row`) back as the Evaluation it was written from."""
        kinds = {"int": int, "float": float, "str": str}
        return cls(**{f.name: kinds[f.type](row[f.name]) for f in fields(cls)})


def find_checkpoints(results: Path, stages: tuple[str, ...] = TRAINING_STAGES) -> list[tuple[str, Path]]:
    """(stage, checkpoint) for every stage's checkpoints/*.pt, in a stable order."""
    found, missing = [], []
    for stage in stages:
        folder = results / stage / "checkpoints"
        files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
        if not files:
            missing.append(str(folder))
        found += [(stage, f) for f in files]
    if missing:
        raise UserError(
            f"no checkpoints in {', '.join(missing)}: run the training stages first "
            f"(dvc repro {' '.join(TRAINING_STAGES)})"
        )
    return found


def read_checkpoint(path: Path) -> dict:
    """The checkpoint, checked to be a finished one this code can rebuild."""
    import torch

    from .train.engine import CHECKPOINT_FORMAT

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {ckpt.get('format') if isinstance(ckpt, dict) else '?'} "
            f"is not {CHECKPOINT_FORMAT}: retrain it (dvc repro -f <its stage>)"
        )
    if not ckpt["complete"]:
        raise UserError(
            f"{path}: training stopped after epoch {ckpt['epoch'] + 1}; finish it first (dvc repro resumes it)"
        )
    return ckpt


class Evaluator:
    """Scores checkpoints; each prepared dataset is read and checksummed once."""

    def __init__(self, data_dir: Path, device):
        self.data_dir, self.device = data_dir, device
        self._data: dict[str, tuple] = {}

    def _dataset(self, name: str):
        from .data.prepared import file_sha256, load_prepared

        if name not in self._data:
            path = self.data_dir / f"{name}.pt"
            if not path.is_file():
                raise UserError(f"{path} not found: run `dvc repro download` (or pass --data)")
            self._data[name] = (load_prepared(path), file_sha256(path))
        return self._data[name]

    def __call__(self, stage: str, path: Path) -> Evaluation:
        from .data.loaders import ResidentLoader
        from .train.engine import EVAL_BATCH, evaluate
        from .train.models import build_model, input_spec
        from .train.tasks import TASKS

        ckpt = read_checkpoint(path)
        meta, config = ckpt["model_meta"], ckpt["config"]
        data, sha = self._dataset(meta["dataset"])
        if sha != ckpt["data_sha256"]:
            raise UserError(
                f"{path} was trained on another {meta['dataset']}.pt than {self.data_dir}'s "
                f"(checksums differ): rerun the training stages on this data"
            )
        task = TASKS[meta["task"]]
        net = build_model(meta["model"], meta["channels"], meta["num_classes"], width=meta["width"], size=meta["size"])
        net.load_state_dict(ckpt["model"])
        net.to(self.device)
        loader = ResidentLoader(
            data.test_images,
            data.test_labels,
            spec=input_spec(meta["model"], meta["channels"], meta["size"]),
            batch_size=EVAL_BATCH,
            mean=meta["mean"],
            std=meta["std"],
            shuffle=False,
            device=self.device,
        )
        loss, score, n, baseline = evaluate(net, loader, task.loss_fn(), task).tolist()
        last = ckpt["history"][-1] if ckpt["history"] else {}
        sweep, seed = config["sweep"], config["seed"]
        name = path.stem
        return Evaluation(
            stage=stage,
            study=SWEEP_STUDY[sweep],
            sweep=sweep,
            name=name,
            configuration=name.removeprefix(f"{sweep}-").removesuffix(f"-s{seed}"),
            seed=seed,
            task=meta["task"],
            model=meta["model"],
            dataset=meta["dataset"],
            outcome=ckpt["outcome"],
            epochs=ckpt["epoch"] + 1,
            metric=task.metric,
            test_metric=score / n,
            test_loss=loss / n,
            test_baseline=baseline / n if task.metric == "psnr" else math.nan,
            test_images=int(n),
            trained_metric=float(last.get(f"test_{task.metric}", math.nan)),
            checkpoint=str(path),
        )


def checks(evaluations: list[Evaluation]) -> dict:
    """The agreement check: checkpoints scored, how many agree with what training reported, and the
    largest difference (the stage's console and REPORT.md; evaluations.csv has each figure)."""
    worst = max(
        (
            abs(e.test_metric - e.trained_metric)
            for e in evaluations
            if not math.isnan(e.test_metric - e.trained_metric)
        ),
        default=0.0,
    )
    return {
        "checkpoints": len(evaluations),
        "agree_with_training": sum(e.agrees for e in evaluations),
        "max_abs_difference": round(worst, 8),
    }


def headline(evaluations: list[Evaluation]) -> dict:
    """metrics.json, what `dvc metrics show` prints: ``mismatched``, the checkpoints whose figure
    scored again differs from what training reported (0 when the train -> checkpoint -> reload chain
    holds). The test figures are the training stages' (their metrics.json, REPORT.md, evaluations.csv)."""
    found = checks(evaluations)
    return {"mismatched": found["checkpoints"] - found["agree_with_training"]}
