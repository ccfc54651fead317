"""The ``cellpose`` segmenter: wraps Cellpose 4 (``pip install 'epikit[cellpose]'``).

Supported: cellpose >= 4.0, < 5 (Cellpose-SAM). Cellpose 3.x is not supported: every 3.x
release pins ``numpy < 2.1`` and cannot be installed next to epikit's other dependencies,
and its networks do not load in 4.x. The default model is the installed release's own
default (``cpsam`` / ``cpsam_v2``), a ~305 M-parameter ViT-L: about 3 minutes per
512 x 512 field on one CPU core, so use a GPU for real data.

Weights: a pretrained model *name* is downloaded by cellpose into its model folder
(``~/.cellpose/models`` or ``$CELLPOSE_LOCAL_MODELS_PATH``) on first use. Offline, copy
the weights file there, or pass a file path as ``pretrained_model``.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import ConfigError, ModelError, PluginError
from epikit.segmenters.labels import nuclear_plane, relabel_sequential

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _import_cellpose_models() -> Any:
    """``cellpose.models``, with its import-time notes about optional backbones silenced."""
    quiet = [logging.getLogger(name) for name in ("cellpose.vit", "cellpose.models")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        from cellpose import models
    except ImportError as error:
        raise PluginError("the cellpose segmenter needs the optional package cellpose>=4: "
                          "pip install 'epikit[cellpose]'") from error
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return models


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (else bf16 is emulated and ~10x slower)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def _use_bfloat16(precision: str, device: Any) -> bool:
    import torch

    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


class CellposeSegmenter:
    """Cellpose 4 (Cellpose-SAM) on the nuclear channel.

    Parameters
    ----------
    pretrained_model:
        A cellpose model name (``cpsam``, ``cpsam_v2``, or a model added to cellpose's
        model list) or a path to a weights file; ``None`` uses cellpose's default.
    diameter:
        Expected nucleus diameter in pixels; images are rescaled so it becomes 30 px.
        ``None`` runs at the image's own scale.
    flow_threshold, cellprob_threshold:
        Cellpose's flow-error and cell-probability thresholds.
    min_size:
        Masks smaller than this (pixels) are dropped by cellpose.
    batch_size:
        256 x 256 tiles evaluated per network call.
    precision:
        ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 only on GPUs and CPUs with native bf16).
    device:
        A torch device string; default :func:`epikit.device.default_device`.
    """

    def __init__(
        self,
        pretrained_model: str | None = None,
        diameter: float | None = None,
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        min_size: int = 15,
        batch_size: int = 8,
        precision: str = "auto",
        device: str | None = None,
    ) -> None:
        import torch

        from epikit.device import default_device

        if precision not in PRECISIONS:
            raise ConfigError(f"cellpose precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if diameter is not None and diameter <= 0:
            raise ConfigError(f"cellpose diameter must be > 0 pixels, got {diameter}")
        models = _import_cellpose_models()
        self.device = torch.device(device) if device else default_device()
        self.diameter = diameter
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.min_size = int(min_size)
        self.batch_size = int(batch_size)
        self.use_bfloat16 = _use_bfloat16(precision, self.device)
        if pretrained_model is None:
            pretrained_model = inspect.signature(models.CellposeModel).parameters["pretrained_model"].default
        self.pretrained_model = str(pretrained_model)
        self.model = self._load(models)

    def _load(self, models: Any) -> Any:
        """Build cellpose's model, turning its failures into one-line epikit errors."""
        source = self.pretrained_model
        is_file = os.path.isfile(source)
        if not is_file:
            known = [*models.MODEL_NAMES, *models.get_user_models()]
            if source not in known:
                raise ConfigError(f"cellpose model {source!r} is neither a file nor a known model "
                                  f"name ({', '.join(known)}); pass -p pretrained_model=<path>")
        try:
            return models.CellposeModel(pretrained_model=source, device=self.device,
                                        use_bfloat16=self.use_bfloat16)
        except Exception as error:  # cellpose raises plain OSError / ValueError / RuntimeError
            if is_file:
                raise ModelError(f"{source}: not a loadable Cellpose 4 weights file "
                                 f"({type(error).__name__}: {error})") from error
            raise ModelError(
                f"cellpose model {source!r} is not in {models.MODEL_DIR} and could not be "
                f"downloaded ({type(error).__name__}: {error}); offline, copy the weights file "
                f"{source!r} into that folder (set CELLPOSE_LOCAL_MODELS_PATH to use another "
                "folder) or pass -p pretrained_model=/path/to/weights"
            ) from error

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Label the nuclei of ``image[nuclear_channel]``: int32 (Y, X), 0 = background."""
        plane = nuclear_plane(image, nuclear_channel)
        if float(plane.max()) == float(plane.min()):
            return np.zeros(plane.shape, dtype=np.int32)
        with warnings.catch_warnings():
            # cellpose builds sparse tensors in its mask step; torch warns on each call.
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            masks = self.model.eval(
                plane,
                diameter=self.diameter,
                flow_threshold=self.flow_threshold,
                cellprob_threshold=self.cellprob_threshold,
                min_size=self.min_size,
                batch_size=self.batch_size,
            )[0]
        return relabel_sequential(np.asarray(masks).reshape(plane.shape))
