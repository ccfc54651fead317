"""Contract tests over every registered classifier, and the built-ins' own options."""

from __future__ import annotations

import pytest
import torch

from epikit.errors import ConfigError, ModelError
from epikit.registry import get_classifier, list_classifiers, rebuild_classifier

pytestmark = pytest.mark.usefixtures("single_torch_thread")

#: Parameters that keep a contract test fast (the default timm arch is a full-size network).
FAST_PARAMS = {"timm": {"arch": "test_efficientnet"}}


def spatial_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``model.cam_layer`` for input ``x``."""
    captured: list[torch.Tensor] = []
    layer = model.get_submodule(model.cam_layer)
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("name", list_classifiers())
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [64, 96])
def test_classifier_contract(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = get_classifier(name, channels, 3, size, **FAST_PARAMS.get(name, {})).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    assert isinstance(model.cam_layer, str)
    features = spatial_output(model, x)
    assert features.dim() == 4 and features.shape[0] == 2
    assert features.shape[-1] > 1 and features.shape[-2] > 1


def test_resnet10_is_the_study_network() -> None:
    model = get_classifier("resnet10", 3, 2, 64)
    names = [name for name, _ in model.named_children()]
    assert names[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    assert not hasattr(model, "layer3")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 9  # 1 stem + 8 in the basic blocks
    assert model.fc.in_features == 128 * 8 * 8  # flattened 128 x S/8 x S/8 map, no pooling
    assert get_classifier("resnet10", 3, 2, 96).fc.in_features == 128 * 12 * 12


def test_resnet10_variants() -> None:
    pooled = get_classifier("resnet10", 2, 2, 64, pooling="avg", stem_pool="avg")
    assert pooled.fc.in_features == 128
    assert isinstance(pooled.maxpool, torch.nn.AvgPool2d)
    assert pooled(torch.randn(2, 2, 80, 80)).shape == (2, 2)  # any size once pooled
    with pytest.raises(ConfigError, match="pooling"):
        get_classifier("resnet10", 3, 2, 64, pooling="max")


def test_resnet18_full_network() -> None:
    model = get_classifier("resnet18", 4, 2, 64)
    assert model.cam_layer == "layer4"
    assert model.conv1.in_channels == 4 and model.fc.out_features == 2


def test_pretrained_state_dict_file_adapts_conv1(tmp_path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    source = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = get_classifier("resnet10", 1, 2, 64, pretrained=str(path))
    expected = source.conv1.weight.sum(dim=1, keepdim=True)  # mean of RGB x 3 / 1
    assert torch.allclose(model.conv1.weight, expected, atol=1e-6)
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    three = get_classifier("resnet18", 3, 5, 64, pretrained=str(path))
    assert torch.equal(three.conv1.weight, source.conv1.weight)
    assert torch.equal(three.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_pretrained_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        get_classifier("resnet10", 3, 2, 64, pretrained="imagenet-please")
    bad = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(ModelError):
        get_classifier("resnet10", 3, 2, 64, pretrained=str(bad))


@pytest.mark.parametrize("name", ["resnet10", "resnet18"])
def test_a_saved_model_is_rebuilt_without_its_initial_weights(tmp_path, name: str) -> None:
    """The factory skips ``pretrained`` when rebuilding: the weights file may be gone by then."""
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    trained = get_classifier(name, 2, 3, 32, pretrained=str(path))
    path.unlink()
    with pytest.raises(ConfigError):
        get_classifier(name, 2, 3, 32, pretrained=str(path))
    rebuilt = rebuild_classifier(name, 2, 3, 32, pretrained=str(path))
    rebuilt.load_state_dict(trained.state_dict())
    crops = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(crops), trained.eval()(crops))


def test_timm_cam_layer_found_or_given() -> None:
    found = get_classifier("timm", 3, 2, 64, arch="test_resnet")
    assert found.cam_layer == "layer4"
    given = get_classifier("timm", 3, 2, 64, arch="test_resnet", cam_layer="layer3")
    assert given.cam_layer == "layer3"
    with pytest.raises(ModelError, match="no module"):
        get_classifier("timm", 3, 2, 64, arch="test_resnet", cam_layer="nope")
    with pytest.raises(ConfigError, match="did you mean"):
        get_classifier("timm", 3, 2, 64, arch="test_resnett")
    with pytest.raises(ModelError, match="cam_layer"):
        get_classifier("timm", 3, 2, 64, arch="test_vit", img_size=64)


def test_cnn_depth_capped_by_crop_size() -> None:
    small = get_classifier("cnn", 1, 2, 8)
    assert spatial_output(small, torch.randn(2, 1, 8, 8)).shape[-1] >= 4
