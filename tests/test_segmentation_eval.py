"""DSB2018-style segmentation scores on hand-made label images whose scores are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from epikit.analysis.segmentation_metrics import (
    IOU_THRESHOLDS,
    ap_key,
    evaluate_folders,
    evaluate_segmentation,
    pairwise_iou,
)
from epikit.errors import ConfigError, InputError
from epikit.io import write_tiff


def box(shape: tuple[int, int], *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """A label image with rectangles ``(label, y0, y1, x0, x1)`` painted in order."""
    labels = np.zeros(shape, dtype=np.int32)
    for label, y0, y1, x0, x1 in boxes:
        labels[y0:y1, x0:x1] = label
    return labels


def test_thresholds_are_the_dsb2018_set():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert [ap_key(t) for t in (0.5, 0.75, 0.95)] == ["ap_50", "ap_75", "ap_95"]


def test_perfect_prediction_scores_one_whatever_the_label_values():
    truth = box((30, 30), (1, 0, 10, 0, 10), (2, 15, 25, 15, 25))
    pred = np.where(truth == 1, 70, np.where(truth == 2, 3, 0))  # other numbers, other order
    result = evaluate_segmentation(pred, truth)
    assert result["mean_ap"] == 1.0 and result["f1"] == 1.0
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 0)
    assert result["mean_matched_iou"] == 1.0


def test_scores_computed_by_hand():
    # Truth: A = 10x10 box, B = 10x10 box. Prediction: A' covers 80 of A's 100 pixels
    # (IoU 0.8), B' is a 5x5 corner of B (IoU 0.25, no match), C' is a false positive.
    truth = box((20, 20), (1, 0, 10, 0, 10), (2, 10, 20, 10, 20))
    pred = box((20, 20), (5, 0, 10, 0, 8), (7, 15, 20, 15, 20), (9, 0, 3, 15, 18))
    result = evaluate_segmentation(pred, truth)
    # IoU 0.8 matches for t = 0.50 ... 0.75 (strictly greater than t): TP 1, FP 2, FN 1.
    for t in IOU_THRESHOLDS:
        assert result[ap_key(t)] == pytest.approx(0.25 if t < 0.8 else 0.0)
    assert result["mean_ap"] == pytest.approx(6 * 0.25 / 10)
    assert (result["n_true"], result["n_pred"]) == (2, 3)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 2, 1)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(2 * 1 / (2 + 3))
    assert result["mean_matched_iou"] == pytest.approx(0.8)


def test_iou_between_thresholds_and_a_split_nucleus():
    # A prediction of 62 of a 100-pixel nucleus (IoU 0.62) matches at 0.50, 0.55, 0.60 only.
    truth = box((10, 10), (1, 0, 10, 0, 10))
    pred = box((10, 10), (1, 0, 10, 0, 6), (1, 0, 2, 6, 7))
    result = evaluate_segmentation(pred, truth)
    assert [result[ap_key(t)] for t in IOU_THRESHOLDS] == [1, 1, 1] + [0] * 7
    assert result["mean_ap"] == pytest.approx(0.3)
    # Split into two halves: each has IoU exactly 0.5, which is not > 0.5: no match.
    halves = box((10, 10), (1, 0, 10, 0, 5), (2, 0, 10, 5, 10))
    split = evaluate_segmentation(halves, truth)
    assert (split["tp"], split["fp"], split["fn"], split["ap_50"]) == (0, 2, 1, 0.0)


def test_empty_images():
    truth = box((10, 10), (1, 0, 5, 0, 5), (2, 5, 10, 5, 10))
    nothing = np.zeros((10, 10), dtype=np.int32)
    missed = evaluate_segmentation(nothing, truth)
    assert (missed["tp"], missed["fp"], missed["fn"], missed["mean_ap"]) == (0, 0, 2, 0.0)
    assert missed["recall"] == 0.0 and missed["f1"] == 0.0
    invented = evaluate_segmentation(truth, nothing)
    assert (invented["fp"], invented["mean_ap"], invented["precision"]) == (2, 0.0, 0.0)
    both = evaluate_segmentation(nothing, nothing)
    assert both["mean_ap"] == 1.0 and both["f1"] == 1.0


def test_sparse_ious_equal_a_brute_force_count():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, size=(24, 24))
    pred = rng.integers(0, 5, size=(24, 24)) * 3
    ious, n_true, n_pred = pairwise_iou(pred, truth)
    expected = []
    for t in range(1, 6):
        for p in (3, 6, 9, 12):
            a, b = truth == t, pred == p
            if (a & b).any():
                expected.append((a & b).sum() / (a | b).sum())
    assert (n_true, n_pred) == (5, 4)
    np.testing.assert_allclose(np.sort(ious), np.sort(expected))


def test_bad_inputs():
    with pytest.raises(InputError, match="differ in shape"):
        evaluate_segmentation(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(InputError, match="integers"):
        evaluate_segmentation(np.zeros((4, 4), float), np.zeros((4, 4), int))
    with pytest.raises(ConfigError, match="one-to-one"):
        evaluate_segmentation(np.zeros((4, 4), int), np.zeros((4, 4), int), thresholds=[0.3])


@pytest.fixture
def folders(tmp_path):
    """Ground truth in a data-set layout (masks/<condition>/), predictions in a plain folder."""
    truth = {
        "ctrl/a": box((20, 20), (1, 0, 10, 0, 10), (2, 10, 20, 10, 20)),
        "vpa/b": box((20, 20), (4, 2, 8, 2, 8)),
    }
    pred = {
        "ctrl/a": box((20, 20), (1, 0, 10, 0, 10)),  # one of two found: AP 0.5
        "vpa/b": box((20, 20), (4, 2, 8, 2, 8), (5, 12, 16, 12, 16)),  # one FP: AP 0.5
        "vpa/extra": box((20, 20), (1, 0, 4, 0, 4)),  # no ground truth: ignored
    }
    for key, labels in truth.items():
        write_tiff(tmp_path / "gt" / "masks" / f"{key}.tif", labels)
    for key, labels in pred.items():
        write_tiff(tmp_path / "pred" / f"{key}.tif", labels)
    return tmp_path / "pred", tmp_path / "gt"


def test_evaluate_folders_pairs_files_and_aggregates(folders):
    pred, gt = folders
    table, overall = evaluate_folders(pred, gt)
    assert table["image"].tolist() == ["ctrl/a", "vpa/b"]
    assert table["ap_50"].tolist() == [0.5, 0.5]
    assert overall["n_images"] == 2
    assert overall["mean_ap"] == pytest.approx(table["mean_ap"].mean())
    assert (overall["tp"], overall["fp"], overall["fn"]) == (2, 1, 1)
    assert overall["f1"] == pytest.approx(4 / 6)


def test_evaluate_folders_requires_a_prediction_per_truth(folders, tmp_path):
    pred, gt = folders
    (pred / "ctrl" / "a.tif").unlink()
    with pytest.raises(InputError, match="no prediction"):
        evaluate_folders(pred, gt)
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(tmp_path / "nowhere", gt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label images"):
        evaluate_folders(tmp_path / "empty", gt)


def test_eval_segmentation_command_writes_json(folders, tmp_path):
    from epikit.cli import app

    pred, gt = folders
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["eval-segmentation", str(pred), str(gt), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "AP@0.5 0.500" in result.output
    scores = json.loads(out.read_text())
    assert scores["overall"]["tp"] == 2
    assert [row["image"] for row in scores["per_image"]] == ["ctrl/a", "vpa/b"]
    missing = CliRunner().invoke(app, ["eval-segmentation", str(tmp_path / "none"), str(gt)])
    assert missing.exit_code == 2 and "error:" in missing.output


def dsb_folder(root, samples: dict[str, np.ndarray]) -> None:
    """Write label images as DSB2018 samples: <id>/images/<id>.png + one PNG per nucleus."""
    from PIL import Image

    for name, labels in samples.items():
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        image = np.where(labels > 0, 180, 12).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3 + [np.full_like(image, 255)], axis=-1)).save(
            root / name / "images" / f"{name}.png")
        for label in np.unique(labels[labels > 0]):
            Image.fromarray(((labels == label) * 255).astype(np.uint8)).save(root / name / "masks" / f"m{label}.png")


def test_dsb2018_folders_are_ground_truth_as_they_are(tmp_path):
    truth = {"s1": box((40, 40), (1, 2, 14, 2, 14), (2, 20, 34, 20, 34)), "s2": box((40, 40), (1, 5, 20, 5, 20))}
    dsb_folder(tmp_path / "dsb", truth)
    write_tiff(tmp_path / "pred" / "s1.tif", truth["s1"])
    write_tiff(tmp_path / "pred" / "s2.tif", box((40, 40), (1, 25, 35, 25, 35)))  # misses, invents one
    table, overall = evaluate_folders(tmp_path / "pred", tmp_path / "dsb")
    assert table["image"].tolist() == ["s1", "s2"] and table["ap_50"].tolist() == [1.0, 0.0]
    assert (overall["tp"], overall["fp"], overall["fn"]) == (2, 1, 1)


def test_eval_segmentation_segments_a_dsb2018_folder_first(tmp_path):
    from epikit.cli import app

    truth = {"s1": box((64, 64), (1, 4, 24, 4, 24), (2, 36, 58, 30, 52)), "s2": box((64, 64), (3, 10, 40, 20, 50))}
    dsb_folder(tmp_path / "dsb", truth)
    pred = tmp_path / "pred"
    args = ["eval-segmentation", str(pred), str(tmp_path / "dsb"), "--segmenter", "watershed",
            "-p", "diameter=20", "--table", str(tmp_path / "table.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in pred.iterdir()) == ["s1.tif", "s2.tif"]
    assert "AP@0.5 1.000" in result.output and "s/image" in result.output
    not_dsb = CliRunner().invoke(app, [*args[:2], str(tmp_path / "pred"), *args[3:]])
    assert not_dsb.exit_code != 0 and "not a DSB2018 folder" in not_dsb.output
