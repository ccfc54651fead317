"""Any timm architecture as an epikit classifier (``-p arch=efficientnet_b0``).

The model is created with ``in_chans`` set to the number of crop channels and a fresh
``num_classes`` head. Its CAM layer is the last module producing a 4-D (N, C, H, W) map in
``forward_features`` (found by running hooks on a dummy crop), unless ``cam_layer=`` names one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epikit.errors import ConfigError, ModelError


def find_cam_layer(model: nn.Module, in_channels: int, crop_size: int) -> str:
    """Name of the last sub-module whose output is a 4-D spatial map for a dummy crop.

    Probes timm's ``model.forward_features`` (the network before global pooling); its output
    must be a 4-D map, else :class:`ModelError` asks for a name.
    """
    outputs: list[tuple[str, bool]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.append(
                (name, isinstance(out, torch.Tensor) and out.dim() == 4)
            )
        )
        for name, module in model.named_modules()
        if name
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            final = model.forward_features(torch.zeros(1, in_channels, crop_size, crop_size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    spatial = [name for name, is_map in outputs if is_map]
    if not spatial or not (isinstance(final, torch.Tensor) and final.dim() == 4):
        raise ModelError(
            f"{type(model).__name__} has no spatial feature map to explain (a transformer?); "
            f"pass -p cam_layer=NAME (a module name from model.named_modules())"
        )
    return spatial[-1]


def _pretrained_overlay(pretrained: Any) -> dict[str, Any]:
    """``create_model`` arguments for ``pretrained``: False, True (timm's hub) or a file."""
    if pretrained in (None, False, "", "none"):
        return {"pretrained": False}
    if pretrained is True:
        return {"pretrained": True}
    path = Path(str(pretrained)).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained={pretrained!r}: no such weights file (or pass true/false)")
    from epikit.classifiers.resnet import load_state_dict_file

    return {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": load_state_dict_file(path)}}


def timm_classifier(
    in_channels: int,
    num_classes: int,
    crop_size: int,
    arch: str = "efficientnet_b0",
    pretrained: Any = False,
    cam_layer: str | None = None,
    initial_weights: bool = True,
    **timm_params: Any,
) -> nn.Module:
    """A timm model ``arch`` with ``in_chans=in_channels`` and ``num_classes`` outputs.

    ``pretrained``: False (random init, the default; works offline), True (timm downloads
    the weights) or a path to a state dict of ``arch``; not loaded with
    ``initial_weights=False`` (the host rebuilding a saved model). ``cam_layer``: the module CAM methods
    explain; found automatically when omitted. Other parameters go to ``timm.create_model``
    (e.g. ``drop_rate=0.2``).
    """
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(str(arch), timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown timm architecture {arch!r}{hint}; see timm.list_models()")
    options = _pretrained_overlay(pretrained if initial_weights else False)
    try:
        model = timm.create_model(
            arch, in_chans=in_channels, num_classes=num_classes, **options, **timm_params
        )
    except TypeError as error:
        raise ConfigError(f"timm {arch!r} rejected a parameter: {error}") from error
    except Exception as error:
        if not options["pretrained"]:
            raise
        raise ModelError(
            f"cannot load pretrained weights for timm {arch!r} ({error}); offline, pass "
            f"-p pretrained=/path/to/{arch}.pth or use pretrained=false"
        ) from error
    if cam_layer is None:
        cam_layer = find_cam_layer(model, in_channels, crop_size)
    else:
        try:
            model.get_submodule(cam_layer)
        except AttributeError as error:
            raise ModelError(
                f"timm {arch!r} has no module {cam_layer!r}; see model.named_modules()"
            ) from error
    model.cam_layer = cam_layer
    return model
