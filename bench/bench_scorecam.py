"""Benchmark epikit's Score-CAM against pytorch-grad-cam's and torchcam's, same model and crops.

For each crop size S a ``resnet10`` (the study's network) is trained for a few epochs on
simulated nuclei (ground-truth masks, epikit's extraction), then the same cells are explained
by every implementation in interleaved repeats (the minimum time per method is kept):

* ``epikit``            ``scorecam`` as the study defines it (softmax probability weights);
* ``epikit-libweights`` ``scorecam`` with ``score="logit", weighting="softmax-over-channels"``,
                        the weighting both libraries use by default (compared with torchcam);
* ``epikit-pgc``        the same with ``align_corners=True`` mask upsampling, as
                        pytorch-grad-cam (compared with pytorch-grad-cam);
* ``epikit-bf16``       ``scorecam`` with ``precision="bfloat16"`` (approximate; compared with
                        ``epikit``);
* ``pytorch-grad-cam``  ``ScoreCAM`` (default target = logit) at batch sizes 8 / 16 (its
                        default) / 128; the fastest counts;
* ``torchcam``          ``ScoreCAM`` (logit scores) at batch sizes 8 / 32 (its default) / 128.

Agreement: Pearson r per cell between each library and the matching epikit setting
(torchcam's layer-resolution map upsampled bilinearly to S). FLOP floor: 128 forwards x FLOPs of one
forward (``torch.utils.flop_counter``) / the conv throughput measured on this machine
(a 64->64 3x3 convolution, the bulk of resnet10's work), so ``ratio`` = seconds per cell /
floor seconds per cell.

The libraries are installed only for this benchmark, in a separate environment::

    python -m venv --system-site-packages /tmp/benchenv
    /tmp/benchenv/bin/pip install grad-cam torchcam      # check first: pip install --dry-run
    /tmp/benchenv/bin/python bench/bench_scorecam.py --sizes 64 128 256 --cells 8

Without them only the epikit rows are measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def build_model_and_crops(size: int, cells: int, epochs: int, root: Path, seed: int = 0):
    """Simulate nuclei, extract S x S crops, train resnet10 briefly; return (model, crops, targets)."""
    from epikit.runfolder.cells import CellDataset
    from epikit.extraction import extract_cells
    from epikit.io import discover_images
    from epikit.registry import get_classifier
    from epikit.simulate import simulate_dataset
    from epikit.training.fit import train_classifier
    from epikit.options import TrainingOptions

    simulate_dataset(root / "input", n_fields=4, size=256, seed=seed)
    run = root / "run"
    run.mkdir()
    extract_cells(discover_images(root / "input" / "images"), root / "input" / "masks", run, crop_size=size)
    data = CellDataset(run)
    x = torch.as_tensor(data.load_crops())
    y = torch.as_tensor(data.labels)
    torch.manual_seed(seed)
    model = get_classifier("resnet10", x.shape[1], 2, size)
    order = torch.randperm(len(x))
    options = TrainingOptions(epochs=epochs, batch_size=32, progress=False, amp=False, seed=seed)
    trained = train_classifier(model, x, y, order[: int(0.8 * len(x))], order[int(0.8 * len(x)):],
                               options, torch.device("cpu")).model.eval()
    picked = order[:cells]
    with torch.inference_mode():
        targets = trained(x[picked]).argmax(dim=1)
    return trained, x[picked].clone(), targets


def conv_throughput(repeats: int = 5) -> float:
    """FLOP/s of a 64->64 3x3 convolution on a (64, 64, 32, 32) input (channels-last, inference)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(64, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * 64 * 9 * 32 * 32 * 64
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best


def forward_flops(model: torch.nn.Module, crop: torch.Tensor) -> int:
    """FLOPs of one forward pass of one crop."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(crop[None])
    return int(counter.get_total_flops())


def library_runners(model, layer):
    """Callables crops, targets -> maps (N, S, S) for the installed libraries."""
    runners = {}
    try:
        from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def grad_cam(crops, targets, batch_size):
            cam = GradCamScoreCAM(model=model, target_layers=[layer])
            cam.batch_size = batch_size
            try:
                return torch.as_tensor(cam(input_tensor=crops, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
            finally:
                cam.activations_and_grads.release()

        runners["pytorch-grad-cam"] = (grad_cam, (8, 16, 128))
    except ImportError:
        pass
    try:
        from torchcam.methods import ScoreCAM as TorchCamScoreCAM

        def torch_cam(crops, targets, batch_size):
            size = crops.shape[-1]
            with TorchCamScoreCAM(model, layer, batch_size=batch_size, input_shape=tuple(crops.shape[1:])) as cam:
                with torch.inference_mode():
                    model(crops)
                maps = cam(class_idx=[int(t) for t in targets])[0]
            return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]

        runners["torchcam"] = (torch_cam, (8, 32, 128))
    except ImportError:
        pass
    return runners


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson r per map between two (N, S, S) stacks."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).numpy()


def bench_size(size: int, cells: int, epochs: int, repeats: int) -> dict:
    """Timings, agreement and FLOP-floor ratios at one crop size."""
    from epikit.explainers.cam_layers import capture_output
    from epikit.explainers.scorecam import ScoreCAM

    with tempfile.TemporaryDirectory() as tmp:
        model, crops, targets = build_model_and_crops(size, cells, epochs, Path(tmp))
    layer = model.get_submodule(model.cam_layer)
    with capture_output(layer) as holder, torch.inference_mode():
        model(crops[:1])
    channels = int(holder.output.shape[1])  # forwards per cell
    methods = {
        "epikit": lambda: ScoreCAM().explain(model, crops, targets),
        "epikit-libweights": lambda: ScoreCAM(score="logit", weighting="softmax-over-channels").explain(
            model, crops, targets),
        "epikit-pgc": lambda: ScoreCAM(score="logit", weighting="softmax-over-channels", align_corners=True).explain(
            model, crops, targets),
        "epikit-bf16": lambda: ScoreCAM(precision="bfloat16").explain(model, crops, targets),
    }
    for name, (run, batch_sizes) in library_runners(model, layer).items():
        for batch_size in batch_sizes:
            methods[f"{name} (batch {batch_size})"] = (lambda run=run, b=batch_size: run(crops, targets, b))
    best = {name: float("inf") for name in methods}
    outputs = {}
    for name, run in methods.items():  # warm-up, and the outputs for agreement
        outputs[name] = run().float()
    throughput = 0.0
    for _ in range(repeats):  # interleaved, so load changes hit every method alike
        throughput = max(throughput, conv_throughput())
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    floor = channels * forward_flops(model, crops[0]) / throughput
    rows = {}
    for name, seconds in best.items():
        row = {"seconds_per_cell": seconds / len(crops), "floor_ratio": seconds / len(crops) / floor}
        if name.startswith(("pytorch-grad-cam", "torchcam", "epikit-bf16")):
            matching = {"p": "epikit-pgc", "t": "epikit-libweights", "e": "epikit"}[name[0]]
            r = pearson(outputs[matching], outputs[name])
            row.update(pearson_mean=float(r.mean()), pearson_min=float(r.min()))
        rows[name] = row
    for library, matching in (("pytorch-grad-cam", "epikit-pgc"), ("torchcam", "epikit-libweights")):
        times = [row["seconds_per_cell"] for name, row in rows.items() if name.startswith(library)]
        if times:
            rows[f"speed-up vs {library}"] = {
                "epikit": min(times) / rows["epikit"]["seconds_per_cell"],
                matching: min(times) / rows[matching]["seconds_per_cell"]}
    return {"size": size, "cells": len(crops), "floor_seconds_per_cell": floor,
            "conv_gflops": throughput / 1e9, "methods": rows}


def main() -> None:
    """Run the benchmark and print a JSON summary (plus a table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON results here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [bench_size(size, args.cells, args.epochs, args.repeats) for size in args.sizes]
    for result in results:
        print(f"\nS = {result['size']} ({result['cells']} cells, floor "
              f"{result['floor_seconds_per_cell']:.3f} s/cell at {result['conv_gflops']:.1f} GFLOP/s, "
              f"{args.threads} thread(s))")
        for name, row in result["methods"].items():
            print(f"  {name:32s} " + "  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
