"""params.yaml -> typed config: overrides, profiles and clear errors."""

import pytest

from components.config import ConfigError, flatten, load_params

from .conftest import REPO


def test_repo_params_load_with_override():
    p = load_params(REPO / "params.yaml", ["train.epochs=3", "model.generator.ngf=8"])
    assert p.train.epochs == 3
    assert p.model.generator["ngf"] == 8
    assert p.prepare.sources[0].kind == "builtin"
    assert flatten(p.to_dict())["train.epochs"] == 3


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: train: unknown key\(s\) \['epocs'\]"):
        load_params(f)


def test_wrong_type_is_rejected(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_params(f)


def test_profile_merges_over_params(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n  batch_size: 4\n")
    (tmp_path / "profiles" / "big.yaml").write_text("train:\n  epochs: 200\n")
    p = load_params(tmp_path / "params.yaml", profile="big")
    assert (p.train.epochs, p.train.batch_size) == (200, 4)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "-inf"])
def test_nan_and_inf_are_refused_for_every_float_key(tmp_path, value):
    """Keys without a range too (a NaN loss weight trains nothing and used to exit 0), in a params file
    and through -S alike."""
    f = tmp_path / "params.yaml"
    f.write_text(f"train:\n  lambda_l1: {value}\n")
    with pytest.raises(ConfigError, match=r"train\.lambda_l1: expected a finite number"):
        load_params(f)
    with pytest.raises(ConfigError, match=r"prepare\.fg_mse_max: expected a finite number"):
        load_params(REPO / "params.yaml", [f"prepare.fg_mse_max={value}"])
