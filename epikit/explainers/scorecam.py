"""Score-CAM (Wang et al., CVPR-W 2020), the study's explainer, batched over cells.

Definition (the study's, see ``STUDY.md``): for each activation map ``A_k`` of the target
layer, upsample it to the crop size (bilinear), min-max normalise it to [0, 1], multiply the
input by it, run the classifier and take the softmax probability ``s_k`` of the target
class; the map is ``ReLU(sum_k s_k * up(A_k))`` normalised to [0, 1].

Exact speed-ups (results equal the per-map loop up to float rounding):

* all (cell, channel) pairs of a block of cells form one flat work list, scored in chunks
  of ``batch_size`` masked inputs written into one preallocated buffer;
* batch-norm is folded into the convolutions of a deep copy of the model (verified against
  the original), the copy runs channels-last under ``torch.inference_mode``;
* constant activation maps are skipped (weight 0, as in the authors' code): their
  normalisation is undefined;
* no per-item host synchronisation: scores are scattered into a device tensor.

The libraries pytorch-grad-cam and torchcam weight the maps differently: by default they
score the target's *logit* and pass the scores through a softmax over the channels;
``score="logit", weighting="softmax-over-channels"`` reproduces that (and
``score="probability", weighting="softmax-over-channels"`` matches pytorch-grad-cam with
``ClassifierOutputSoftmaxTarget``); pytorch-grad-cam also upsamples the masks with
``align_corners=True``, so matching it needs that option here too (the default is
``False``, as the authors' code and torchcam). One difference stays: the libraries give a
constant map the weight of a zero input in their softmax, epikit skips it (weight 0); the
maps agree to Pearson r = 1.00000 on resnet10 (``bench/README.md``).

``top_k`` scores only the ``k`` channels with the largest mean activation per cell, and
``precision="bfloat16"`` runs the scoring forwards in bfloat16 autocast (about 1.8x faster
on CPUs with native bf16, more on GPUs): approximations, reported in :attr:`ScoreCAM.info`. A map whose weighted sum is nowhere
positive stays all zero (ReLU removes everything); such cells are counted in ``info``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from epikit.errors import ConfigError
from epikit.explainers.cam_layers import (
    InferenceModel,
    capture_output,
    check_crops,
    check_targets,
    inference_copy,
    model_device,
    resolve_cam_layer,
    weighted_maps,
)

WEIGHTINGS = ("score", "softmax-over-channels")
SCORES = ("probability", "logit")
PRECISIONS = ("float32", "bfloat16")


def auto_batch_size(size: int, device: torch.device) -> int:
    """Masked inputs per forward: ~2**17 pixels per batch on the CPU (cache-sized), 128 on a GPU."""
    if device.type != "cpu":
        return 128
    return max(1, min(128, 2**17 // (size * size)))


class ScoreCAM:
    """Score-CAM explainer.

    Parameters
    ----------
    layer:
        Module name to explain; default the model's ``cam_layer`` attribute.
    weighting:
        ``"score"`` (default, the study and the authors' code: the target's softmax
        probability weights each map) or ``"softmax-over-channels"`` (the probabilities are
        passed through a softmax over the channels, as pytorch-grad-cam and torchcam do).
    batch_size:
        Masked inputs per scoring forward. Default: on the CPU about 2**17 pixels per batch
        (32 inputs at S = 64, 8 at 128, 2 at 256), where small batches stay in cache and run
        fastest per input (measured, see ``bench/README.md``); 128 on a GPU.
    cell_batch:
        Cells whose activations are held at once (bounds memory).
    top_k:
        Score only the ``top_k`` channels with the highest mean activation per cell
        (approximate); ``None`` scores all channels (exact).
    precision:
        ``"float32"`` (default, exact) or ``"bfloat16"`` (approximate) for the scoring forwards.
    align_corners:
        Bilinear upsampling of the masks: ``False`` (default, the authors' code and torchcam)
        or ``True`` (pytorch-grad-cam's ``UpsamplingBilinear2d``). The final map is always
        upsampled with ``align_corners=False``.
    fold_bn, channels_last:
        Exact inference speed-ups, on by default; switch off to compare.
    """

    def __init__(
        self,
        layer: str | None = None,
        weighting: str = "score",
        score: str = "probability",
        batch_size: int | None = None,
        cell_batch: int = 64,
        top_k: int | None = None,
        precision: str = "float32",
        align_corners: bool = False,
        fold_bn: bool = True,
        channels_last: bool = True,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(
                f"scorecam: unknown weighting {weighting!r}; use one of: {', '.join(WEIGHTINGS)}"
            )
        if precision not in PRECISIONS:
            raise ConfigError(f"scorecam: unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
        if score not in SCORES:
            raise ConfigError(f"scorecam: unknown score {score!r}; use one of: {', '.join(SCORES)}")
        for name, value in (("batch_size", batch_size), ("cell_batch", cell_batch), ("top_k", top_k)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"scorecam: {name} must be a positive integer, got {value!r}")
        self.layer = layer
        self.weighting = weighting
        self.score = score
        self.batch_size = batch_size
        self.cell_batch = cell_batch
        self.top_k = top_k
        self.precision = precision
        self.align_corners = bool(align_corners)
        self.fold_bn = fold_bn
        self.channels_last = channels_last
        self.info: dict[str, Any] = {}

    @property
    def params(self) -> dict[str, Any]:
        """The constructor parameters (recorded in maps.zarr)."""
        return {
            "layer": self.layer,
            "weighting": self.weighting,
            "score": self.score,
            "batch_size": self.batch_size,
            "cell_batch": self.cell_batch,
            "top_k": self.top_k,
            "precision": self.precision,
            "align_corners": self.align_corners,
            "fold_bn": self.fold_bn,
            "channels_last": self.channels_last,
        }

    def explain(
        self, model: torch.nn.Module, crops: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Maps (N, S, S) in [0, 1] for ``crops`` (N, C, S, S) and ``targets`` (N,).

        ``targets=None`` explains each crop's predicted class. The model is not modified.
        """
        crops, targets = check_crops(crops, targets)
        layer_name, _ = resolve_cam_layer(model, self.layer)
        device = model_device(model)
        n, _, size, _ = crops.shape
        net = inference_copy(
            model,
            layer_name,
            crops[:2].to(device, torch.float32),
            fold_bn=self.fold_bn,
            channels_last=self.channels_last,
        )
        maps = torch.empty((n, size, size), dtype=torch.float32, device=crops.device)
        counts = torch.zeros(3, dtype=torch.long, device=device)  # scored, skipped, zero maps
        buffer: torch.Tensor | None = None
        with capture_output(net.layer) as holder, torch.inference_mode():
            for start in range(0, n, self.cell_batch):
                x = net.prepare(crops[start : start + self.cell_batch].to(device, torch.float32))
                holder.enabled = True
                logits = net.model(x)
                activations = holder.output.float()  # type: ignore[union-attr]
                holder.enabled = False
                if targets is None:
                    target = logits.argmax(dim=1)
                else:
                    target = targets[start : start + self.cell_batch].to(device)
                    check_targets(target, logits.shape[1])
                if buffer is None:
                    batch_size = self.batch_size or auto_batch_size(size, device)
                    buffer = net.prepare(torch.empty((batch_size, *x.shape[1:]), device=device))
                weights = self._channel_weights(net, x, activations, target, buffer, counts)
                block = weighted_maps(activations, weights, size)
                counts[2] += (block.flatten(1).amax(dim=1) == 0).sum()
                maps[start : start + len(x)] = block.to(maps.device)
        scored, skipped, zero = (int(v) for v in counts.tolist())
        self.info = {
            "layer": layer_name,
            "weighting": self.weighting,
            "score": self.score,
            "approximate": self.top_k is not None or self.precision != "float32",
            "top_k": self.top_k,
            "precision": self.precision,
            "batch_size": int(buffer.shape[0]) if buffer is not None else None,
            "scored_maps": scored,
            "skipped_constant_maps": skipped,
            "all_zero_maps": zero,
            **net.info,
        }
        return maps

    def _channel_weights(
        self,
        net: InferenceModel,
        x: torch.Tensor,
        activations: torch.Tensor,
        target: torch.Tensor,
        buffer: torch.Tensor,
        counts: torch.Tensor,
    ) -> torch.Tensor:
        """Per-(cell, channel) weights (n, K) for one block of cells."""
        n, k = activations.shape[:2]
        size = x.shape[-1]
        flat = activations.flatten(2)
        active = flat.amax(dim=2) > flat.amin(dim=2)
        if self.top_k is not None and self.top_k < k:
            chosen = flat.mean(dim=2).topk(self.top_k, dim=1).indices
            selected = torch.zeros_like(active).scatter_(1, chosen, True)
            active &= selected
        counts[1] += (~active).sum()
        pairs = active.flatten().nonzero().squeeze(1)  # one host sync per block of cells
        counts[0] += pairs.numel()
        scores = torch.zeros(n * k, device=x.device)
        for chunk in pairs.split(len(buffer)):
            cell, channel = chunk // k, chunk % k
            masks = F.interpolate(
                activations[cell, channel][:, None],
                size=(size, size),
                mode="bilinear",
                align_corners=self.align_corners,
            )
            low = masks.amin(dim=(2, 3), keepdim=True)
            masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low)
            batch = buffer[: len(chunk)]
            torch.mul(x[cell], masks, out=batch)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
                outputs = net.model(batch).float()
            if self.score == "probability":
                outputs = torch.softmax(outputs, dim=1)
            scores[chunk] = outputs.gather(1, target[cell][:, None]).squeeze(1)
        scores = scores.view(n, k)
        if self.weighting == "softmax-over-channels":
            scores = torch.softmax(scores.masked_fill(~active, float("-inf")), dim=1)
            scores = torch.nan_to_num(scores, nan=0.0)  # a cell with no active channel
        return scores
