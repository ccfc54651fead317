"""Benchmark the training loop: resnet10 training cells/s per crop size, and the acceptance run.

    python bench/bench_train.py speed --sizes 64 96 128            # cells/s of the fit loop
    python bench/bench_train.py accept --fields 20 --out /tmp/acc   # simulate, extract, 5-fold CV

``speed`` times :func:`epikit.training.fit.train_classifier` itself (batched indexing,
augmentation, AdamW, precise BatchNorm, validation) on random crops, after one warm-up
epoch. ``accept`` simulates fields with the default planted effect (``epikit.simulate``),
extracts crops with the ground-truth masks, and runs grouped 5-fold cross-validation of
``resnet10`` with the default training options; it prints wall time and the scores.
Numbers go into ``bench/README.md``; the load average is printed because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def speed(sizes: list[int], cells: int, epochs: int, batch_size: int, channels: int) -> list[dict]:
    """Training cells/s of resnet10 for each crop size (random data, two classes)."""
    import torch

    from epikit.registry import get_classifier
    from epikit.training.fit import train_classifier
    from epikit.options import TrainingOptions

    rows = []
    for size in sizes:
        torch.manual_seed(0)
        crops = torch.rand(cells, channels, size, size)
        labels = torch.arange(cells) % 2
        train = torch.arange(cells - cells // 8)
        validation = torch.arange(cells - cells // 8, cells)
        model = get_classifier("resnet10", channels, 2, size)
        warm = TrainingOptions(epochs=1, batch_size=batch_size, progress=False)
        train_classifier(model, crops, labels, train, validation, warm, "cpu")
        options = TrainingOptions(epochs=epochs, batch_size=batch_size, patience=epochs,
                                  progress=False)
        trained = train_classifier(model, crops, labels, train, validation, options, "cpu")
        row = {
            "crop_size": size,
            "channels": channels,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "cells_per_second": round(trained.samples_seen / trained.seconds, 1),
            "load_average": _load(),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def accept(out: Path, fields: int, field_size: int, seed: int, folds: int) -> dict:
    """Simulate -> extract (true masks) -> grouped K-fold resnet10; time and scores."""
    from epikit.extraction import extract_cells
    from epikit.io import discover_images
    from epikit.simulate import simulate_dataset
    from epikit.training.stage import train_run

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    data = simulate_dataset(out / "sim", n_fields=fields, size=field_size, seed=seed)
    summary = extract_cells(discover_images(data / "images"), data / "masks", out / "run",
                            crop_size=64)
    prepared = time.perf_counter()
    metrics = train_run(out / "run", "resnet10", folds=folds, seed=0, progress=True)
    trained = time.perf_counter()
    row = {
        "fields_per_condition": fields,
        "field_size": field_size,
        "cells": summary["n_cells"],
        "cells_per_condition": summary["cells_per_condition"],
        "simulate_extract_s": round(prepared - started, 1),
        "train_s": round(trained - prepared, 1),
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy": metrics["accuracy"],
        "roc_auc": metrics["roc_auc"],
        "fold_balanced_accuracy": [f["balanced_accuracy"] for f in metrics["folds"]],
        "best_epochs": [f["best_epoch"] for f in metrics["folds"]],
        "image_level": metrics["image_level"],
        "training_cells_per_second": metrics["training_cells_per_second"],
        "load_average": _load(),
    }
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("speed", help="training cells/s of resnet10 per crop size")
    s.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    s.add_argument("--cells", type=int, default=256)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--channels", type=int, default=3)
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = commands.add_parser("accept", help="simulate + extract + grouped CV of resnet10")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--fields", type=int, default=20, help="fields per condition")
    a.add_argument("--field-size", type=int, default=512)
    a.add_argument("--seed", type=int, default=20261201)
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "speed":
        speed(args.sizes, args.cells, args.epochs, args.batch_size, args.channels)
    else:
        accept(args.out, args.fields, args.field_size, args.seed, args.folds)


if __name__ == "__main__":
    main()
