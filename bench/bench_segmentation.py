"""Benchmark the registered segmenters: seconds per field and accuracy on simulated fields.

For each segmenter:

* AP on ``--fields`` study-like 512 x 512 fields (``simulate_field`` defaults, Ctrl and VPA
  alternating) drawn from ``--seed``, a seed no test or training run uses; also the
  seconds per 512 x 512 field (median over those fields);
* AP on ``--diverse`` 256 x 256 fields drawn by ``sample_diverse_field_params`` (nucleus
  radius 6-40 px, sparse to crowded, uneven illumination, low to high SNR);
* seconds for one 2048 x 2048 field (``--large``), with its AP.

AP values are DSB2018-style (``epikit.analysis.segmentation_metrics``), averaged over
images; F1 (IoU 0.5) is computed from the summed counts.

Cellpose has no weights offline: ``--cellpose-weights random-vitl`` times the real
Cellpose-SAM pipeline (ViT-L, fp32) with untrained weights - a speed measurement only, its
AP is not reported. Give a weights file to score it.

    python bench/bench_segmentation.py --json bench/segmentation.json
    python bench/bench_segmentation.py --segmenters watershed --fields 5 --no-large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20_260_817  # unseen: no test, tuning or training run draws from it
AP_KEYS = ("ap_50", "ap_75", "mean_ap")


def study_fields(seed: int, count: int, size: int = 512, **params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` default-parameter fields (alternating ctrl / vpa) as (image float32, labels)."""
    from epikit.simulate import simulate_field

    rng = np.random.default_rng(seed)
    fields = []
    for index in range(count):
        field = simulate_field(rng, size=(size, size), condition="vpa" if index % 2 else "ctrl", **params)
        fields.append((field.image.astype(np.float32), field.labels))
    return fields


