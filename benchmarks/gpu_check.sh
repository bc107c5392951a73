#!/usr/bin/env bash
# A GPU check anyone can run: the gpu preset's structure on one GPU, offline, in about 8 minutes.
#
#   bash benchmarks/gpu_check.sh MNIST_MIRROR_DIR [OUT_DIR]
#
# MNIST_MIRROR_DIR holds torchvision's MNIST file names (the test split's two files suffice:
# t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). Every stage of the pipeline runs as
# dvc.yaml runs it (no DVC needed), with params from benchmarks/gpu_check_params.py: preset gpu,
# MNIST's real test split cut 8,000/2,000, CIFAR-10 replaced by that MNIST, the longest runs
# shortened. Then benchmarks/gpu_util.py (eager vs CUDA-graph steps, side by side) and
# benchmarks/graph_equality.py (losses of graph vs eager steps). Into OUT_DIR (default
# ./gpu_check), at most 8 files: REPORT.md (the claims report), gpu_util.txt, graph_equality.txt,
# metrics.json (every stage's headline figures), probes.csv, summary.csv (study C), times.txt
# (seconds per step) and log.txt (everything printed). Needs python3 with torch, torchvision,
# mlflow and the repository's other requirements importable; PYTHON=... picks the interpreter.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh MNIST_MIRROR_DIR [OUT_DIR]" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${2:-gpu_check}" && cd "${2:-gpu_check}" && pwd)
python=${PYTHON:-python3}
: >"$out/times.txt"
: >"$out/log.txt"
if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA GPU visible to PyTorch: this check is for a GPU machine" | tee -a "$out/log.txt"
  exit 0
fi
if [[ ! -d "$1" ]]; then
  echo "error: $1: no such folder (give the folder holding torchvision's MNIST files)" >&2
  exit 2
fi
mirror=$(cd "$1" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/dpstudy-gpu-check.XXXXXX")
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
"$python" "$repo/benchmarks/gpu_check_params.py" "$repo/params.yaml" "$mirror" >"$work/params.yaml"
cd "$work"

step() {  # step NAME COMMAND...: run it, its output into log.txt, its seconds into times.txt
  local name=$1 start=$SECONDS
  shift
  echo "[gpu_check] $name: $*" | tee -a "$out/log.txt"
  "$@" 2>&1 | tee -a "$out/log.txt"
  echo "$name $((SECONDS - start))" | tee -a "$out/times.txt"
}

p=(--params params.yaml)
step download "$python" -m dpstudy download "${p[@]}" --out data/prepared --raw data/raw
step profile_dataloader "$python" -m dpstudy profile_dataloader "${p[@]}" --data data/prepared \
  --out results/profile_dataloader
step train_dp "$python" -m dpstudy train_dp "${p[@]}" --data data/prepared --out results/train_dp
step train_ddp "$python" -m dpstudy launch train_ddp "${p[@]}" --data data/prepared --out results/train_ddp
step train_adaptive "$python" -m dpstudy launch train_adaptive "${p[@]}" --data data/prepared \
  --out results/train_adaptive
step evaluate "$python" -m dpstudy evaluate "${p[@]}" --data data/prepared --results results --out results/evaluate
step plot "$python" -m dpstudy plot "${p[@]}" --results results --data data/prepared --out results
cp results/REPORT.md results/profile_dataloader/probes.csv results/train_adaptive/summary.csv "$out/"
"$python" - "$out/metrics.json" results/*/metrics.json <<'EOF'
import json, sys
from pathlib import Path
Path(sys.argv[1]).write_text(json.dumps({p: json.loads(Path(p).read_text()) for p in sys.argv[2:]}, indent=1))
EOF

step gpu_util "$python" "$repo/benchmarks/gpu_util.py" --batches 32 256 512 4096 --seconds 1.5
sed -n '/^\[gpu_check\] gpu_util:/,/^graph_util:/p' "$out/log.txt" >"$out/gpu_util.txt"
step graph_equality "$python" "$repo/benchmarks/graph_equality.py" --data data/prepared/mnist.pt --epochs 2
sed -n '/^\[gpu_check\] graph_equality:/,/^graph_equality:/p' "$out/log.txt" >"$out/graph_equality.txt"
echo "[gpu_check] done in $SECONDS s; files in $out" | tee -a "$out/log.txt"
