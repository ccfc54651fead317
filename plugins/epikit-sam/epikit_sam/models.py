"""Building SAM networks and loading their weights.

segment-anything's own builders (``sam_model_registry``) fix the three published sizes and
load with a bare ``torch.load``. Here every size is a :class:`SamArchitecture`, so the
published checkpoints and any other size (``model_type="custom"`` with an ``architecture``
dict, e.g. the tiny networks the tests build) load through one path: build the network from
segment-anything's modules, ``torch.load(..., weights_only=True)``, strict ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from epikit.errors import ConfigError, ModelError

WEIGHTS_HINT = (
    "download SAM weights (e.g. sam_vit_b_01ec64.pth) from "
    "https://github.com/facebookresearch/segment-anything#model-checkpoints "
    "and pass -p checkpoint=PATH"
)


@dataclass(frozen=True)
class SamArchitecture:
    """The sizes that define a SAM network (defaults are those of the published models)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamArchitecture:
        """Build from a dict (e.g. ``-p architecture='{"encoder_embed_dim": 64, ...}'``)."""
        accepted = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise ConfigError(
                f"sam: unknown architecture keys {', '.join(unknown)}; accepted: {', '.join(accepted)}"
            )
        values = dict(values)
        values["encoder_global_attn_indexes"] = tuple(values.get("encoder_global_attn_indexes", ()))
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"sam: incomplete architecture: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """The architecture as a JSON-friendly dict (round-trips through :meth:`from_dict`)."""
        values = asdict(self)
        values["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return values


ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def resolve_architecture(
    model_type: str, architecture: SamArchitecture | Mapping[str, Any] | None = None
) -> SamArchitecture:
    """The architecture for ``model_type`` (a published size, or ``"custom"`` + ``architecture``)."""
    if model_type == "custom":
        if architecture is None:
            raise ConfigError(
                "sam: model_type='custom' needs an architecture dict, e.g. "
                "-p architecture='{\"encoder_embed_dim\": 64, \"encoder_depth\": 2, ...}'"
            )
        if isinstance(architecture, SamArchitecture):
            return architecture
        return SamArchitecture.from_dict(architecture)
    if architecture is not None:
        raise ConfigError("sam: architecture is used only with model_type='custom'")
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"sam: unknown model_type {model_type!r}; use one of: {', '.join(ARCHITECTURES)}, custom"
        )
    return ARCHITECTURES[model_type]


def build_sam(architecture: SamArchitecture) -> Sam:
    """An untrained SAM network of the given ``architecture``, in eval mode."""
    a = architecture
    embedding_size = a.image_size // a.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=a.image_size,
            patch_size=a.patch_size,
            embed_dim=a.encoder_embed_dim,
            depth=a.encoder_depth,
            num_heads=a.encoder_num_heads,
            mlp_ratio=4,
            out_chans=a.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=a.window_size,
            global_attn_indexes=a.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(a.image_size, a.image_size),
            mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a.decoder_depth,
                embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim,
                num_heads=a.decoder_num_heads,
            ),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=a.iou_head_depth,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


def _mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str:
    """A short description of how a state dict differs from the network's, or ``""``."""
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in found if key not in expected]
    problems += [
        f"{key} has shape {tuple(found[key].shape)}, expected {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in found and tuple(getattr(found[key], "shape", ())) != tuple(tensor.shape)
    ]
    if not problems:
        return ""
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def load_sam(
    checkpoint: str | Path | None,
    model_type: str = "vit_b",
    architecture: SamArchitecture | Mapping[str, Any] | None = None,
) -> Sam:
    """Build the network for ``model_type`` and load the state dict in ``checkpoint`` (on CPU).

    Raises :class:`~epikit.errors.ModelError` when the checkpoint is missing, unreadable or
    made for another architecture, and :class:`~epikit.errors.ConfigError` for a bad
    ``model_type``/``architecture``.
    """
    if checkpoint is None or str(checkpoint).strip() == "":
        raise ModelError(f"the sam segmenter needs a checkpoint: {WEIGHTS_HINT}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"SAM checkpoint {path} not found: {WEIGHTS_HINT}")
    chosen = resolve_architecture(model_type, architecture)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(
            f"cannot read SAM checkpoint {path}: {type(error).__name__}: {error}; "
            "expected a state dict saved with torch.save"
        ) from error
    if not isinstance(state, Mapping):
        raise ModelError(
            f"SAM checkpoint {path} holds a {type(state).__name__}, not a state dict; "
            "save model.state_dict() with torch.save"
        )
    model = build_sam(chosen)
    problem = _mismatch(model.state_dict(), state)
    if problem:
        raise ModelError(
            f"SAM checkpoint {path} does not fit model_type {model_type!r} ({problem}); "
            f"pass the model_type the weights were made for ({', '.join(ARCHITECTURES)}, "
            "or custom with -p architecture=...)"
        )
    model.load_state_dict(state)
    return model
