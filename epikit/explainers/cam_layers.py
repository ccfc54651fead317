"""Shared machinery of the CAM explainers.

* :func:`resolve_cam_layer` finds the layer a CAM method explains (``model.cam_layer`` or an
  explicit name) and raises :class:`~epikit.errors.ModelError` naming the layers there are;
* :func:`check_crops` validates the crops / targets handed to ``explain``;
* :func:`capture_output` records (and optionally detaches) a layer's output with a hook;
* :func:`fold_batchnorm` folds eval-mode batch-norm into the convolution that feeds it, on a
  copy of the model, and :func:`inference_copy` verifies that the copy gives the same outputs;
* :func:`weighted_maps` turns per-channel weights into maps: weighted sum of the
  activations, bilinear upsampling to crop size, ReLU, per-map min-max normalisation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from epikit.errors import DataError, ModelError
from epikit.interfaces import optional_attribute


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's top-level children (the usual CAM layer candidates)."""
    return [name for name, _ in model.named_children()]


def resolve_cam_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The ``(name, module)`` a CAM method explains: ``layer`` or else ``model.cam_layer``.

    Raises :class:`ModelError` when no layer is named and the model has no ``cam_layer``
    attribute, or when the name does not exist (the message lists the top-level layers).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    name = layer if layer is not None else optional_attribute(model, "classifier", "cam_layer")
    available = ", ".join(layer_names(model)) or "none"
    if name is None:
        raise ModelError(
            f"{type(model).__name__} has no 'cam_layer' attribute; pass layer=NAME "
            f"(e.g. -p layer=...) naming one of: {available}"
        )
    if not isinstance(name, str) or not name:
        raise ModelError(f"CAM layer must be a non-empty module name, got {name!r}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ModelError(
            f"{type(model).__name__} has no layer {name!r}; available layers: {available}"
        ) from None
    return name, module


