#!/usr/bin/env bash
# The GPU path check, on a machine with a CUDA GPU (run from anywhere; needs epikit installed):
#
#   bash bench/gpu.sh [WORKDIR]            # WORKDIR keeps the demo run (default: a temp folder)
#
# 1. the tests marked `cuda` (CPU and GPU results within the tolerances stated in
#    tests/test_device_tolerance.py and README.md), which must pass and must not be skipped;
# 2. Score-CAM (resnet10, 64 cells of 64 px) and training (resnet10, 1,024 crops of 64 px,
#    3 epochs after a warm-up epoch) timed on the CPU and on the GPU that epikit picks by itself;
# 3. the demo end to end (`epikit run`, all defaults, device chosen automatically);
# then prints one table. Exits non-zero when there is no GPU, a test fails, or the device
# epikit chose is not the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-$(mktemp -d -t epikit-gpu-XXXXXX)}
mkdir -p "$WORKDIR"
export PYTHONUNBUFFERED=1

python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch: nothing to check')"

echo "== tests marked cuda"
python -m pytest -q -m cuda -rs -p no:cacheprovider tests | tee "$WORKDIR/pytest.txt"
if grep -q "SKIPPED\|no tests ran" "$WORKDIR/pytest.txt"; then
    echo "cuda tests were skipped or not collected" >&2
    exit 1
fi

echo "== demo end to end (epikit run, defaults)"
rm -rf "$WORKDIR/demo"
DEMO_START=$(date +%s.%N)
epikit run --out "$WORKDIR/demo" > "$WORKDIR/demo.log" 2>&1 || { tail -20 "$WORKDIR/demo.log"; exit 1; }
DEMO_WALL=$(python -c "import time; print(round(time.time() - $DEMO_START, 1))")

echo "== Score-CAM and training, CPU vs GPU"
python - "$WORKDIR" "$DEMO_WALL" <<'EOF'
import json
import sys
import time
from pathlib import Path

import torch

from epikit.device import default_device, describe_device
from epikit.options import TrainingOptions
from epikit.registry import get_classifier, get_explainer
from epikit.training.fit import train_classifier

workdir, demo_wall = Path(sys.argv[1]), float(sys.argv[2])
device = default_device()
if device.type != "cuda":
    sys.exit(f"epikit chose {device}, not the GPU")


def synchronise(where: torch.device) -> None:
    if where.type == "cuda":
        torch.cuda.synchronize(where)


def time_scorecam(where: torch.device, cells: int = 64, size: int = 64) -> float:
    """Seconds per cell of exact Score-CAM on ``where`` (best of 3 after a warm-up)."""
    torch.manual_seed(0)
    model = get_classifier("resnet10", 3, 2, size).eval().to(where)
    crops = torch.rand(cells, 3, size, size, device=where)
    targets = torch.arange(cells, device=where) % 2
    explainer = get_explainer("scorecam")
    explainer.explain(model, crops[:4], targets[:4])
    best = float("inf")
    for _ in range(3):
        synchronise(where)
        started = time.perf_counter()
        explainer.explain(model, crops, targets)
        synchronise(where)
        best = min(best, time.perf_counter() - started)
    return best / cells


def time_training(where: torch.device, cells: int = 1024, size: int = 64, epochs: int = 3) -> float:
    """Training cells per second of resnet10 on ``where`` (the shared fit loop, default options)."""
    torch.manual_seed(0)
    crops = torch.rand(cells, 3, size, size)
    labels = torch.arange(cells) % 2
    train, validation = torch.arange(cells - cells // 8), torch.arange(cells - cells // 8, cells)
    model = get_classifier("resnet10", 3, 2, size)
    train_classifier(model, crops, labels, train, validation, TrainingOptions(epochs=1, progress=False), where)
    options = TrainingOptions(epochs=epochs, patience=epochs, progress=False)
    synchronise(where)
    trained = train_classifier(model, crops, labels, train, validation, options, where)
    synchronise(where)
    return trained.samples_seen / trained.seconds


cpu = torch.device("cpu")
rows = [
    ("Score-CAM s/cell (resnet10, S=64, exact)", time_scorecam(cpu), time_scorecam(device)),
    ("training cells/s (resnet10, S=64, batch 16)", time_training(cpu), time_training(device)),
]
manifest = json.loads((workdir / "demo" / "manifest.json").read_text())
metrics = json.loads((workdir / "demo" / "metrics.json").read_text())
tests = (workdir / "pytest.txt").read_text().strip().splitlines()[-1]

print(f"\nGPU path check: {describe_device(device)}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
print(f"{'what':<46} {'CPU':>10} {'GPU':>10} {'GPU/CPU':>8}")
for name, on_cpu, on_gpu in rows:
    ratio = on_cpu / on_gpu if name.startswith("Score-CAM") else on_gpu / on_cpu
    print(f"{name:<46} {on_cpu:>10.3f} {on_gpu:>10.3f} {ratio:>7.1f}x")
stages = ", ".join(f"{k} {v:.1f}" for k, v in manifest["stage_seconds"].items())
accuracy = metrics.get("classification", {}).get("balanced_accuracy")
print(f"{'demo end to end, s (device: ' + manifest['device'] + ')':<46} {'':>10} {demo_wall:>10.1f}")
print(f"{'  stages, s':<46} {stages}")
print(f"{'  balanced accuracy':<46} {accuracy}")
print(f"{'tests marked cuda':<46} {tests}")
EOF
