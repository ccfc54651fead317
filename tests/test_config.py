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


def test_run_trains_with_the_training_loops_own_defaults():
    from epikit.options import TrainingOptions

    train, options = default_config()["train"], TrainingOptions()
    assert (train["epochs"], train["batch_size"], train["lr"]) == (options.epochs, options.batch_size, options.lr)
