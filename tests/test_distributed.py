"""Per-image and per-chunk stages on a real Dask LocalCluster give the in-process results.

One cluster (2 single-threaded worker processes) is shared by the module: starting one costs
seconds. Failures are real: a segmenter that raises once, a worker process that exits in the
middle of extraction (its Nanny restarts it and Dask reruns its tasks elsewhere).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epikit.distributed import (
    DaskExecutor,
    InProcessExecutor,
    PluginSpec,
    build_plugin,
    get_executor,
    labelled,
)
from epikit.errors import ConfigError, InputError, ModelError, PluginError
from epikit.extraction import extract_cells
from epikit.io import discover_images, mask_path, read_labels
from epikit.runfolder.scratch import scratch_folders
from epikit.segmentation import segment_images
from epikit.simulate import simulate_dataset

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

CROP = 24
WATERSHED = PluginSpec("segmenter", "watershed", {})


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes with 1 thread each, and its client."""
    # Worker processes cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    simulate_dataset(root / "sim", n_fields=6, size=128, n_nuclei=(5, 8), radius=(9.0, 13.0), seed=3)
    return root / "sim" / "images"


@pytest.fixture(scope="module")
def local_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: segmentation + extraction in this process."""
    run = tmp_path_factory.mktemp("local") / "run"
    records = discover_images(inputs)
    segment_images(records, build_plugin("segmenter", "watershed"), run, progress=False)
    extract_cells(records, run / "masks", run, crop_size=CROP)
    return run


def _per_image_stages(inputs: Path, run: Path, executor, segmenter=WATERSHED) -> pd.DataFrame:
    records = discover_images(inputs)
    table = segment_images(records, segmenter, run, progress=False, executor=executor)
    extract_cells(records, run / "masks", run, crop_size=CROP, executor=executor)
    return table


def _assert_same_run(run: Path, reference: Path, inputs: Path) -> None:
    """Identical cell tables, crops, crop masks and label images."""
    import zarr

    pd.testing.assert_frame_equal(pd.read_parquet(run / "cells.parquet"),
                                  pd.read_parquet(reference / "cells.parquet"))
    ours, theirs = zarr.open_group(str(run / "crops.zarr")), zarr.open_group(str(reference / "crops.zarr"))
    for name in ("crops", "masks"):
        assert np.array_equal(np.asarray(ours[name][...]), np.asarray(theirs[name][...])), name
    assert dict(ours.attrs) == dict(theirs.attrs)
    for record in discover_images(inputs):
        assert np.array_equal(read_labels(mask_path(run / "masks", record)),
                              read_labels(mask_path(reference / "masks", record)))
    assert not [f for f in scratch_folders(run, "extract") if (f / "pending").exists()]


def _cache_counts(client) -> dict[str, tuple[int, int]]:
    """Per worker: (builds, reuses) of plugins built through epikit.distributed's cache."""
    def counts() -> tuple[int, int]:
        from epikit.distributed import _cached_plugin

        info = _cached_plugin.cache_info()
        return info.misses, info.hits

    return client.run(counts)


def test_per_image_stages_on_two_workers_match_in_process(client, inputs: Path, local_run: Path,
                                                          tmp_path: Path) -> None:
    before = _cache_counts(client)
    executor = get_executor(scheduler=client)
    assert isinstance(executor, DaskExecutor) and executor.n_workers == 2
    table = _per_image_stages(inputs, tmp_path / "run", executor)
    _assert_same_run(tmp_path / "run", local_run, inputs)
    assert table["image_id"].tolist() == [r.image_id for r in discover_images(inputs)]
    after = _cache_counts(client)
    builds = {w: after[w][0] - before[w][0] for w in after}
    uses = {w: after[w][0] + after[w][1] - before[w][0] - before[w][1] for w in after}
    assert sum(uses.values()) == len(table)  # every image asked its worker for the segmenter ...
    assert all(n <= 1 for n in builds.values())  # ... which each worker built at most once


