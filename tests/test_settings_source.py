"""One source of truth for settings: the library's settings are the validated config sections."""
import pytest

from spagraph.experiment.config import ConfigError, GraphConfig, ModelConfig, TrainConfig, validate_config
from spagraph.graph import GraphSettings
from spagraph.nn import ModelSettings
from spagraph.train.fit import TrainSettings

BASE = {"data": {"sources": [{"reader": "synthetic"}]}}


def test_settings_are_the_config_sections():
    assert GraphSettings is GraphConfig and ModelSettings is ModelConfig and TrainSettings is TrainConfig
    cfg = validate_config(BASE)
    assert cfg.model == ModelSettings() and cfg.train == TrainSettings() and cfg.graph == GraphSettings()
    with pytest.raises(ValueError, match="divisible"):
        ModelSettings(hidden=10, heads=4)          # library callers get the same validation


def test_retired_keys_load_at_their_old_value_and_keep_the_hash():
    """Configs and saved models written before val_smoothing / focal_gamma / feature_smoothing_steps
    were removed still load, with the same config hash (load_model checks it)."""
    old = BASE | {"train": {"val_smoothing": 1, "focal_gamma": 0.0}, "model": {"feature_smoothing_steps": 1}}
    assert validate_config(old).config_hash() == validate_config(BASE).config_hash()
    assert ModelSettings(**{"hidden": 8, "heads": 2, "feature_smoothing_steps": 1}).hidden == 8
    with pytest.raises(ConfigError, match="val_smoothing was removed"):
        validate_config(BASE | {"train": {"val_smoothing": 3}})


def test_keys_added_later_leave_the_hash_alone_at_their_default():
    h = validate_config(BASE).config_hash()
    assert validate_config(BASE | {"train": {"orient_augment": False}}).config_hash() == h
    assert validate_config(BASE | {"train": {"orient_augment": True}}).config_hash() != h
    assert validate_config(BASE | {"train": {"prior_rule_se": "delong"}}).config_hash() != h
