"""A minimal third-party epikit plugin: the *gradient x input* explainer.

Install it next to epikit (``pip install -e examples/epikit-example-plugin``) and it appears
in ``epikit plugins`` and works with ``epikit run --explainer gradient-x-input``. The module
imports only epikit's hook marker at import time; torch is imported when the explainer runs.
"""

from __future__ import annotations

from typing import Any

import epikit

__version__ = "0.1.0"


class GradientTimesInput:
    """Saliency = |d logit_target / d input x input| summed over channels, scaled to [0, 1].

    ``batch_size`` cells are explained per forward + backward pass.
    """

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def explain(self, model: Any, crops: Any, targets: Any) -> Any:
        """Return maps (N, S, S) in [0, 1] for ``targets`` (N,) class indices."""
        import torch

        model.eval()
        maps = []
        for start in range(0, len(crops), self.batch_size):
            x = crops[start:start + self.batch_size].detach().clone().requires_grad_(True)
            target = targets[start:start + self.batch_size]
            logits = model(x)
            (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
            saliency = (gradient * x).abs().sum(dim=1)
            peak = saliency.flatten(1).amax(dim=1).clamp_min(1e-12)
            maps.append((saliency / peak[:, None, None]).detach())
        return torch.cat(maps)


@epikit.hookimpl
def epikit_register_explainers(register: Any) -> None:
    """Register the explainer under the name users type."""
    register("gradient-x-input", GradientTimesInput, summary="|gradient x input|, one backward pass")
