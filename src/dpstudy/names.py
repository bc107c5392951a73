"""The names params.yaml may give each registry, without importing what implements them.

`dpstudy.config` validates params.yaml against these before any stage imports torch (which takes
10-30 s on a busy machine), so a typo is reported at once. Each owning module builds its registry
from, or checks it against, the tuple here, so the two cannot drift: add a name here and implement
it there.
"""

from __future__ import annotations

# data/datasets.py: `build` makes each (DATASETS); data/prepared.py writes <name>.pt.
DATASET_NAMES = ("digits", "mnist", "cifar10")

# loaders.py: `make_loader` builds each (LOADERS).
LOADER_NAMES = ("standard", "resident")

# models.py: the keys of MODELS, in this order (the order error messages list them in).
MODEL_NAMES = ("lenet", "vgg16", "resnet20", "srnet")

# graphstep.py: how a training step runs (STEPS): eager, or captured as a CUDA graph and replayed.
STEP_NAMES = ("eager", "graph")

# train/schedules.py: how the peak lr follows the batch (`scale_lr`), and the decays after warm-up.
LR_RULES = ("none", "linear", "sqrt")
DECAYS = ("none", "step", "cosine")
