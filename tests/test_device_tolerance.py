"""CPU and GPU results agree within stated tolerances; the device is chosen automatically.

On a GPU epikit computes predictions under bfloat16 autocast (``epikit.training.fit``) and
Score-CAM in float32, where cuDNN may use TF32 convolutions (10-bit mantissa). The
tolerances below are what a GPU result may differ from the CPU's (they are stated in
README.md, "Running on a GPU"):

* class probabilities: at most :data:`PROBABILITY_ATOL` apart;
* Score-CAM maps (each in [0, 1]): Pearson r >= :data:`MAP_MIN_CORRELATION` per cell and at
  most :data:`MAP_ATOL` apart per pixel.

The CPU half runs everywhere: it reproduces the GPU's loss of precision on the CPU (the
same model and crops in bfloat16, whose 7-bit mantissa is coarser than TF32's) and checks
it against a float64 reference (probabilities) or the float32 result (maps). The half
marked ``cuda`` compares real CUDA results with the CPU's and is skipped without a GPU
(``bench/gpu.sh`` runs it).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from epikit.device import default_device
from epikit.registry import build, get_explainer
from epikit.training.fit import predict_proba

PROBABILITY_ATOL = 0.02
MAP_MIN_CORRELATION = 0.999
MAP_ATOL = 0.02

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model_and_crops() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The study's resnet10 (seeded, BatchNorm statistics from the crops) and 8 nucleus-like crops of 32 px."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = 7 + 5 * torch.rand(8, 1, 1, generator=generator)
    inside = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < radius**2).float()[:, None]
    crops = inside * (0.5 + torch.rand(8, 3, 32, 32, generator=generator))
    crops[4:, 2] *= 1 + ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt() / radius[4:]  # a rim in one class
    torch.manual_seed(0)
    model = build("classifier", "resnet10", in_channels=3, num_classes=2, crop_size=32)
    model.train()
    with torch.no_grad():
        model(crops)
    return model.eval(), crops, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def check_maps(reference: np.ndarray, other: np.ndarray) -> None:
    """``other`` maps within the stated tolerances of ``reference`` maps."""
    assert np.abs(reference - other).max() <= MAP_ATOL
    for a, b in zip(reference, other):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= MAP_MIN_CORRELATION


def test_bfloat16_precision_stays_within_the_probability_tolerance(model_and_crops):
    model, crops, _ = model_and_crops
    with torch.no_grad():
        exact = torch.softmax(copy.deepcopy(model).double()(crops.double()), dim=1).numpy()
        rounded = torch.softmax(copy.deepcopy(model).bfloat16()(crops.bfloat16()).double(), dim=1).numpy()
    float32 = predict_proba(model, crops, device=torch.device("cpu")).numpy()
    assert np.abs(float32 - exact).max() <= 1e-5  # the CPU path itself
    assert 1e-4 < np.abs(rounded - exact).max() <= PROBABILITY_ATOL  # bf16 does change them, within bounds


def test_bfloat16_scorecam_stays_within_the_map_tolerance(model_and_crops):
    model, crops, targets = model_and_crops
    exact = get_explainer("scorecam").explain(model, crops, targets).numpy()
    rounded = get_explainer("scorecam", precision="bfloat16").explain(model, crops, targets).numpy()
    assert exact.shape == (8, 32, 32) and not np.array_equal(exact, rounded)
    check_maps(exact, rounded)


def test_the_device_is_chosen_automatically(monkeypatch):
    monkeypatch.delenv("EPIKIT_DEVICE", raising=False)
    assert default_device().type == ("cuda" if HAS_CUDA else "cpu")
    monkeypatch.setenv("EPIKIT_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_results_match_the_cpu_within_the_tolerances(model_and_crops):
    model, crops, targets = model_and_crops
    gpu_model = copy.deepcopy(model).to("cuda")
    cpu_probabilities = predict_proba(model, crops, device=torch.device("cpu")).numpy()
    gpu_probabilities = predict_proba(gpu_model, crops, device=torch.device("cuda")).cpu().numpy()
    assert np.abs(cpu_probabilities - gpu_probabilities).max() <= PROBABILITY_ATOL
    explainer = get_explainer("scorecam")
    cpu_maps = explainer.explain(model, crops, targets).numpy()
    gpu_maps = explainer.explain(gpu_model, crops.to("cuda"), targets.to("cuda")).cpu().numpy()
    check_maps(cpu_maps, gpu_maps)
