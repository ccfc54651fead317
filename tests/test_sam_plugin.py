"""The ``sam`` segmenter of the plugin package ``plugins/epikit-sam``.

Overlap resolution and filtering are tested directly on hand-made masks (deterministic).
The segmenter itself runs end to end through segment-anything's real classes with a tiny
SAM network built here, saved as a checkpoint and loaded back through the plugin; an
untrained SAM finds no nuclei reliably, so that test checks the contract, not accuracy.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

pytest.importorskip("segment_anything")
import torch  # noqa: E402
from segment_anything import sam_model_registry  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from epikit.errors import ConfigError, InputError, ModelError  # noqa: E402
from epikit.plugins import build_plugin_manager  # noqa: E402
from epikit.registry import get_segmenter, use_registry  # noqa: E402
from epikit_sam.masks import MaskProposal, proposals_to_labels  # noqa: E402
from epikit_sam.models import ARCHITECTURES, SamArchitecture, build_sam  # noqa: E402
from epikit_sam.segmenter import SAMSegmenter, normalise_channel, to_rgb8  # noqa: E402

SHAPE = (64, 64)

# A tiny SAM: 128 px input, 8 x 8 image embedding, 32-channel prompts (about 90 k parameters).
TINY = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "image_size": 128,
    "patch_size": 16,
    "window_size": 4,
    "prompt_embed_dim": 32,
    "mask_in_chans": 4,
    "decoder_depth": 1,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_depth": 2,
    "iou_head_hidden_dim": 32,
}


def disk(cy: float, cx: float, r: float, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def proposal(mask: np.ndarray, iou: float = 0.9, stability: float = 0.95) -> MaskProposal:
    return MaskProposal(mask=mask, predicted_iou=iou, stability_score=stability)


def field_of(*nuclei: np.ndarray) -> np.ndarray:
    """Nuclear-channel intensity: bright nuclei (1.0) on a dark background (0.1)."""
    intensity = np.full(SHAPE, 0.1, dtype=np.float32)
    for mask in nuclei:
        intensity[mask] = 1.0
    return intensity


def assert_label_contract(labels: np.ndarray, shape: tuple[int, int]) -> int:
    """int32, the right shape, 0 = background, labels 1..n without gaps; returns n."""
    assert labels.dtype == np.int32
    assert labels.shape == shape
    assert labels.min() >= 0
    n = int(labels.max())
    assert set(np.unique(labels[labels > 0]).tolist()) == set(range(1, n + 1))
    return n


# --- overlap resolution and filtering on hand-made masks --------------------------------


def test_separate_nuclei_each_get_a_label_and_non_nuclei_are_dropped():
    a, b, c = disk(12, 12, 6), disk(40, 20, 8), disk(30, 50, 7)
    background = ~(a | b | c)
    speck = disk(55, 55, 2) & background
    proposals = [
        proposal(a), proposal(b), proposal(c),
        proposal(background, iou=0.99, stability=0.99),  # covers background: dropped
        proposal(speck | disk(55, 55, 2)),                # below min_area: dropped
    ]
    labels = proposals_to_labels(proposals, field_of(a, b, c), min_area=20, max_area=400)
    assert assert_label_contract(labels, SHAPE) == 3
    found = {frozenset(zip(*np.nonzero(labels == k))) for k in (1, 2, 3)}
    assert found == {frozenset(zip(*np.nonzero(m))) for m in (a, b, c)}


def test_masks_larger_than_max_area_are_dropped():
    big = disk(32, 32, 20)
    labels = proposals_to_labels([proposal(big)], field_of(big), min_area=10, max_area=1000)
    assert labels.max() == 0
    labels = proposals_to_labels([proposal(big)], field_of(big), min_area=10, max_area=2000)
    assert labels.max() == 1 and np.array_equal(labels == 1, big)


def test_shared_pixels_go_to_the_better_mask():
    a, b = disk(32, 24, 10), disk(32, 38, 10)
    shared = a & b
    assert shared.sum() > 0
    for better, worse in ((a, b), (b, a)):
        labels = proposals_to_labels(
            [proposal(worse, iou=0.80), proposal(better, iou=0.95)], field_of(a, b), min_area=10
        )
        assert labels.max() == 2
        owner = labels[better].max()
        assert np.array_equal(labels == owner, better)          # the better mask is intact
        assert np.array_equal(labels == 3 - owner, worse & ~better)  # the other keeps the rest
        assert owner == 1                                        # painted first


def test_a_mask_mostly_covered_by_a_better_one_is_dropped_unless_allowed():
    a, b = disk(32, 30, 10), disk(32, 36, 10)
    kept_share = (b & ~a).sum() / b.sum()
    assert kept_share < 0.5
    proposals = [proposal(a, iou=0.95), proposal(b, iou=0.80)]
    assert proposals_to_labels(proposals, field_of(a, b), min_area=10).max() == 1
    relaxed = proposals_to_labels(proposals, field_of(a, b), min_area=10, min_kept_fraction=0.1)
    assert relaxed.max() == 2


def test_a_clump_gives_way_to_the_nuclei_inside_it():
    left, right = disk(32, 21, 10), disk(32, 42, 10)  # touching, not overlapping
    clump = left | right
    proposals = [proposal(clump, iou=0.99), proposal(left, iou=0.85), proposal(right, iou=0.80)]
    labels = proposals_to_labels(proposals, field_of(left, right), min_area=10)
    assert labels.max() == 2
    assert np.array_equal(labels == 1, left) and np.array_equal(labels == 2, right)


@pytest.mark.parametrize("whole_is_better", [True, False])
def test_a_nucleus_and_a_part_of_it_give_one_label(whole_is_better):
    whole, part = disk(32, 32, 14), disk(28, 28, 6)
    proposals = [
        proposal(whole, iou=0.95 if whole_is_better else 0.80),
        proposal(part, iou=0.80 if whole_is_better else 0.95),
    ]
    labels = proposals_to_labels(proposals, field_of(whole), min_area=10)
    assert labels.max() == 1, "no ring around a part, no part inside a nucleus"
    assert np.array_equal(labels == 1, whole if whole_is_better else part)


def test_holes_are_filled_and_each_label_is_one_connected_piece():
    from scipy import ndimage

    ring = disk(20, 20, 10) & ~disk(20, 20, 3)
    labels = proposals_to_labels([proposal(ring)], field_of(ring), min_area=10)
    assert np.array_equal(labels == 1, disk(20, 20, 10))

    target = disk(40, 40, 12)
    bar = np.zeros(SHAPE, dtype=bool)
    bar[:, 43:47] = True
    bar &= disk(40, 45, 14)
    labels = proposals_to_labels(
        [proposal(target, iou=0.80), proposal(bar, iou=0.99)], field_of(target), min_area=10,
        min_foreground_fraction=0.0,
    )
    target_label = labels[40, 30]
    pieces = ndimage.label(labels == target_label)[1]
    assert pieces == 1
    assert np.array_equal(labels == target_label, target & ~bar & (np.arange(64)[None, :] < 43))


def test_random_proposals_always_give_a_valid_label_image():
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(25):
        masks = [disk(*rng.uniform(5, 59, 2), rng.uniform(2, 15)) for _ in range(rng.integers(0, 12))]
        proposals = [proposal(m, rng.uniform(0.5, 1), rng.uniform(0.5, 1)) for m in masks]
        intensity = rng.uniform(0, 1, SHAPE).astype(np.float32)
        labels = proposals_to_labels(proposals, intensity, min_area=15, min_foreground_fraction=0.3)
        n = assert_label_contract(labels, SHAPE)
        union = np.zeros(SHAPE, dtype=bool)
        for m in masks:
            union |= ndimage.binary_fill_holes(m)
        assert not (labels[~union]).any(), "labels come only from proposals"
        for k in range(1, n + 1):
            assert (labels == k).sum() >= 15
            assert ndimage.label(labels == k)[1] == 1


def test_no_proposals_and_bad_shapes():
    assert_label_contract(proposals_to_labels([], np.zeros(SHAPE)), SHAPE)
    assert proposals_to_labels([proposal(np.zeros(SHAPE, bool))], np.ones(SHAPE)).max() == 0
    with pytest.raises(ValueError, match="shape"):
        proposals_to_labels([proposal(np.ones((8, 8), bool))], np.zeros(SHAPE))


def test_channel_rendering_for_sam():
    assert normalise_channel(np.full(SHAPE, 5.0)) is None
    assert normalise_channel(np.full(SHAPE, np.nan)) is None
    channel = np.linspace(0, 1000, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    channel[0, 0] = np.nan
    scaled = normalise_channel(channel)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert scaled[0, 0] == 0.0
    sparse = np.zeros(SHAPE, dtype=np.float32)
    sparse[3, 3] = 9.0  # one bright pixel: the percentiles coincide, min/max do not
    assert normalise_channel(sparse)[3, 3] == 1.0
    rgb = to_rgb8(scaled)
    assert rgb.shape == (*SHAPE, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].max() == 255 and np.array_equal(rgb[..., 0], rgb[..., 2])


# --- the segmenter through segment-anything's real classes -------------------------------


def tiny_sam() -> Sam:
    """A tiny SAM assembled directly from segment-anything's modules (not the plugin's builder)."""
    t = TINY
    embedding = t["image_size"] // t["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=t["image_size"], patch_size=t["patch_size"], embed_dim=t["encoder_embed_dim"],
            depth=t["encoder_depth"], num_heads=t["encoder_num_heads"], mlp_ratio=4,
            out_chans=t["prompt_embed_dim"], qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=t["window_size"], global_attn_indexes=tuple(t["encoder_global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=t["prompt_embed_dim"], image_embedding_size=(embedding, embedding),
            input_image_size=(t["image_size"], t["image_size"]), mask_in_chans=t["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=t["decoder_depth"], embedding_dim=t["prompt_embed_dim"],
                mlp_dim=t["decoder_mlp_dim"], num_heads=t["decoder_num_heads"],
            ),
            transformer_dim=t["prompt_embed_dim"], iou_head_depth=t["iou_head_depth"],
            iou_head_hidden_dim=t["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_sam()
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def nuclei_field(size: int = 128, seed: int = 0) -> np.ndarray:
    """A 3-channel float32 field with bright disks in channel 0, noisy other channels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, (3, size, size)).astype(np.float32)
    for cy, cx, r in [(30, 30, 12), (80, 40, 15), (60, 95, 14), (100, 100, 10)]:
        image[0][disk(cy, cx, r, (size, size))] += 800
    return image


