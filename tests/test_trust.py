"""Trust checks: channel attribution, faithfulness, randomisation sanity, mask-edge control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from epikit.biomarker_stage import biomarker_run
from epikit.analysis.trust import (
    attach_trust,
    channel_attribution,
    deletion_insertion,
    randomised_copy,
    rank_correlation,
    summarise_sanity,
)
from epikit.errors import DataError
from epikit.explainers.gradcam import GradCAM
from epikit.explanation import explain_run
from tiny_runs import build_tiny_run


class LeftRightOfChannel1(nn.Module):
    """Class 1's logit: channel 1's mean on the left half minus the right half (x 20)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.cam_layer = "features"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        half = x.shape[-1] // 2
        score = 20 * (x[:, 1, :, :half].mean(dim=(1, 2)) - x[:, 1, :, half:].mean(dim=(1, 2)))
        return torch.stack([-score, score], dim=1) / 2


def left_bright_crops(n: int = 4, size: int = 16):
    torch.manual_seed(0)
    crops = torch.rand(n, 3, size, size) * 0.1
    crops[:, 1, 3:13, 2:8] += 1.0  # channel 1 bright on the left
    crops[:, 0] += torch.rand(n, size, size)  # channel 0: irrelevant noise
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 2:14, 2:14] = True
    return crops * masks[:, None], masks


def test_channel_attribution_finds_the_channel_the_decision_rests_on():
    crops, masks = left_bright_crops()
    drops = channel_attribution(LeftRightOfChannel1(), crops, masks, torch.ones(4, dtype=torch.long))
    assert drops.shape == (4, 3)
    assert (drops[:, 1] > 0.3).all()
    assert np.abs(drops[:, [0, 2]]).max() < 1e-6
    with pytest.raises(DataError, match="trust checks need"):
        channel_attribution(LeftRightOfChannel1(), crops, masks[:2], torch.ones(4, dtype=torch.long))


