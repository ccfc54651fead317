"""Benchmark the shipped ``maskrcnn`` weights: speed per field and AP on unseen simulated fields.

Measures, with the weights in ``epikit/segmenters/weights`` (or ``--weights``):

* AP@0.5, AP@0.75, mean AP (DSB2018-style) and F1 on ``--fields`` 512 x 512 fields with
  ``simulate_field`` defaults (the fields ``simulate_dataset`` writes), from a seed that no
  test or training run uses, and on ``--diverse`` 256 x 256 fields drawn by
  ``sample_diverse_field_params`` (radius 6-40 px, sparse to crowded, low to high SNR);
* seconds per 512 x 512 field (median over those fields) and for one 2048 x 2048 field, for
  each ``--tile-sizes`` value (tiles overlap by ``--overlap`` px).

The field generators, scoring and machine description are shared with
``bench/bench_segmentation.py`` (which compares all segmenters). CPU timings on a shared
machine are noisy: the load average is recorded with the numbers.

    python bench/bench_maskrcnn.py --json bench/maskrcnn.json
    python bench/bench_maskrcnn.py --fields 5 --diverse 10 --tile-sizes 512
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_segmentation import SEED, diverse_fields, machine, score, study_fields


def model_facts(segmenter: Any) -> dict[str, Any]:
    """Parameters, file size and training record of the loaded weights."""
    from epikit.segmenters.maskrcnn_model import count_parameters, sidecar_path

    path = Path(segmenter.weights_path)
    facts: dict[str, Any] = {
        "weights": str(path),
        "weights_mib": round(path.stat().st_size / 2**20, 2),
        "parameters": count_parameters(segmenter.model),
    }
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        facts.update({k: meta.get(k) for k in ("command", "steps", "train_seconds", "final_loss", "validation")})
    return facts


def main() -> None:
    """Run the benchmark, print a Markdown table and optionally write JSON."""
    import torch

    from epikit.segmenters.maskrcnn import MaskRCNNSegmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="default: the shipped weights")
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--diverse", type=int, default=30)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    study = study_fields(args.seed, args.fields)
    diverse = diverse_fields(args.seed, args.diverse)
    large = study_fields(args.seed + 2, 1, size=2048, n_nuclei=(160, 400))
    report: dict[str, Any] = {"machine": machine(), "seed": args.seed, "runs": {}}
    for tile in args.tile_sizes:
        segmenter = MaskRCNNSegmenter(weights=args.weights, tile_size=tile, overlap=min(args.overlap, tile * 3 // 8))
        report.setdefault("model", model_facts(segmenter))
        run = {"study_512": score(segmenter, study), "large_2048": score(segmenter, large)}
        if tile == args.tile_sizes[0]:
            run["diverse_256"] = score(segmenter, diverse)
        report["runs"][f"tile_{tile}"] = run
        print(f"tile {tile}: {json.dumps(run)}", flush=True)
    report["machine"]["load_average_end"] = machine()["load_average"]
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def print_table(report: dict[str, Any]) -> None:
    """The Markdown table recorded in bench/README.md."""
    print(f"\nmodel: {json.dumps(report['model'])}\nmachine: {report['machine']}, seed {report['seed']}\n")
    print("| tiles | s / 512² field | s / 2048² field | AP@0.5 (512², n) | AP@0.75 | mean AP | F1 | "
          "AP@0.5 2048² | AP@0.5 diverse 256² (n) | mean AP diverse |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, run in report["runs"].items():
        study, large, diverse = run["study_512"], run["large_2048"], run.get("diverse_256")
        cells = [
            name.replace("tile_", "") + " px",
            f"{study['seconds_median']:.2f}",
            f"{large['seconds_median']:.1f}",
            f"{study['ap_50']:.3f} ({study['fields']})",
            f"{study['ap_75']:.3f}",
            f"{study['mean_ap']:.3f}",
            f"{study['f1']:.3f}",
            f"{large['ap_50']:.3f}",
            f"{diverse['ap_50']:.3f} ({diverse['fields']})" if diverse else "-",
            f"{diverse['mean_ap']:.3f}" if diverse else "-",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
