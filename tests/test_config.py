"""Run configuration: overrides, plugin parameters, TOML round trip, errors."""

from __future__ import annotations

import pytest

from epikit.config import (
    default_config,
    dump_config,
    load_config,
    merge_config,
    overrides_from_params,
    section_hash,
)
from epikit.errors import ConfigError


def test_stage_options_and_plugin_params_are_routed():
    config = merge_config(default_config(), overrides_from_params(
        {"train.epochs": 3, "segment.min_area": 30, "explain.params.batch_size": 16}))
    assert config["train"]["epochs"] == 3
    assert config["segment"]["params"] == {"min_area": 30}
    assert config["explain"]["params"] == {"batch_size": 16}


def test_toml_round_trip_reproduces_the_configuration(tmp_path):
    config = merge_config(default_config(), {"input": "data/in", "channels": ["Hoechst", "CTCF"],
                                             "segment": {"segmenter": "watershed", "sigma": 1.5}})
    path = tmp_path / "config.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_unknown_option_of_a_non_plugin_stage_is_an_error():
    with pytest.raises(ConfigError, match="unknown option extract.crop; known here: .*crop_size"):
        merge_config(default_config(), {"extract": {"crop": 3}})
    with pytest.raises(ConfigError, match="must start with a stage"):
        overrides_from_params({"trian.epochs": 3})


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="run.toml: invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_section_hash_is_stable_and_sensitive():
    assert section_hash({"a": 1, "b": 2}, "x") == section_hash({"b": 2, "a": 1}, "x")
    assert section_hash({"a": 1}, "x") != section_hash({"a": 2}, "x")


def test_arrays_are_hashed_in_slices_without_a_copy_and_as_their_whole_bytes():
    import hashlib
    import tracemalloc

    import numpy as np
    import torch

    from epikit.config import array_digest

    crops = np.random.default_rng(0).random((400, 3, 64, 64), dtype=np.float32)  # 19.7 MB
    tracemalloc.start()
    try:
        key = section_hash(crops)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < crops.nbytes / 8, f"hashing allocated {peak} bytes for a {crops.nbytes}-byte array"
    whole = hashlib.sha256(crops.tobytes()).hexdigest()
    assert array_digest(crops, chunk_bytes=1000)["sha256"] == whole  # slices smaller than a row, too
    assert array_digest(torch.from_numpy(crops))["sha256"] == whole
    assert key == section_hash(torch.from_numpy(crops)) != section_hash(crops[:-1])
    transposed = crops[:5].transpose(0, 2, 3, 1)
    assert array_digest(transposed)["sha256"] == hashlib.sha256(transposed.tobytes()).hexdigest()


def test_run_trains_with_the_training_loops_own_defaults():
    from epikit.options import TrainingOptions

    train, options = default_config()["train"], TrainingOptions()
    assert (train["epochs"], train["batch_size"], train["lr"]) == (options.epochs, options.batch_size, options.lr)


def test_p_none_is_the_option_value_none_and_null_is_no_value() -> None:
    from epikit.cli import parse_params

    params = parse_params(["demo.effect=none", "extract.align=None", "train.min_epochs=null"])
    assert params == {"demo.effect": "none", "extract.align": "None", "train.min_epochs": None}