# Permissive settings: an untrained network's masks are kept so the whole path is exercised.
PERMISSIVE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  min_foreground_fraction=0.0, min_kept_fraction=0.0, max_area=128 * 128,
                  box_nms_thresh=0.95, device="cpu")


def test_checkpoint_loads_through_the_real_path(tiny_checkpoint):
    path, saved = tiny_checkpoint
    segmenter = SAMSegmenter(path, model_type="custom", architecture=TINY, device="cpu")
    loaded = segmenter.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    torch.manual_seed(1)
    fresh = build_sam(SamArchitecture.from_dict(TINY)).state_dict()
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved), "the weights came from the file"


def test_segment_end_to_end_through_the_registry(tiny_checkpoint):
    path, _ = tiny_checkpoint
    image = nuclei_field()
    with use_registry(build_plugin_manager()):
        segmenter = get_segmenter("sam", checkpoint=str(path), model_type="custom",
                                  architecture=TINY, **PERMISSIVE)
    assert isinstance(segmenter, SAMSegmenter)
    proposals = segmenter.propose(image)
    assert proposals, "segment-anything's automatic generator produced no masks"
    assert all(p.mask.shape == image.shape[1:] and p.mask.dtype == bool for p in proposals)
    labels = segmenter.segment(image, nuclear_channel=0)
    n = assert_label_contract(labels, image.shape[1:])
    assert n >= 1
    from scipy import ndimage

    union = np.zeros(image.shape[1:], dtype=bool)
    for p in proposals:
        union |= ndimage.binary_fill_holes(p.mask)
    assert not labels[~union].any()