def check_crops(crops: Any, targets: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate crops (N, C, S, S) and optional targets (N,); return them as tensors.

    Raises :class:`DataError` for an empty selection, a wrong rank, non-square crops,
    non-finite values, or targets that do not match the crops.
    """
    crops = torch.as_tensor(crops)
    if crops.ndim != 4:
        raise DataError(f"crops must be shaped (N, C, S, S); got shape {tuple(crops.shape)}")
    if crops.shape[0] == 0:
        raise DataError("no crops to explain: the selection of cells is empty")
    if crops.shape[2] != crops.shape[3]:
        raise DataError(f"crops must be square (N, C, S, S); got shape {tuple(crops.shape)}")
    if not crops.is_floating_point():
        crops = crops.float()
    if not bool(torch.isfinite(crops).all()):
        raise DataError("crops contain NaN or infinite values; re-extract the cells")
    if targets is None:
        return crops, None
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.shape[0] != crops.shape[0]:
        raise DataError(
            f"targets must be shaped ({crops.shape[0]},) to match the crops; "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or bool((targets < 0).any()):
        raise DataError("targets must be non-negative integer class indices")
    return crops, targets.long()


def check_targets(targets: torch.Tensor, num_classes: int) -> None:
    """Raise :class:`DataError` when a target class index is not below ``num_classes``."""
    if bool((targets >= num_classes).any()):
        raise DataError(
            f"target class index {int(targets.max())} out of range: the model has "
            f"{num_classes} classes"
        )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass
class CapturedOutput:
    """The most recent output of a hooked layer (``None`` until it has run)."""

    output: torch.Tensor | None = None
    enabled: bool = True


@contextmanager
def capture_output(module: nn.Module, detach_for_grad: bool = False) -> Iterator[CapturedOutput]:
    """Record ``module``'s output in the yielded holder while the block runs.

    With ``detach_for_grad`` the output is replaced by a detached leaf that requires grad,
    so ``torch.autograd.grad(score, holder.output)`` gives the gradient at this layer
    without keeping the graph of the layers below it. Set ``holder.enabled = False`` to
    skip recording (e.g. during scoring forwards).
    """
    holder = CapturedOutput()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not holder.enabled:
            return None
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ModelError(
                f"CAM layer {type(_module).__name__} must output a (N, K, h, w) tensor; "
                f"got {shape}: choose a convolutional layer"
            )
        # The model gets a copy: an in-place operation after the layer (ReLU(inplace=True),
        # ``out += identity``) must not change what is recorded.
        if detach_for_grad:
            holder.output = output.detach().requires_grad_(True)
            return holder.output.clone()
        holder.output = output.detach().clone()
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the batch-norm consumes exactly the conv's output.

    Found by running ``sample`` through the model with hooks, so it works for any module
    structure (Sequential or hand-written ``forward``). Modules called more than once are
    left alone.
    """
    conv_outputs: dict[int, str] = {}
    kept: list[torch.Tensor] = []  # keeps outputs alive so their ids stay unique
    bn_inputs: dict[str, int] = {}
    calls: dict[str, int] = {}
    handles = []

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def conv_hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                conv_outputs[id(out)] = name
                kept.append(out)

            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:

            def bn_hook(_m: nn.Module, inputs: tuple[Any, ...], name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                bn_inputs[name] = id(inputs[0])

            handles.append(module.register_forward_pre_hook(bn_hook))
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for bn_name, input_id in bn_inputs.items():
        conv_name = conv_outputs.get(input_id)
        if conv_name is not None and calls[conv_name] == 1 and calls[bn_name] == 1:
            pairs.append((conv_name, bn_name))
    return pairs


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval mode) into ``conv`` in place: conv(x) then bn == new conv(x)."""
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        new_bias = (bias * scale + shift).to(conv.weight.dtype)
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)


def fold_batchnorm(model: nn.Module, sample: torch.Tensor) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` (eval mode) with batch-norm folded into convolutions.

    Each ``BatchNorm2d`` that consumes a ``Conv2d``'s output directly is folded into that
    convolution's weight and bias and replaced by ``nn.Identity``. Returns the copy and the
    number of folded pairs; ``model`` itself is untouched. Callers should verify outputs
    (:func:`inference_copy` does).
    """
    folded = copy.deepcopy(model).eval()
    pairs = _conv_bn_pairs(folded, sample)
    for conv_name, bn_name in pairs:
        _fold_pair(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        parent_name, _, attribute = bn_name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, attribute, nn.Identity())
    return folded, len(pairs)


@dataclass
class InferenceModel:
    """An eval-mode copy of a classifier prepared for many inference forwards.

    ``model`` is the copy, ``layer`` its CAM layer module, ``info`` what was done to it
    (``bn_folded`` pairs, ``channels_last``, ``bn_fold_rejected`` if verification failed).
    """

    model: nn.Module
    layer_name: str
    layer: nn.Module
    channels_last: bool
    info: dict[str, Any] = field(default_factory=dict)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format the copy runs fastest with."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _outputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with capture_output(layer) as holder, torch.inference_mode():
        logits = model(x)
    assert holder.output is not None
    return logits, holder.output


def inference_copy(
    model: nn.Module,
    layer_name: str,
    sample: torch.Tensor,
    fold_bn: bool = True,
    channels_last: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> InferenceModel:
    """An eval-mode deep copy of ``model``, batch-norm folded and channels-last when asked.

    The folded copy's logits and CAM-layer activations on ``sample`` are compared with the
    original's (in eval mode); if they differ beyond ``rtol``/``atol`` (relative to each
    tensor's scale) the unfolded copy is used instead and ``info['bn_fold_rejected']`` is set.
    """
    original = copy.deepcopy(model).eval()
    info: dict[str, Any] = {"bn_folded": 0}
    prepared = original
    if fold_bn:
        folded, n_pairs = fold_batchnorm(original, sample)
        if n_pairs:
            ref_logits, ref_act = _outputs(original, original.get_submodule(layer_name), sample)
            new_logits, new_act = _outputs(folded, folded.get_submodule(layer_name), sample)
            same = all(
                torch.allclose(new, ref, rtol=rtol, atol=atol * float(ref.abs().max().clamp_min(1)))
                for new, ref in ((new_logits, ref_logits), (new_act, ref_act))
            )
            if same:
                prepared, info["bn_folded"] = folded, n_pairs
            else:
                info["bn_fold_rejected"] = True
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    info["channels_last"] = channels_last
    return InferenceModel(
        prepared, layer_name, prepared.get_submodule(layer_name), channels_last, info
    )


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of (N, H, W) to [0, 1]; maps without variation become 0."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).reshape(-1, 1, 1)
    span = (flat.amax(dim=1).reshape(-1, 1, 1) - low)
    scaled = (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled, torch.zeros_like(maps))


def weighted_maps(activations: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """CAM maps (N, size, size) in [0, 1] from activations (N, K, h, w) and weights (N, K).

    Computes ReLU(sum_k w_k * up(A_k)) with bilinear upsampling (``align_corners=False``);
    upsampling is linear, so the weighted sum is taken at layer resolution and upsampled
    once, which is exact. Maps are then min-max normalised; a map that is zero everywhere
    after the ReLU (no positive evidence) stays all zero.
    """
    low = torch.einsum("nk,nkhw->nhw", weights.to(activations.dtype), activations)
    up = F.interpolate(low[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return normalise_maps(torch.relu(up[:, 0]))
