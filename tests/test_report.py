"""Tests of the HTML report: links, escaping, missing artefacts, atomic writes, a real browser."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from epikit.errors import InputError
from epikit.io import ImageRecord, mask_path, write_json
from epikit.report import build_report
from epikit.report.figures import safe_name
from epikit.report.html import Markup, element, escape
from epikit.report.summaries import roc_points

from browser import chromium, rendered_dom

HOSTILE = "<script>alert(1)</script>"
HOSTILE_CHANNEL = "<img src=x onerror=alert(2)>"
HOSTILE_CONDITION = "<img src=x onerror=alert(3)>"  # a valid folder name (no slash)
CHANNELS = ("Hoechst", HOSTILE_CHANNEL, "H3K27ac")
CROP = 32


class _Page(HTMLParser):
    """Collects img sources, script tags and visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "script":
            self.scripts += 1
        if "id" in attrs:
            self.ids.add(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _write_maps(run: Path, explained: pd.DataFrame, crops: np.ndarray, masks: np.ndarray,
                conditions: tuple[str, ...]) -> None:
    """maps.zarr through the explain stage's own writer: rim maps in the treated condition,
    centre maps in the reference, for two views, with aligned averages per condition."""
    from epikit.nuclei.averaging import aligned_average
    from epikit.runfolder.crops import crops_fingerprint
    from epikit.runfolder.maps import ViewMaps, write_maps

    yy, xx = np.mgrid[:CROP, :CROP]
    radius = np.hypot(yy - 16, xx - 16) / 11
    maps = np.asarray([np.clip(1 - radius if c == conditions[0] else radius, 0, 1) * _disc(CROP, (16, 16), 11)
                       for c in explained["condition"]], dtype=np.float32)
    rows = explained["crop_index"].to_numpy(np.int64)
    results, averages = [], {}
    for view, channels in (("all", list(range(len(CHANNELS)))), (HOSTILE_CHANNEL, [1])):
        attrs = {"view": view, "views": ["all", HOSTILE_CHANNEL], "explainer": "scorecam", "layer": "layer2",
                 "target": "predicted", "classes": list(conditions),
                 "channel_names": [CHANNELS[c] for c in channels], "cell_ids": explained["cell_id"].tolist(),
                 "crops_fingerprint": crops_fingerprint(run)}
        results.append(ViewMaps(view, maps, rows, rows, explained["fold"].to_numpy(np.int64),
                                np.zeros(len(rows), np.int64), attrs))
        averages[view] = {}
        for condition in conditions:
            members = (explained["condition"] == condition).to_numpy()
            stacked = np.concatenate([maps[members][:, None], crops[rows[members]][:, channels]], axis=1)
            mean, coverage = aligned_average(stacked, masks[rows[members]])
            averages[view][condition] = {"map": mean[0], "channels": mean[1:], "coverage": coverage,
                                         "n_cells": int(members.sum())}
    write_maps(run / "maps.zarr", results, averages)


def _biomarkers_and_trust(run: Path, conditions: tuple[str, ...]) -> None:
    """biomarkers.csv, findings and profiles from the real biomarker stage; trust checks from
    hand-made check results passed through the trust module's own summaries (the checks
    themselves retrain models, too slow for this fixture). The mask-edge control reproduces
    the rim difference, so rim map findings carry the edge-artefact flag."""
    from epikit.biomarker_stage import biomarker_run
    from epikit.analysis.trust import attach_trust, summarise_curves, summarise_sanity
    from epikit.io import read_json
    from epikit.runfolder.metrics import update_metrics

    biomarker_run(run, trust=False, target_swap=False)  # its models are hand-made stand-ins
    steps = np.linspace(1, 0, 9)[None]
    curves = {"deletion": steps ** 2 + np.zeros((4, 1)), "insertion": 1 - steps ** 2 + np.zeros((4, 1)),
              "random_deletion": steps + np.zeros((4, 1)), "random_insertion": 1 - steps + np.zeros((4, 1))}
    rows = [{"region": region, "condition": conditions[1], "reference": conditions[0],
             "effect": 0.02 if region == "shell_1" else -0.001, "cliffs_delta": 0.5,
             "p_value": 0.01 if region == "shell_1" else 0.6, "q_value": 0.05, "n_condition": 6,
             "n_reference": 6} for region in ("shell_1", "shell_5", "rim_vs_centre")]
    checks = {"view": "all", "alpha": 0.05,
              "channel_attribution": {c: {ch: 0.1 * (i + 1) for i, ch in enumerate(CHANNELS)} for c in conditions},
              "faithfulness": {"scorecam": summarise_curves(curves)},
              "sanity": {**summarise_sanity(np.array([0.1, 0.2, 0.15])), "explainer": "scorecam"},
              "mask_control": {"accuracy": 0.6, "explainer": "scorecam", "n_cells": 20, "rows": rows}}
    findings = read_json(run / "metrics.json")["findings"]
    update_metrics(run, "findings", attach_trust(findings, checks))
    update_metrics(run, "channel_attribution", checks["channel_attribution"])
    update_metrics(run, "trust", {k: v for k, v in checks.items() if k != "channel_attribution"})


def make_run_folder(root: Path, conditions=("ctrl", HOSTILE_CONDITION), fields: int = 6) -> Path:
    """A small run folder holding every artefact of the contract, written with numpy/pandas/zarr.

    Images, masks and crops carry a rim-enriched third channel in the second condition, so
    the shell profiles and the biomarker table have something real to show.
    """
    rng = np.random.default_rng(0)
    run = root / "run"
    run.mkdir(parents=True)
    rows, crops, crop_masks, inputs, seg_rows = [], [], [], [], []
    for c_index, condition in enumerate(conditions):
        for f in range(fields):
            stem = f'field "{f}" & co' if f == 0 else f"field_{f}"
            folder = root / "input" / f"cond{c_index}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stem}.tif"
            labels = np.zeros((96, 96), np.int32)
            for label, centre in enumerate([(24, 24), (24, 70), (70, 30), (68, 72)], start=1):
                labels[_disc(96, centre, 11 + rng.uniform(0, 4))] = label
            image = rng.normal(100, 5, (3, 96, 96)).astype(np.float32)
            image[:, labels > 0] += 400
            tifffile.imwrite(path, image.astype(np.uint16), photometric="minisblack")
            record = ImageRecord(path, condition, condition, CHANNELS, f"{condition}/{stem}")
            target = mask_path(run / "masks", record)
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target, labels)
            inputs.append({"path": str(path), "condition": condition, "group": record.image_id,
                           "sha256": "0" * 64})
            seg_rows.append({"image_id": record.image_id, "condition": condition, "group": record.group,
                             "path": str(path), "mask": str(target), "n_nuclei": 4})
            for label in range(1, 5):
                mask = _disc(CROP, (16, 16), 11)
                ring = mask & ~_disc(CROP, (16, 16), 8)
                crop = rng.uniform(0.2, 0.6, (3, CROP, CROP)) * mask
                crop[2][ring] += 0.5 * c_index
                shares = np.array([0.22, 0.2, 0.2, 0.19, 0.19]) + np.array([0.06, 0, 0, -0.03, -0.03]) * c_index
                prob = float(np.clip(0.15 + 0.7 * c_index + rng.normal(0, 0.12), 0.01, 0.99))
                rows.append({
                    "cell_id": f"{record.image_id}#{label}", "image_id": record.image_id, "path": str(path),
                    "condition": condition, "group": record.image_id, "label": label,
                    "crop_index": len(crops), "area": float(mask.sum()),
                    **{f"{ch}_shell_{k + 1}_share": shares[k] + rng.normal(0, 0.01)
                       for ch in CHANNELS for k in range(5)},
                    "fold": f % 3, "prob_" + conditions[0]: 1 - prob, "prob_" + conditions[1]: prob,
                })
                crops.append(crop)
                crop_masks.append(mask)
    cells = pd.DataFrame(rows)
    cells["prediction"] = np.where(cells["prob_" + conditions[1]] > 0.5, conditions[1], conditions[0])
    cells["probability"] = cells[["prob_" + c for c in conditions]].max(axis=1)
    cells["correct"] = cells["prediction"] == cells["condition"]
    second = f"{HOSTILE_CHANNEL}:"  # a second trained view, as epikit.training prefixes it
    cells[second + "prediction"] = cells["prediction"]
    for c in conditions:
        cells[f"{second}prob_{c}"] = np.clip(cells[f"prob_{c}"] + rng.normal(0, 0.2, len(cells)), 0, 1)
    cells.to_parquet(run / "cells.parquet", index=False)
    pd.DataFrame(seg_rows).to_csv(run / "segmentation.csv", index=False)

    group = zarr.open_group(str(run / "crops.zarr"), mode="w")
    array = zarr.open_array(store=str(run / "crops.zarr" / "crops"), mode="w",
                            shape=(len(crops), 3, CROP, CROP), chunks=(8, 3, CROP, CROP), dtype="float16")
    array[:] = np.asarray(crops, dtype=np.float16)
    masks = zarr.open_array(store=str(run / "crops.zarr" / "masks"), mode="w",
                            shape=(len(crops), CROP, CROP), chunks=(8, CROP, CROP), dtype="uint8")
    masks[:] = np.asarray(crop_masks, dtype=np.uint8)
    group.attrs.update({"channel_names": list(CHANNELS), "crop_size": CROP, "normalisation": "image",
                        "scale_mode": "fit", "align": "major-axis", "dtype": "float16"})

    _write_maps(run, cells[cells["correct"]], np.asarray(crops, np.float32), np.asarray(crop_masks),
                conditions)

    (run / "model").mkdir()
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e, "lr": 1e-3,
                "val_loss": 1.2 / e, "val_accuracy": 1 - 0.6 / e, "val_balanced_accuracy": None}
               for e in range(1, 7)]
    write_json(run / "model" / "training.json", {"primary_view": "all", "views": {
        view: {"channels": list(CHANNELS), "classes": list(conditions), "classifier": "resnet10",
               "folds": [{"fold": k, "best_epoch": 5, "history": history} for k in range(3)]}
        for view in ("all", HOSTILE_CHANNEL)}})
    scores = {"n": len(cells), "accuracy": 0.9, "balanced_accuracy": 0.9, "roc_auc": 0.95, "f1": 0.9}
    folds = [{"fold": k, "n_test": 8, "best_epoch": 5, **scores} for k in range(3)]
    write_json(run / "metrics.json", {
        "segmentation": {"images": len(inputs), "nuclei": 4 * len(inputs)},
        "extraction": {"n_cells": len(cells), "n_clipped": 2, "n_skipped_border": 1,
                       "empty_images": ["ctrl/field_9"], "cells_per_condition": {HOSTILE: 12, "ctrl": 12}},
        "classification": {**scores, "classes": list(conditions), "confusion_matrix": [[10, 2], [1, 11]],
                           "per_class": {c: {"precision": 0.9, "recall": 0.9, "support": 12} for c in conditions},
                           "image_level": {"n_images": 2 * fields, "majority_vote_accuracy": 1.0},
                           "folds": folds, "mean": scores, "std": {k: 0.01 for k in scores},
                           "classifier": "resnet10", "split": "group", "view": "all",
                           "warnings": [f"condition is confounded with 'plate' ({HOSTILE})"],
                           "views": {"all": {**scores, "channels": list(CHANNELS)},
                                     HOSTILE_CHANNEL: {**scores, "channels": [HOSTILE_CHANNEL]}}},
        "explanation": {"explainer": "scorecam", "layer": "layer2", "n_cells": int(cells["correct"].sum()),
                        "views": {"all": {"n_cells": int(cells["correct"].sum())}}},
    })
    _biomarkers_and_trust(run, conditions)
    write_json(run / "manifest.json", {
        "epikit": "0.1.0", "python": "3.11", "seed": 0, "device": "cpu",
        "plugins": [{"kind": "segmenter", "name": "watershed", "plugin": "epikit", "version": "0.1.0"}],
        "parameters": {"seed": 0, "train": {"split": "group"}, "segment": {"nuclear_channel": 0}},
        "inputs": inputs,
        "skipped_inputs": [{"path": "input/cond0/broken <b>.tif", "reason": "not a TIFF"}],
        "stage_seconds": {"segment": 1.5, "extract": 2.25},
    })
    (run / "config.toml").write_text(f'seed = 0\ninput = "{root / "input"}"\n# {HOSTILE}\n', encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run folder made by the real stages: simulate -> ground-truth masks -> extract -> train
    -> explain -> biomarkers.

    The treated condition's folders are renamed to a hostile name before discovery, so the
    name travels through every stage into the report.
    """
    import warnings

    from epikit.biomarker_stage import biomarker_run
    from epikit.explanation import explain_run
    from epikit.extraction import extract_cells
    from epikit.io import find_images
    from epikit.simulate import simulate_dataset
    from epikit.training.stage import train_run

    root = tmp_path_factory.mktemp("real")
    sim = simulate_dataset(root / "sim", n_fields=3, size=(128, 128), n_nuclei=(5, 7),
                           radius=(10.0, 14.0), seed=0)
    for folder in ("images", "masks"):
        (sim / folder / "vpa").rename(sim / folder / HOSTILE_CONDITION)
    records, _ = find_images(sim / "images")
    run = root / "run"
    shutil.copytree(sim / "masks", run / "masks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_cells(records, run / "masks", run, crop_size=32)
        train_run(run, "cnn", folds=2, epochs=2, batch_size=16, progress=False)
        explain_run(run, "gradcam", cells="all", max_cells=6, progress=False)
        biomarker_run(run, trust=False)  # the trust checks retrain models: covered with full_run
    build_report(run, strict=True)
    return run


def test_report_from_real_stages(real_run):
    page = _parse(real_run / "report.html")
    visible = "".join(page.text)
    for src in page.images:
        assert (real_run / src).is_file(), src
    names = " ".join(page.images)
    for figure in ("overlay", "counts", "crops", "training-curves", "roc", "confusion", "gallery",
                   "average-maps", "shells-image", "shells-map"):
        assert f"figures/{figure}-" in names, figure
    overlays = [src for src in page.images if "/overlay-" in src]
    assert overlays and all(src.startswith("figures/overlay-masks-") for src in overlays)  # no absolute path
    for section in ("Counts per image", "Example crops", "Classification", "Training curves",
                    "ROC curve", "Explanation maps", "Aligned average maps", "Shell profiles",
                    "Biomarker table"):
        assert f"{section} not available" not in visible, section
    assert HOSTILE_CONDITION in visible
    assert HOSTILE_CONDITION not in (real_run / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = make_run_folder(tmp_path_factory.mktemp("report"))
    build_report(run, strict=True)
    return run


def test_every_image_link_exists_and_every_figure_is_linked(full_run):
    page = _parse(full_run / "report.html")
    assert len(page.images) >= 10
    for src in page.images:
        assert not src.startswith(("/", "http", "file:")), src
        assert (full_run / src).is_file(), src
        assert (full_run / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    linked = {Path(src).name for src in page.images}
    assert linked == {p.name for p in (full_run / "figures").iterdir()}
    for name in linked:
        assert re.fullmatch(r"[a-z0-9-]+\.png", name), name
    assert {"overview", "warnings", "inputs", "segmentation", "crops", "classification",
            "explanation", "shells", "biomarkers"} <= page.ids


def test_user_strings_are_escaped(full_run):
    text = (full_run / "report.html").read_text(encoding="utf-8")
    page = _parse(full_run / "report.html")
    assert page.scripts == 0
    assert "<script" not in text.lower()
    assert "<img src=x" not in text
    assert escape(HOSTILE) in text and escape(HOSTILE_CHANNEL) in text
    visible = "".join(page.text)
    assert HOSTILE in visible and HOSTILE_CHANNEL in visible  # shown as text
    assert 'field "0" &amp; co' not in text and "field &quot;0&quot; &amp; co" in text


def test_report_shows_warnings_and_findings(full_run):
    visible = "".join(_parse(full_run / "report.html").text)
    assert "Skipped input file input/cond0/broken <b>.tif: not a TIFF" in visible
    assert "2 nuclei were clipped" in visible
    assert "1 label image(s) hold no nucleus (ctrl/field_9)" in visible
    assert f"condition is confounded with 'plate' ({HOSTILE})" in visible
    findings = json.loads((full_run / "metrics.json").read_text())["findings"]
    assert findings and findings[0]["text"] in visible
    assert "possible edge artefact" in visible
    assert "not available" not in visible


def test_missing_artefacts_give_notes(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    report = build_report(run, strict=True)
    visible = "".join(_parse(report).text)
    for what in ("Inputs and parameters", "Counts per image", "Example crops", "Classification",
                 "Explanation maps", "Shell profiles", "Findings", "Biomarker table"):
        assert f"{what} not available" in visible, what
    assert _parse(report).images == []


def test_partial_run_folder_renders_what_is_there(tmp_path):
    run = make_run_folder(tmp_path, fields=2)
    shutil.rmtree(run / "maps.zarr")
    (run / "biomarkers.csv").unlink()
    (run / "model" / "training.json").unlink()
    page = _parse(build_report(run, strict=True))
    visible = "".join(page.text)
    assert "Explanation maps not available: maps.zarr is missing" in visible
    assert "Biomarker table not available" in visible
    assert "Training curves not available" in visible
    assert any("roc" in src for src in page.images)


def test_broken_artefact_keeps_the_previous_report(tmp_path):
    run = make_run_folder(tmp_path, fields=2)
    report = build_report(run)
    before = report.read_text(encoding="utf-8")
    figures_before = sorted(p.name for p in (run / "figures").iterdir())
    (run / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="metrics.json"):
        build_report(run, strict=True)
    assert report.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in (run / "figures").iterdir()) == figures_before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    with pytest.warns(UserWarning, match="could not be rendered"):
        lenient = build_report(run)
    assert "could not be rendered: InputError" in lenient.read_text(encoding="utf-8")


def test_missing_run_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="run folder not found"):
        build_report(tmp_path / "nope")


def test_cli_report(tmp_path):
    from typer.testing import CliRunner

    from epikit.cli import app

    run = tmp_path / "run"
    run.mkdir()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "error:" in missing.output and "run folder not found" in missing.output


def test_escaping_and_safe_names():
    assert element("td", HOSTILE) == "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"
    assert element("a", "x", href='"><script>') == '<a href="&quot;&gt;&lt;script&gt;">x</a>'
    assert element("b", Markup("<i>kept</i>")) == "<b><i>kept</i></b>"
    names = {safe_name("overlay", p) for p in ("a/b", "a_b", "a b", HOSTILE, "../../etc/passwd")}
    assert len(names) == 5
    assert all(re.fullmatch(r"[a-z0-9-]+\.png", n) for n in names)


def test_figure_text_is_never_mathtext(tmp_path):
    """A ``$`` in a condition name is drawn as text; as mathtext this one would not parse."""
    from epikit.report.figures import FigureWriter, counts_per_image

    writer = FigureWriter(tmp_path)
    src = writer.save(counts_per_image({r"$\frac{$ 5": [3, 4], "ctrl": [5]}), "counts")
    assert (tmp_path / Path(src).name).read_bytes()[:4] == b"\x89PNG"


def test_roc_points_match_the_mann_whitney_auc():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    positive = rng.random(200) < 0.4
    score = np.round(rng.normal(positive * 0.8, 1.0), 1)  # rounded: many ties
    fpr, tpr, auc = roc_points(positive, score)
    u = mannwhitneyu(score[positive], score[~positive]).statistic
    assert auc == pytest.approx(u / (positive.sum() * (~positive).sum()))
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    with pytest.raises(ValueError):
        roc_points(np.ones(4, bool), np.arange(4.0))


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (CI: apt-get install -y chromium)")
@pytest.mark.parametrize("run_fixture", ["full_run", "real_run"])
def test_report_in_headless_chromium(run_fixture, request, tmp_path):
    """Every image loads in a real browser and nothing from user data runs as script (see tests/browser.py)."""
    run = request.getfixturevalue(run_fixture)
    dom = rendered_dom(run / "report.html", tmp_path / "profile")
    assert len(re.findall(r'<img[^>]*data-width="', dom)) == len(_parse(run / "report.html").images)
    hostile = HOSTILE if run_fixture == "full_run" else HOSTILE_CONDITION
    assert escape(hostile) in dom