def diverse_fields(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` 256 x 256 fields with diverse settings (nuclear channel only)."""
    from epikit.simulate import sample_diverse_field_params, simulate_field

    rng = np.random.default_rng(seed + 1)
    fields = []
    for _ in range(count):
        field = simulate_field(rng, **sample_diverse_field_params(rng, size=256))
        fields.append((field.image.astype(np.float32), field.labels))
    return fields


def score(segmenter: Any, fields: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Image-averaged AP, pooled F1 and per-field seconds of ``segmenter`` on ``fields``."""
    from epikit.analysis.segmentation_metrics import evaluate_segmentation

    results, seconds = [], []
    for image, truth in fields:
        start = time.perf_counter()
        labels = segmenter.segment(image, nuclear_channel=0)
        seconds.append(time.perf_counter() - start)
        results.append(evaluate_segmentation(labels, truth))
    tp = sum(r["tp"] for r in results)
    total = sum(r["n_true"] + r["n_pred"] for r in results)
    summary = {key: float(np.mean([r[key] for r in results])) for key in AP_KEYS}
    summary.update(
        f1=2 * tp / total if total else 1.0,
        n_true=sum(r["n_true"] for r in results),
        n_pred=sum(r["n_pred"] for r in results),
        fields=len(fields),
        seconds_median=statistics.median(seconds),
        seconds_all=[round(s, 3) for s in seconds],
    )
    return summary


def random_vitl_weights(folder: Path) -> str:
    """A weights file that makes cellpose build its full ViT-L with untrained weights.

    cellpose loads state dicts non-strictly and requires only its fixed ``W2`` buffer, so
    the network keeps its random initialisation: right for timing, useless for accuracy.
    """
    import torch

    patch, outputs = 8, 3
    eye = torch.eye(outputs * patch**2).reshape(outputs * patch**2, outputs, patch, patch)
    path = folder / "cellpose_random_vitl.pt"
    torch.save({"W2": eye}, path)
    return str(path)


def build(name: str, args: argparse.Namespace, scratch: Path) -> tuple[Any, bool]:
    """The segmenter ``name`` and whether its accuracy means anything (False: random weights)."""
    from epikit import get_segmenter

    if name == "cellpose":
        weights = args.cellpose_weights
        if weights == "random-vitl":
            return get_segmenter(name, pretrained_model=random_vitl_weights(scratch),
                                 precision="fp32", diameter=args.cellpose_diameter), False
        return get_segmenter(name, pretrained_model=weights, diameter=args.cellpose_diameter), True
    if name == "sam":
        if not args.sam_checkpoint:
            raise RuntimeError("sam needs --sam-checkpoint (a segment-anything checkpoint)")
        return get_segmenter(name, checkpoint=args.sam_checkpoint, model_type=args.sam_model_type), True
    return get_segmenter(name), True


def machine() -> dict[str, Any]:
    """Where the numbers were measured (the load average says how shared the CPU was)."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main() -> None:
    """Run the benchmark and print a Markdown table (and JSON with ``--json``)."""
    from epikit import list_segmenters

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segmenters", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--diverse", type=int, default=30)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-large", dest="large", action="store_false", help="skip the 2048 x 2048 field")
    parser.add_argument("--cellpose-weights", default="random-vitl")
    parser.add_argument("--cellpose-diameter", type=float, default=None)
    parser.add_argument("--cellpose-fields", type=int, default=1,
                        help="fields timed for cellpose (minutes each on a CPU)")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--sam-model-type", default="vit_b")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    names = args.segmenters if args.segmenters is not None else list_segmenters()
    study = study_fields(args.seed, args.fields)
    diverse = diverse_fields(args.seed, args.diverse)
    large = study_fields(args.seed + 2, 1, size=2048, n_nuclei=(160, 400)) if args.large else []
    report: dict[str, Any] = {"machine": machine(), "seed": args.seed, "segmenters": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            entry: dict[str, Any] = {}
            try:
                start = time.perf_counter()
                segmenter, meaningful = build(name, args, Path(scratch))
                entry["build_seconds"] = time.perf_counter() - start
            except Exception as error:  # report and go on with the others
                report["segmenters"][name] = {"skipped": f"{type(error).__name__}: {error}"}
                print(f"{name}: skipped ({error})", flush=True)
                continue
            slow = name == "cellpose"
            entry["accuracy_meaningful"] = meaningful
            entry["study_512"] = score(segmenter, study[: args.cellpose_fields] if slow else study)
            if not slow:
                entry["diverse_256"] = score(segmenter, diverse)
                if large:
                    entry["large_2048"] = score(segmenter, large)
            report["segmenters"][name] = entry
            print(f"{name}: {json.dumps(entry)}", flush=True)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def print_table(report: dict[str, Any]) -> None:
    """The Markdown table bench/README.md records."""
    print(f"\nmachine: {report['machine']}, seed {report['seed']}\n")
    print("| segmenter | s / 512² field | s / 2048² field | AP@0.5 (512², n) | AP@0.75 | mean AP | F1 | "
          "AP@0.5 diverse (n) | mean AP diverse |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, entry in report["segmenters"].items():
        if "skipped" in entry:
            print(f"| {name} | skipped: {entry['skipped']} |||||||")
            continue
        study = entry["study_512"]
        large = entry.get("large_2048")
        diverse = entry.get("diverse_256")
        fmt = (lambda v: f"{v:.3f}") if entry["accuracy_meaningful"] else (lambda v: "n/a")
        cells = [
            name,
            f"{study['seconds_median']:.2f}",
            f"{large['seconds_median']:.1f}" if large else "-",
            f"{fmt(study['ap_50'])} ({study['fields']})",
            fmt(study["ap_75"]),
            fmt(study["mean_ap"]),
            fmt(study["f1"]),
            f"{fmt(diverse['ap_50'])} ({diverse['fields']})" if diverse else "-",
            fmt(diverse["mean_ap"]) if diverse else "-",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
