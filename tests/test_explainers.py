"""Tests of the CAM explainers (scorecam, gradcam, gradcampp) on small local models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import epikit
from epikit.errors import ConfigError, DataError, ModelError
from epikit.explainers.cam_layers import capture_output, fold_batchnorm, inference_copy, normalise_maps
from epikit.explainers.gradcam import GradCAM, GradCAMPlusPlus
from epikit.explainers.scorecam import ScoreCAM


class StudyResNet10(nn.Module):
    """torchvision ResNet-18 cut after layer2, flattened into one Linear layer (the study's)."""

    def __init__(self, size: int, in_channels: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        base = torchvision.models.resnet18(num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2 = base.layer1, base.layer2
        self.fc = nn.Linear(128 * (size // 8) ** 2, num_classes)
        self.cam_layer = "layer2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layer2(self.layer1(x)).flatten(1))


class SmallResNet(nn.Module):
    """The study's layout at toy width: stem, one basic block, one strided block (cam layer)."""

    def __init__(self, size: int, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        block = torchvision.models.resnet.BasicBlock
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        self.layer1 = block(width, width)
        shortcut = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer2 = block(width, 2 * width, stride=2, downsample=shortcut)
        self.fc = nn.Linear(2 * width * (size // 4) ** 2, 2)
        self.cam_layer = "layer2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.layer2(self.layer1(x)).flatten(1))


def with_random_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial batch-norm statistics (so folding matters)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def study_model(size: int = 32, seed: int = 0) -> nn.Module:
    """The study's ResNet10 with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    return with_random_bn_statistics(StudyResNet10(size), seed)


class HalfSplit(nn.Module):
    """Two channels: pooled input channel 0 kept on the left half (ch 0) or right half (ch 1)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(4)
        left = torch.zeros(size // 4, size // 4)
        left[:, : size // 8] = 1
        self.register_buffer("halves", torch.stack([left, 1 - left]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(x[:, :1])) * self.halves


class RegionModel(nn.Module):
    """Class 1's logit is the signal in the left half, class 0's the signal in the right half."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.features = HalfSplit(size)
        self.cam_layer = "features"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = self.features(x).sum(dim=(2, 3))  # (N, 2): left, right
        return 0.5 * torch.stack([sums[:, 1], sums[:, 0]], dim=1)


def two_blob_crops(n: int, size: int = 32) -> torch.Tensor:
    """Crops with one bright blob in the left half and one in the right half."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    crops = torch.zeros(n, 2, size, size)
    for i in range(n):
        for cx in (size * 0.25, size * 0.75):
            cy = size * (0.3 + 0.4 * i / max(n - 1, 1))
            crops[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    crops[:, 1] = torch.rand(n, size, size) * 0.1
    return crops * 10


def naive_scorecam(model: nn.Module, layer: nn.Module, crops, targets, weighting="score", score="probability",
                   align_corners=False):
    """Score-CAM by its definition: one forward per map and cell, no shortcuts.

    ``align_corners`` applies to the masks; the map itself is upsampled half-pixel aligned.
    """
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    maps = []
    with torch.no_grad():
        for x, target in zip(crops, targets):
            model(x[None])
            activations = captured["a"][0]
            size = x.shape[-1]
            ups, scores = [], []
            for a in activations:
                up = F.interpolate(a[None, None], size=(size, size), mode="bilinear",
                                   align_corners=False)[0, 0]
                if up.max() == up.min():
                    continue
                source = F.interpolate(a[None, None], size=(size, size), mode="bilinear",
                                       align_corners=align_corners)[0, 0]
                mask = (source - source.min()) / (source.max() - source.min())
                output = model(x[None] * mask)
                if score == "probability":
                    output = torch.softmax(output, dim=1)
                scores.append(output[0, target])
                ups.append(up)
            weights = torch.stack(scores)
            if weighting == "softmax-over-channels":
                weights = torch.softmax(weights, dim=0)
            cam = torch.relu(sum(w * u for w, u in zip(weights, ups)))
            span = cam.max() - cam.min()
            maps.append((cam - cam.min()) / span if span > 0 else torch.zeros_like(cam))
    handle.remove()
    return torch.stack(maps)


@pytest.fixture(scope="module")
def model_and_crops():
    torch.manual_seed(1)
    return with_random_bn_statistics(SmallResNet(24)), torch.rand(3, 3, 24, 24)


@pytest.mark.parametrize("weighting, score, align_corners", [("score", "probability", False),
                                                             ("softmax-over-channels", "probability", False),
                                                             ("softmax-over-channels", "logit", True)])
def test_scorecam_equals_naive_loop(model_and_crops, weighting, score, align_corners):
    model, crops = model_and_crops
    targets = torch.tensor([0, 1, 1])
    explainer = ScoreCAM(weighting=weighting, score=score, align_corners=align_corners, batch_size=50, cell_batch=2)
    fast = explainer.explain(model, crops, targets)
    slow = naive_scorecam(model, model.layer2, crops, targets, weighting, score, align_corners)
    assert fast.shape == (3, 24, 24)
    assert float((fast - slow).abs().max()) < 1e-5
    assert torch.equal(fast.amax(dim=(1, 2)), torch.ones(3))
    assert explainer.info["skipped_constant_maps"] > 0  # dead channels exercise the skip
    assert explainer.info["bn_folded"] == 6  # stem + 2 blocks x 2 + 1 shortcut
    assert explainer.info["approximate"] is False


def test_scorecam_leaves_model_untouched_and_predicts_by_default(model_and_crops):
    model, crops = model_and_crops
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predicted = model(crops).argmax(dim=1)
    default = ScoreCAM().explain(model, crops)
    given = ScoreCAM().explain(model, crops, predicted)
    assert torch.equal(default, given)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_scorecam_top_k_is_flagged_and_all_channels_is_exact(model_and_crops):
    model, crops = model_and_crops
    exact = ScoreCAM().explain(model, crops)
    full = ScoreCAM(top_k=16)
    assert torch.allclose(full.explain(model, crops), exact, atol=1e-6)
    approx = ScoreCAM(top_k=4)
    maps = approx.explain(model, crops)
    assert approx.info["approximate"] is True
    assert approx.info["scored_maps"] <= 4 * len(crops)
    assert maps.shape == exact.shape and float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_scorecam_bfloat16_is_flagged_approximate_and_close(model_and_crops):
    model, crops = model_and_crops
    exact = ScoreCAM().explain(model, crops)
    fast = ScoreCAM(precision="bfloat16")
    maps = fast.explain(model, crops)
    assert fast.info["approximate"] is True and fast.info["precision"] == "bfloat16"
    correlation = torch.corrcoef(torch.stack([maps.flatten(), exact.flatten()]))[0, 1]
    assert float(correlation) > 0.99


def test_batch_norm_folding_is_exact_and_on_a_copy():
    model, crops = study_model(32), torch.rand(2, 3, 32, 32)
    folded, pairs = fold_batchnorm(model, crops[:1])
    assert pairs == 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(folded(crops), model(crops), atol=1e-4)
    net = inference_copy(model, "layer2", crops[:1])
    assert net.info["bn_folded"] == 10 and "bn_fold_rejected" not in net.info


def test_batch_norm_fold_rejected_when_conv_output_is_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.cam_layer = "bn"

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean(dim=(2, 3))  # conv output also used past the bn

    model = Shared().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.7)
        model.bn.running_var.fill_(3.0)
    net = inference_copy(model, "bn", torch.rand(2, 1, 8, 8))
    assert net.info.get("bn_fold_rejected") is True and net.info["bn_folded"] == 0


@pytest.mark.parametrize("explainer", [ScoreCAM(), GradCAM(), GradCAMPlusPlus()],
                         ids=["scorecam", "gradcam", "gradcampp"])
def test_explainers_find_the_region_the_logit_depends_on(explainer):
    model = RegionModel(32).eval()
    crops = two_blob_crops(3)
    for target, side in ((1, slice(0, 16)), (0, slice(16, 32))):
        maps = explainer.explain(model, crops, torch.full((3,), target))
        assert maps.shape == (3, 32, 32)
        assert float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0)
        inside = maps[:, :, side].sum(dim=(1, 2))
        assert bool((inside / maps.sum(dim=(1, 2)) > 0.85).all())


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_gradient_cams_batched_equals_one_by_one(model_and_crops, cls):
    model, crops = model_and_crops
    model.train()  # explain() must use eval mode and restore the caller's mode
    batched = cls(batch_size=3).explain(model, crops)
    single = torch.cat([cls(batch_size=1).explain(model, crops[i : i + 1]) for i in range(3)])
    assert model.training
    model.eval()
    assert torch.allclose(batched, single, atol=1e-5)
    assert batched.shape == (3, 24, 24) and float(batched.min()) >= 0 and float(batched.max()) <= 1


def test_gradcam_works_inside_inference_mode(model_and_crops):
    model, crops = model_and_crops
    expected = GradCAM().explain(model, crops)
    with torch.inference_mode():
        assert torch.allclose(GradCAM().explain(model, crops), expected)


@pytest.mark.parametrize("explainer", [GradCAM, GradCAMPlusPlus, ScoreCAM])
def test_the_callers_model_keeps_its_modes_and_gets_no_hooks(model_and_crops, explainer):
    model, crops = model_and_crops
    model.eval()
    first = next(m for m in model.modules() if m is not model)
    first.train()  # a mix of train and eval submodules must survive as it is
    modes = [m.training for m in model.modules()]
    explainer().explain(model, crops)
    assert [m.training for m in model.modules()] == modes
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()


def test_dead_layer_gives_all_zero_maps():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, 2)
            self.cam_layer = "features"
            with torch.no_grad():
                self.features[0].weight.zero_()
                self.features[0].bias.fill_(-1.0)  # ReLU kills everything

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))

    crops = torch.rand(2, 1, 16, 16)
    explainer = ScoreCAM()
    maps = explainer.explain(Dead().eval(), crops)
    assert torch.equal(maps, torch.zeros(2, 16, 16))
    assert explainer.info["skipped_constant_maps"] == 8 and explainer.info["all_zero_maps"] == 2
    assert torch.equal(GradCAM().explain(Dead().eval(), crops), torch.zeros(2, 16, 16))


def test_normalise_maps_keeps_flat_maps_zero():
    maps = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).reshape(4, 4)])
    out = normalise_maps(maps)
    assert torch.equal(out[0], torch.zeros(4, 4))
    assert float(out[1].min()) == 0 and float(out[1].max()) == 1


@pytest.mark.parametrize("name", ["scorecam", "gradcam", "gradcampp"])
def test_registered_explainers_and_bad_inputs(name, model_and_crops):
    model, crops = model_and_crops
    explainer = epikit.get_explainer(name)
    with pytest.raises(ModelError, match="available layers: conv1, bn1, relu, maxpool, layer1"):
        epikit.get_explainer(name, layer="layer9").explain(model, crops)
    bare = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ModelError, match="no 'cam_layer' attribute"):
        explainer.explain(bare, crops)
    with pytest.raises(DataError, match="empty"):
        explainer.explain(model, crops[:0])
    with pytest.raises(DataError, match="targets"):
        explainer.explain(model, crops, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="out of range"):
        explainer.explain(model, crops, torch.tensor([0, 1, 5]))
    with pytest.raises(DataError, match="shaped"):
        explainer.explain(model, crops[0])
    with pytest.raises(ModelError, match="must output"):
        epikit.get_explainer(name, layer="fc").explain(model, crops)


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="weighting"):
        epikit.get_explainer("scorecam", weighting="max")
    with pytest.raises(ConfigError, match="score"):
        epikit.get_explainer("scorecam", score="softmax")
    with pytest.raises(ConfigError, match="precision"):
        epikit.get_explainer("scorecam", precision="float16")
    with pytest.raises(ConfigError, match="batch_size"):
        epikit.get_explainer("scorecam", batch_size=0)
    with pytest.raises(ConfigError, match="top_k"):
        epikit.get_explainer("scorecam", top_k=-3)
    with pytest.raises(ConfigError, match="batch_size"):
        epikit.get_explainer("gradcam", batch_size="8")
    with pytest.raises(ConfigError, match="accepted parameters"):
        epikit.get_explainer("gradcam", weighting="score")


@pytest.mark.parametrize("for_grad", [False, True])
def test_captured_output_survives_an_in_place_op_after_the_layer(for_grad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten()).eval()
    x = torch.randn(2, 1, 8, 8)
    with capture_output(model[1], detach_for_grad=for_grad) as holder:
        out = model(x)
    expected = model[1](model[0](x)).detach()
    assert float(expected.min()) < 0  # the ReLU after the layer would zero these in place
    torch.testing.assert_close(holder.output.detach(), expected)
    if for_grad:  # gradients still reach the recorded activations
        (grad,) = torch.autograd.grad(out.sum(), holder.output)
        torch.testing.assert_close(grad, (expected > 0).float())
