"""Segmentation of real nuclei: the held-out DSB2018 split, upscaled copies of it, the simulator.

For each segmenter (``maskrcnn`` with the shipped weights and default options,
``maskrcnn-one-pass`` without flip augmentation, ``maskrcnn`` with older weights given by
``--before``, ``watershed``), on one torch thread:

* the fixed validation split of the DSB2018 fluorescence images that
  ``epikit train-segmenter maskrcnn`` holds out (ids in the weights' sidecar), as they are
  and upscaled x2 and x4 (bilinear image, nearest-neighbour labels): a segmenter that
  handles any nucleus size loses little there;
* ``--sim`` study-like simulated 512 x 512 fields (seed unseen by training);
* ``--sora`` simulated 2048 x 2048 fields with nuclei 250-400 px across, as the study's
  super-resolution fields have.

AP is DSB2018-style, averaged over images; F1 from summed counts; seconds are per field
(median), segmentation only.

    python bench/bench_dsb.py --data stage1_train --before v0.1.pt --json bench/dsb.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from bench_segmentation import machine, score, study_fields  # noqa: E402

SORA_SEED = 20_261_207


def validation_images(data: Path, fraction: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fluorescence images of the fixed DSB2018 validation split, as (image (1, Y, X), labels).

    Membership depends on the image id alone (``validation_names``), so this is the split
    ``epikit train-segmenter`` held out, whatever else the folder holds.
    """
    from epikit.io.annotated import dsb_samples, read_dsb_sample
    from epikit.training.maskrcnn import validation_names

    names = validation_names([folder.name for folder in dsb_samples(data)], fraction)
    samples = [read_dsb_sample(data / name) for name in names]
    return [(s.image[None].astype(np.float32), s.labels) for s in samples if s.fluorescence]


def upscaled(fields: list[tuple[np.ndarray, np.ndarray]], factor: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``fields`` magnified ``factor`` times: bilinear image, nearest-neighbour labels."""
    return [(ndimage.zoom(image, (1, factor, factor), order=1), np.kron(labels, np.ones((factor, factor), labels.dtype)))
            for image, labels in fields]


def sora_fields(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """2048 x 2048 nuclear-stain fields with about 17 nuclei 250-400 px across."""
    from epikit.simulate import simulate_field

    rng = np.random.default_rng(SORA_SEED)
    fields = []
    for _ in range(count):
        field = simulate_field(rng, size=(2048, 2048), n_nuclei=(14, 20), radius=(125.0, 200.0),
                               channels=("Hoechst",), psf_sigma=2.0, photons=2000.0, clump=0.1)
        fields.append((field.image.astype(np.float32), field.labels))
    return fields


def main() -> None:
    import torch

    from epikit import get_segmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="DSB2018 stage1_train folder")
    parser.add_argument("--weights", type=Path, default=None, help="maskrcnn weights (default: shipped)")
    parser.add_argument("--before", type=Path, default=None, help="older maskrcnn weights to compare")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as given to train-segmenter")
    parser.add_argument("--limit", type=int, default=None, help="first N validation images only (a quick look)")
    parser.add_argument("--scales", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--sim", type=int, default=10)
    parser.add_argument("--sora", type=int, default=3)
    parser.add_argument("--segmenters", nargs="*", default=["maskrcnn", "maskrcnn-one-pass", "maskrcnn-before", "watershed"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = validation_images(args.data, args.val_fraction)[: args.limit]
    sets = {f"dsb-val x{k}": base if k == 1 else upscaled(base, k) for k in args.scales}
    if args.sim:
        sets["sim 512"] = [(image[:1], labels) for image, labels in study_fields(20_260_817, args.sim)]
    if args.sora:
        sets["sora 2048"] = sora_fields(args.sora)
    builders = {
        "maskrcnn": lambda: get_segmenter("maskrcnn", weights=args.weights, device="cpu"),
        "maskrcnn-one-pass": lambda: get_segmenter("maskrcnn", weights=args.weights, device="cpu", augment=False),
        "maskrcnn-before": lambda: get_segmenter("maskrcnn", weights=args.before, device="cpu"),
        "watershed": lambda: get_segmenter("watershed"),
    }
    names = [n for n in args.segmenters if n != "maskrcnn-before" or args.before is not None]
    report: dict[str, Any] = {"machine": machine(), "sets": {k: len(v) for k, v in sets.items()}, "results": {}}
    for name in names:
        segmenter = builders[name]()
        for set_name, fields in sets.items():
            result = score(segmenter, fields)
            report["results"][f"{name} | {set_name}"] = result
            print(f"{name:16s} {set_name:12s} AP@0.5 {result['ap_50']:.3f}  mAP {result['mean_ap']:.3f}  "
                  f"F1 {result['f1']:.3f}  {result['seconds_median']:.2f} s/field  (n={result['fields']})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
