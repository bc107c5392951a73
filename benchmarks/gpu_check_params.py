"""params.yaml for `gpu_check.sh`: the gpu preset's structure, offline, sized for ≤ 8 minutes on one GPU.

From the repository's params.yaml: preset gpu; MNIST only, read from a mirror folder holding
torchvision's MNIST file names, its test split (10,000 real images) cut into 8,000 training and
2,000 test images (``upstream_split: test_only``), so no internet and no 60,000-image download is
needed; CIFAR-10 replaced by that MNIST wherever the gpu preset names it; and the longest training
runs shortened (fewer epochs, the same milestones' shape). Every grid, stage, claim and step kind
stays as the gpu preset has it.

    python benchmarks/gpu_check_params.py params.yaml MIRROR_DIR > check.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

# (dotted key, value for the gpu column): what the 8-minute check shortens.
SHORTER = {
    "profile_dataloader.probe.min_seconds": 1.2,  # still longer than NVML's 1 s averaging period
    "train_dp.lenet_lr_scaling.recipe.epochs": 6,
    "train_adaptive.classification.recipe.epochs": 8,
    "train_adaptive.classification.recipe.milestones": [4, 6],
    "train_adaptive.restoration.recipe.epochs": 4,
    "train_adaptive.restoration.recipe.milestones": [2, 3],
}


def derive(params: dict, mirror: str) -> dict:
    """The check's params from the repository's (a parsed params.yaml)."""
    out = copy.deepcopy(params)
    out["preset"] = "gpu"
    _replace_dataset(out)
    download = out["download"]
    download.update(
        datasets={**download["datasets"], "gpu": ["mnist"]} if isinstance(download["datasets"], dict) else ["mnist"],
        mirror=str(mirror),
        upstream_split="test_only",
    )
    for dotted, value in SHORTER.items():
        *path, last = dotted.split(".")
        node = out
        for key in path:
            node = node[key]
        if isinstance(node[last], dict) and "gpu" in node[last]:
            node[last]["gpu"] = value
        else:
            node[last] = value
    return out


def _replace_dataset(node) -> None:
    """cifar10 -> mnist in the gpu column of every dataset setting (MNIST is the check's one dataset)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "dataset" and isinstance(value, dict) and value.get("gpu") == "cifar10":
                value["gpu"] = "mnist"
            elif key == "dataset" and value == "cifar10":
                node[key] = "mnist"
            else:
                _replace_dataset(value)
    elif isinstance(node, list):
        for item in node:
            _replace_dataset(item)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gpu_check_params.py PARAMS_YAML MIRROR_DIR", file=sys.stderr)
        return 2
    params, mirror = Path(argv[0]), Path(argv[1])
    if not (mirror / "t10k-images-idx3-ubyte.gz").is_file():
        print(
            f"error: {mirror}: no t10k-images-idx3-ubyte.gz: the mirror folder must hold torchvision's MNIST "
            f"files (at least the test split's two)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(yaml.safe_dump(derive(yaml.safe_load(params.read_text()), str(mirror.resolve())), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