class _FlakySegmenter:
    """Watershed that raises a RuntimeError the first time it meets one image (marker file)."""

    def __init__(self, marker: Path, victim: str) -> None:
        self.marker, self.victim = marker, victim

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        from epikit.registry import get_segmenter

        if not self.marker.exists() and np.array_equal(image, np.load(self.victim)):
            self.marker.touch()
            raise RuntimeError("transient failure")
        return get_segmenter("watershed").segment(image, nuclear_channel)


def test_task_failing_once_is_retried(client, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    from epikit.io import read_image

    records = discover_images(inputs)
    victim = tmp_path / "victim.npy"
    np.save(victim, read_image(records[2].path).array)
    flaky = _FlakySegmenter(tmp_path / "failed-once", str(victim))
    _per_image_stages(inputs, tmp_path / "run", get_executor(scheduler=client), segmenter=flaky)
    assert flaky.marker.exists()  # it did fail, and the retry succeeded
    _assert_same_run(tmp_path / "run", local_run, inputs)


def _die_once(marker: str, victim: str):
    """Make ``describe_nuclei`` in this worker exit the process once, on image ``victim``."""
    import epikit.extraction

    original = epikit.extraction.describe_nuclei

    def describe(image, labels, *args, **kwargs):
        if not os.path.exists(marker) and np.array_equal(labels, np.load(victim)):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies in the middle of its task
        return original(image, labels, *args, **kwargs)

    epikit.extraction.describe_nuclei = describe


def test_worker_dying_mid_extraction_still_gives_every_cell_once(client, inputs: Path, local_run: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(local_run / "masks", run / "masks")
    records = discover_images(inputs)
    victim = tmp_path / "victim.npy"
    np.save(victim, read_labels(mask_path(run / "masks", records[3])))
    marker = tmp_path / "died"
    client.run(_die_once, str(marker), str(victim))
    try:
        extract_cells(records, run / "masks", run, crop_size=CROP, executor=get_executor(scheduler=client))
    finally:
        client.run(_restore_describe)
    assert marker.exists()  # a worker really died
    client.wait_for_workers(2, timeout=60)
    cells = pd.read_parquet(run / "cells.parquet")
    assert cells["cell_id"].is_unique
    assert cells["crop_index"].tolist() == list(range(len(cells)))
    _assert_same_run(run, local_run, inputs)


def _restore_describe() -> None:
    import epikit.nuclei.crops
    import epikit.extraction

    epikit.extraction.describe_nuclei = epikit.nuclei.crops.describe_nuclei


def test_interrupted_distributed_extraction_resumes(client, inputs: Path, local_run: Path,
                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(local_run / "masks", run / "masks")
    records = discover_images(inputs)
    executor = get_executor(scheduler=client)

    def stop_after_two(record, count: int) -> None:
        if len((scratch_folders(run, "extract")[0] / "progress.jsonl").read_text().splitlines()) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_cells(records, run / "masks", run, crop_size=CROP, executor=executor, on_image=stop_after_two)
    assert not (run / "cells.parquet").exists()
    summary = extract_cells(records, run / "masks", run, crop_size=CROP, executor=executor)
    assert summary["n_images_resumed"] == 2 and summary["n_images_processed"] == len(records) - 2
    _assert_same_run(run, local_run, inputs)


class _WrongShapeSegmenter:
    """Breaks the segmenter contract: labels of the wrong shape (a ModelError, not retried)."""

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        return np.zeros((3, 3), np.int32)


def test_epikit_error_on_a_worker_names_the_image(client, inputs: Path, tmp_path: Path) -> None:
    records = discover_images(inputs)
    with pytest.raises(ModelError) as caught:
        segment_images(records, _WrongShapeSegmenter(), tmp_path / "run", progress=False,
                       executor=get_executor(scheduler=client))
    message = str(caught.value)
    assert "\n" not in message
    assert any(message.startswith(os.path.abspath(r.path) + ": segmenter _WrongShapeSegmenter returned")
               for r in records), message


def test_cli_extract_on_a_scheduler(client, inputs: Path, local_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from epikit.cli import app

    address = client.scheduler.address
    run = tmp_path / "run"
    shutil.copytree(local_run / "masks", run / "masks")
    result = CliRunner().invoke(app, ["extract", str(inputs), "--out", str(run), "--crop-size", str(CROP),
                                      "--scheduler", address])
    assert result.exit_code == 0, result.output
    _assert_same_run(run, local_run, inputs)

    # A label image that does not fit its image: one line naming the image, exit code 2.
    broken = tmp_path / "broken"
    shutil.copytree(local_run / "masks", broken / "masks")
    record = discover_images(inputs)[1]
    from epikit.io import write_tiff

    write_tiff(mask_path(broken / "masks", record), np.ones((10, 10), np.int32))
    result = CliRunner().invoke(app, ["extract", str(inputs), "--out", str(broken), "--scheduler", address])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{record.path.name}: " in lines[0] and "label image is 10x10" in lines[0]
    assert not (broken / "cells.parquet").exists()


def test_explain_chunks_on_workers_match_in_process(client, tmp_path: Path) -> None:
    from tiny_runs import build_tiny_run

    from epikit.explanation import explain_run
    from epikit.runfolder.maps import read_maps

    run = build_tiny_run(tmp_path, n_fields=6, epochs=1)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    options = {"cells": "all", "chunk": 8, "progress": False}
    local = explain_run(run, "gradcam", **options)
    remote = explain_run(copy, "gradcam", executor=get_executor(scheduler=client), **options)
    ours, theirs = read_maps(copy), read_maps(run)
    assert ours.cell_ids == theirs.cell_ids and len(ours.cell_ids) > 8
    assert np.array_equal(ours.maps, theirs.maps)
    assert np.array_equal(ours.fold, theirs.fold) and np.array_equal(ours.target, theirs.target)
    assert remote["views"] == local["views"]


def _slow_square(value: int) -> int:
    import time

    time.sleep(0.02 * (value % 3))  # later items often finish first
    return value * value


def test_dask_map_yields_in_input_order_through_its_window(client) -> None:
    executor = get_executor(scheduler=client)
    items = list(range(40))  # more than the submission window (4 tasks per worker thread, at least 8)
    assert [(i, r) for i, r in executor.map(_slow_square, items)] == [(i, i * i) for i in items]
    assert sorted(r for _, r in executor.map_unordered(_slow_square, items)) == [i * i for i in items]
    with pytest.raises(InputError, match=r"^item 7: seven is bad$"):
        list(executor.map(_square, items, label=lambda i: f"item {i}"))


def test_in_process_executor_orders_and_labels() -> None:
    with get_executor() as executor:
        assert isinstance(executor, InProcessExecutor) and executor.in_process
        assert [r for _, r in executor.map(_square, [3, 1, 2])] == [9, 1, 4]
        with pytest.raises(InputError, match=r"^item 7: seven is bad$"):
            list(executor.map(_square, [1, 7], label=lambda i: f"item {i}"))


def _square(value: int) -> int:
    if value == 7:
        raise InputError("seven is bad")
    return value * value


def test_labelled_keeps_the_class_and_does_not_repeat_the_label() -> None:
    error = labelled(InputError("broken"), "a.tif")
    assert type(error) is InputError and str(error) == "a.tif: broken"
    assert labelled(error, "a.tif") is error


def test_executor_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="either --workers"):
        get_executor(workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="non-negative"):
        get_executor(workers=-1)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "")
    assert get_executor().in_process
    monkeypatch.setattr("epikit.distributed.CONNECT_TIMEOUT", 1)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler 'tcp://127.0.0.1:9'"):
        get_executor(scheduler="tcp://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(PluginError, match=r"pip install 'epikit\[dask\]'"):
        get_executor(workers=1)


def test_local_workers_compute_single_threaded() -> None:
    def threads() -> tuple[int, str, str]:
        import torch

        return torch.get_num_threads(), os.environ["OMP_NUM_THREADS"], os.environ["MALLOC_MMAP_THRESHOLD_"]

    before = os.environ.get("OMP_NUM_THREADS")  # the conftest sets 2: the workers must still get 1
    with get_executor(workers=1) as executor:
        assert list(executor.client.run(threads).values()) == [(1, "1", str(32 * 2**20))]
    assert os.environ.get("OMP_NUM_THREADS") == before  # the driver's own setting is restored