def test_prebuilt_model_and_empty_fields(tiny_checkpoint):
    torch.manual_seed(0)
    segmenter = SAMSegmenter(sam_model=tiny_sam(), **PERMISSIVE)
    for image in (np.zeros((2, 96, 80), np.float32), np.full((1, 96, 80), np.nan, np.float32)):
        labels = segmenter.segment(image)
        assert labels.shape == (96, 80) and labels.dtype == np.int32 and labels.max() == 0
    strict = SAMSegmenter(sam_model=tiny_sam(), points_per_side=4, device="cpu")
    assert_label_contract(strict.segment(nuclei_field(seed=1)), (128, 128))
    with pytest.raises(InputError, match="nuclear_channel 3"):
        segmenter.segment(nuclei_field(), nuclear_channel=3)
    with pytest.raises(InputError, match="shape"):
        segmenter.segment(np.zeros((64, 64), np.float32))


def test_missing_or_unfit_checkpoint_raises_model_error(tmp_path, tiny_checkpoint):
    with pytest.raises(ModelError) as missing:
        SAMSegmenter()
    message = str(missing.value)
    assert "checkpoint=PATH" in message and "segment-anything" in message and "\n" not in message
    with pytest.raises(ModelError, match="nowhere.pth not found.*checkpoint=PATH"):
        SAMSegmenter(tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read SAM checkpoint"):
        SAMSegmenter(garbage, model_type="custom", architecture=TINY)
    path, _ = tiny_checkpoint
    wider = {**TINY, "encoder_embed_dim": 48}
    with pytest.raises(ModelError, match="does not fit model_type 'custom'.*shape"):
        SAMSegmenter(path, model_type="custom", architecture=wider)


def test_bad_options_raise_config_error(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(ConfigError, match="needs an architecture"):
        SAMSegmenter(path, model_type="custom")
    with pytest.raises(ConfigError, match="unknown model_type 'vit_x'.*vit_b"):
        SAMSegmenter(path, model_type="vit_x")
    with pytest.raises(ConfigError, match="unknown architecture keys depth"):
        SAMSegmenter(path, model_type="custom", architecture={**TINY, "depth": 3})
    with pytest.raises(ConfigError, match="only with model_type='custom'"):
        SAMSegmenter(path, architecture=TINY)
    with pytest.raises(ConfigError, match="mask-generator option"):
        SAMSegmenter(path, model_type="custom", architecture=TINY, no_such_option=1)
    with pytest.raises(ConfigError, match="min_area"):
        SAMSegmenter(path, model_type="custom", architecture=TINY, min_area=50, max_area=10)


def test_published_sizes_match_segment_anything():
    """The plugin's vit_b/l/h builders lay out weights exactly like the official ones."""
    with torch.device("meta"):
        for model_type, architecture in ARCHITECTURES.items():
            ours = {k: tuple(v.shape) for k, v in build_sam(architecture).state_dict().items()}
            official = {k: tuple(v.shape) for k, v in sam_model_registry[model_type]().state_dict().items()}
            assert ours == official, model_type
        vit_b = build_sam(ARCHITECTURES["vit_b"])
    assert round(sum(p.numel() for p in vit_b.parameters()) / 1e6) == 94
