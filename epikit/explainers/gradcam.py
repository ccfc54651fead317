"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhyay et al. 2018), batched.

Both take one forward and one backward pass per batch of cells: a hook on the CAM layer
replaces its output by a detached leaf, so the gradient of the summed target logits with
respect to that leaf gives every cell's gradient at once (cells are independent in eval
mode). Channel weights:

* Grad-CAM: the spatial mean of the gradient of the target logit;
* Grad-CAM++: ``sum_ij alpha_ij * ReLU(g_ij)`` with
  ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)`` (the paper's closed form for an exponential
  output), 0 where the denominator is 0.

Maps are ``ReLU(sum_k w_k up(A_k))`` normalised to [0, 1] (shared with Score-CAM); a map with
no positive evidence stays all zero.
"""

from __future__ import annotations

import copy

from typing import Any

import torch

from epikit.explainers.cam_layers import (
    capture_output,
    check_crops,
    check_targets,
    model_device,
    resolve_cam_layer,
    weighted_maps,
)
from epikit.errors import ConfigError


class GradCAM:
    """Grad-CAM explainer: gradient-averaged channel weights at the CAM layer.

    ``layer`` defaults to the model's ``cam_layer``; ``batch_size`` cells go through one
    forward + backward pass.
    """

    method = "gradcam"

    def __init__(self, layer: str | None = None, batch_size: int = 64) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{self.method}: batch_size must be a positive integer, got {batch_size!r}")
        self.layer = layer
        self.batch_size = batch_size
        self.info: dict[str, Any] = {}

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters (recorded in maps.zarr)."""
        return {"layer": self.layer, "batch_size": self.batch_size}

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Weights (N, K) from activations and gradients (N, K, h, w)."""
        return gradients.mean(dim=(2, 3))

    def explain(
        self, model: torch.nn.Module, crops: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Maps (N, S, S) in [0, 1] for ``crops`` (N, C, S, S) and ``targets`` (N,).

        ``targets=None`` explains each crop's predicted class. The work runs on an eval-mode
        copy, so the caller's model (mode, hooks, weights) is untouched and concurrent calls
        sharing one model do not see each other's hooks.
        """
        crops, targets = check_crops(crops, targets)
        layer_name, _ = resolve_cam_layer(model, self.layer)
        device = model_device(model)
        n, _, size, _ = crops.shape
        with torch.inference_mode(False), torch.enable_grad():
            model = copy.deepcopy(model).eval()  # outside inference mode: its weights take gradients
            layer = model.get_submodule(layer_name)
            maps = torch.empty((n, size, size), dtype=torch.float32, device=crops.device)
            with capture_output(layer, detach_for_grad=True) as holder:
                for start in range(0, n, self.batch_size):
                    x = crops[start : start + self.batch_size].to(device, torch.float32).clone()
                    logits = model(x)
                    if targets is None:
                        target = logits.detach().argmax(dim=1)
                    else:
                        target = targets[start : start + self.batch_size].to(device)
                        check_targets(target, logits.shape[1])
                    activations = holder.output
                    assert activations is not None
                    selected = logits.gather(1, target[:, None]).sum()
                    (gradients,) = torch.autograd.grad(selected, activations)
                    weights = self.channel_weights(activations.detach(), gradients)
                    block = weighted_maps(activations.detach().float(), weights.float(), size)
                    maps[start : start + len(x)] = block.to(maps.device)
        self.info = {"layer": layer_name, "approximate": False}
        return maps


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ explainer: positive gradients weighted by the closed-form alphas."""

    method = "gradcampp"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Weights (N, K): ``sum_ij alpha_ij ReLU(g_ij)``."""
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, squared / safe, torch.zeros_like(squared))
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3))
