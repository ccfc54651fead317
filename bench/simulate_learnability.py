"""Can a small CNN learn the planted effect from single masked nuclei? (field-grouped split)

Simulates ``--fields`` fields per condition with the default study settings, cuts every
nucleus not touching the border out with its ground-truth mask (outside = 0), pads it to a
square, resizes it to 64 x 64 and divides each channel by the crop's in-mask mean (so total
brightness carries no information). A small CNN is trained on the fields of 70% of the
groups and tested on the rest; balanced accuracy is printed. Also reports the best single
threshold on the H3K27ac rim/centre ratio (a non-learned reference) and, as a negative
control, the same CNN on a dataset with ``effect="none"``.

Run: ``python bench/simulate_learnability.py [--fields 20] [--epochs 30] [--effects periphery,none]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

from epikit.simulate import CHANNEL_NAMES, simulate_field
from epikit.simulate.dataset import field_rng

CROP = 64


def crops_of(field, field_id: int) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Masked, padded, resized, per-channel-normalised crops of a field's inner nuclei."""
    labels = field.labels
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    crops, ratios, groups = [], [], []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or index in border:
            continue
        mask = labels[box] == index
        pixels = field.image[(slice(None), *box)].astype(np.float32) - 100.0  # camera offset
        pixels = pixels * mask
        pixels /= np.maximum(pixels[:, mask].mean(axis=1), 1e-6)[:, None, None]
        height, width = mask.shape
        side = max(height, width)
        square = np.zeros((3, side, side), np.float32)
        y0, x0 = (side - height) // 2, (side - width) // 2
        square[:, y0:y0 + height, x0:x0 + width] = pixels
        crops.append(resize(square, (3, CROP, CROP), order=1, anti_aliasing=True, preserve_range=True))
        distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][mask]
        values = pixels[CHANNEL_NAMES.index("H3K27ac")][mask]
        rim = distance <= np.median(distance)
        ratios.append(float(values[rim].mean() / values[~rim].mean()))
        groups.append(field_id)
    return crops, ratios, groups


def dataset(fields: int, effect: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crops, labels (0 ctrl, 1 vpa), field groups and rim/centre ratios."""
    xs, ys, gs, rs = [], [], [], []
    for label, condition in enumerate(("ctrl", "vpa")):
        for index in range(fields):
            field = simulate_field(field_rng(seed, condition, index), condition=condition, effect=effect)
            crops, ratios, groups = crops_of(field, label * fields + index)
            xs += crops
            rs += ratios
            gs += groups
            ys += [label] * len(crops)
    return np.stack(xs), np.array(ys), np.array(gs), np.array(rs)


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall."""
    return float(np.mean([(predicted[truth == k] == k).mean() for k in (0, 1)]))


def train_and_test(x: np.ndarray, y: np.ndarray, groups: np.ndarray, epochs: int, seed: int) -> float:
    """Balanced accuracy of a small CNN on held-out fields (30% of each condition's fields)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    test_groups = set()
    for label in (0, 1):
        field_ids = np.unique(groups[y == label])
        test_groups |= set(rng.choice(field_ids, size=max(1, int(0.3 * len(field_ids))), replace=False).tolist())
    test = np.isin(groups, list(test_groups))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 2),
    )
    xt, yt = torch.from_numpy(x[~test]), torch.from_numpy(y[~test])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 32):
            batch = order[start:start + 32]
            images = xt[batch]
            if rng.random() < 0.5:  # flips and 90-degree turns: orientation carries no information
                images = images.flip(-1)
            images = torch.rot90(images, int(rng.integers(4)), dims=(-2, -1))
            loss = torch.nn.functional.cross_entropy(model(images), yt[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x[test])).argmax(1).numpy()
    return balanced_accuracy(y[test], predicted)


def best_threshold_accuracy(ratios: np.ndarray, y: np.ndarray) -> float:
    """Balanced accuracy of the best single threshold on the rim/centre ratio."""
    return max(balanced_accuracy(y, (ratios > t).astype(int)) for t in np.unique(ratios))


def main() -> None:
    """Print balanced accuracies for the periphery effect and for no effect."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=20, help="fields per condition")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--effects", default="periphery,none", help="comma-separated effects to try")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for effect in args.effects.split(","):
        start = time.perf_counter()
        x, y, groups, ratios = dataset(args.fields, effect, args.seed)
        accuracy = train_and_test(x, y, groups, args.epochs, args.seed)
        print(f"effect={effect:9s} cells={len(y)} (ctrl {int((y == 0).sum())}, vpa {int((y == 1).sum())}) "
              f"CNN balanced accuracy on held-out fields={accuracy:.3f} "
              f"best rim/centre threshold={best_threshold_accuracy(ratios, y):.3f} "
              f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
