"""The configuration schema: defaults, YAML loading, validation messages."""
from __future__ import annotations

import pytest

from bmlr.config import Config, ConfigError, from_dict, load_config


def test_defaults_follow_the_paper():
    cfg = Config()
    assert (cfg.optimizer, cfg.lr, cfg.adam_betas, cfg.batch_size, cfg.epochs) == ("adam", 5e-5, (0.9, 0.999), 64, 70)
    assert cfg.seeds == [0, 1, 2] and cfg.model_width == 64 and cfg.model_depth == 2


def test_yaml_round_trip(tmp_path):
    cfg = from_dict({"method": "only_tpo", "fusion": "film", "lr": "1e-3", "seeds": 3, "alpha": 2})
    assert cfg.lr == 1e-3 and cfg.seeds == [3] and cfg.alpha == 2.0
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert load_config(path) == cfg


@pytest.mark.parametrize("data, key", [
    ({"bogus": 1}, "bogus"),
    ({"beta": 1.5}, "beta"),
    ({"alpha": 0}, "alpha"),
    ({"fusion": "attention"}, "fusion"),
    ({"method": "nope"}, "method"),
    ({"lr": "fast"}, "lr"),
    ({"epochs": 2.5}, "epochs"),
    ({"seeds": []}, "seeds"),
    ({"amp": "yes"}, "amp"),
    ({"adam_betas": [0.9]}, "adam_betas"),
])
def test_bad_values_name_the_file_and_key(tmp_path, data, key):
    import yaml
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_replace_validates():
    with pytest.raises(ConfigError, match="beta"):
        Config().replace(beta=-0.1)