def test_deletion_insertion_rank_a_faithful_map_above_random_above_a_reversed_one():
    crops, masks = left_bright_crops()
    targets = torch.ones(4, dtype=torch.long)
    faithful = torch.zeros(4, 16, 16)
    faithful[:, 3:13, 2:8] = 1.0  # the evidence
    faithful += torch.linspace(0, 0.01, 16)  # break ties deterministically
    good = deletion_insertion(LeftRightOfChannel1(), crops, masks, faithful, targets, steps=8)
    bad = deletion_insertion(LeftRightOfChannel1(), crops, masks, 1 - faithful, targets, steps=8)
    assert good["better_than_random"] and not bad["better_than_random"]
    assert good["deletion_auc"] < good["random_deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > good["random_insertion_auc"] > bad["insertion_auc"]
    assert len(good["deletion_curve"]) == 9 and good["deletion_curve"][0] == pytest.approx(good["insertion_curve"][-1])
    assert good["random_deletion_auc"] == pytest.approx(bad["random_deletion_auc"])  # same seeded order


def test_randomised_copy_and_rank_correlation():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    copy = randomised_copy(model, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(copy[0].weight, model[0].weight)
    assert float(copy[1].running_mean.abs().max()) == 0.0
    rng = np.random.default_rng(0)
    maps = rng.random((5, 12, 12))
    masks = np.ones((5, 12, 12), bool)
    np.testing.assert_allclose(rank_correlation(maps, maps, masks), 1.0)
    assert np.abs(rank_correlation(maps, rng.random((5, 12, 12)), masks)).max() < 0.3
    assert np.isnan(rank_correlation(np.zeros((1, 4, 4)), maps[:1, :4, :4], masks[:1, :4, :4]))[0]
    # a randomised model whose map is all zero keeps none of the real map's order
    assert rank_correlation(maps[:1], np.zeros((1, 12, 12)), masks[:1])[0] == 0.0
    assert summarise_sanity(np.array([0.1, 0.2, np.nan]))["differs"]
    assert summarise_sanity(np.array([0.9, 0.95]))["differs"] is False
    assert summarise_sanity(np.array([np.nan]))["differs"] is None  # nothing compared: inconclusive


def test_attach_trust_flags_an_edge_artefact_only_when_the_control_agrees():
    finding = {"source": "map", "explainer": "gradcam", "channel": "all", "region": "shell_1",
               "condition": "vpa", "effect": 0.05, "text": "..."}
    checks = {
        "view": "all",
        "alpha": 0.05,
        "channel_attribution": {"vpa": {"Hoechst": 0.01, "H3K27ac": 0.2}},
        "faithfulness": {"gradcam": {"deletion_auc": 0.3, "random_deletion_auc": 0.4, "insertion_auc": 0.7,
                                     "random_insertion_auc": 0.6, "better_than_random": True}},
        "sanity": {"rank_correlation": 0.1, "differs": True},
        "mask_control": {"rows": [{"region": "shell_1", "condition": "vpa", "effect": 0.03,
                                   "p_value": 0.01, "q_value": 0.02}]},
    }
    flagged = attach_trust([finding], checks)[0]["trust"]
    assert flagged["possible_edge_artefact"] and flagged["flags"] == ["possible edge artefact"]
    assert flagged["top_channel"] == "H3K27ac"
    checks["mask_control"]["rows"][0]["effect"] = -0.03
    clean = attach_trust([finding], checks)[0]["trust"]
    assert not clean["possible_edge_artefact"] and clean["flags"] == []
    image = attach_trust([{**finding, "source": "image"}], checks)[0]["trust"]
    assert "mask_control" not in image and image["top_channel"] == "H3K27ac"
    checks["mask_control"]["rows"][0]["effect"] = 0.03
    checks["sanity"]["differs"] = None
    other_view = attach_trust([{**finding, "channel": "Hoechst"}], checks)[0]["trust"]
    assert other_view["flags"] == [] and "'all' view" in other_view["map_checks"]  # not this view's checks
    inconclusive = attach_trust([finding], checks)[0]["trust"]
    assert inconclusive["flags"] == ["possible edge artefact"]  # no sanity flag without a comparison


def test_trust_checks_on_a_run_folder(tmp_path):
    run = build_tiny_run(tmp_path, "periphery")
    explain_run(run, "gradcam", cells="all", progress=False)
    biomarker_run(run, trust=True, trust_cells=6, control_epochs=1, explainers=["gradcampp"])
    metrics = json.loads((run / "metrics.json").read_text())
    attribution = metrics["channel_attribution"]
    assert set(attribution) == {"ctrl", "vpa"}
    assert all(set(v) == {"Hoechst", "CTCF", "H3K27ac"} for v in attribution.values())
    trust = metrics["trust"]
    assert set(trust["faithfulness"]) == {"gradcam", "gradcampp"}
    assert trust["faithfulness"]["gradcam"]["n_cells"] == 12
    assert -1 <= trust["sanity"]["rank_correlation"] <= 1 and trust["sanity"]["explainer"] == "gradcam"
    control = trust["mask_control"]
    assert {r["region"] for r in control["rows"]} >= {"shell_1", "rim_vs_centre"}
    assert 0 <= control["accuracy"] <= 1
    for finding in metrics["findings"]:
        assert "flags" in finding["trust"] and "top_channel" in finding["trust"]
        if finding["source"] == "map":
            assert {"mask_control", "faithfulness", "sanity"} <= set(finding["trust"])
    # Another shell definition reuses the shell-independent measurements kept in the scratch
    # (not recomputed: the kept file is untouched) and retests only the control's shell shares.
    kept = list((run / ".epikit" / "scratch" / "biomarkers").glob("*/trust.json"))
    assert len(kept) == 1
    written = kept[0].stat().st_mtime_ns
    biomarker_run(run, trust=True, trust_cells=6, control_epochs=1, explainers=["gradcampp"], shell_method="distance")
    again = json.loads((run / "metrics.json").read_text())["trust"]
    assert kept[0].stat().st_mtime_ns == written
    for key in ("faithfulness", "sanity", "cells"):
        assert again[key] == trust[key]
    assert again["mask_control"]["accuracy"] == control["accuracy"]
    assert again["mask_control"]["rows"] != control["rows"]  # distance shells: other shares
    # Other trust settings are other measurements: the stale ones are removed.
    biomarker_run(run, trust=True, trust_cells=5, control_epochs=1, explainers=["gradcampp"])
    now = [p.parent.name for p in (run / ".epikit" / "scratch" / "biomarkers").glob("*/trust.json")]
    assert len(now) == 1 and now[0] != kept[0].parent.name


def test_sanity_maps_of_a_random_network_differ_from_a_trained_one():
    crops, masks = left_bright_crops(6)
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(4, 2))
    model.cam_layer = "features"
    with torch.no_grad():  # a "trained" detector of channel 1
        model.features[0].weight.zero_()
        model.features[0].weight[:, 1, 1, 1] = 1.0
        model.features[0].bias.zero_()
        model.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
    targets = torch.ones(6, dtype=torch.long)
    maps = GradCAM().explain(model, crops, targets).numpy()
    random_maps = GradCAM().explain(randomised_copy(model, 3), crops, targets).numpy()
    rho = rank_correlation(maps, random_maps, masks.numpy())
    assert summarise_sanity(rho)["differs"]  # seed 3: rho about -0.07
