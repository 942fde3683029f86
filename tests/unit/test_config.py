import pytest
import yaml

from ebt.config import RunConfig, apply_overrides, load_yaml, save_yaml, to_dict
from ebt.errors import UserError
from ebt.presets import PRESETS, get_preset


def test_presets_are_valid_and_roundtrip_through_yaml(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        save_yaml(cfg, tmp_path / f"{name}.yaml")
        base = type(cfg)()  # the library defaults of that config class; the YAML must restore the preset
        assert to_dict(load_yaml(tmp_path / f"{name}.yaml", base=base)) == to_dict(cfg)


def test_overrides_are_typed():
    cfg = apply_overrides(RunConfig(), {"optim.lr": "3e-3", "train.steps": "12", "think.learn_alpha": "false",
                                        "data.path": "none", "optim.betas": "0.9,0.95"})
    assert cfg.optim.lr == 3e-3 and cfg.train.steps == 12 and cfg.think.learn_alpha is False
    assert cfg.data.path is None and cfg.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize("overrides, words", [
    ({"optim.lrr": "1"}, "did you mean 'lr'"),
    ({"train.steps": "-3"}, "train.steps must be >= 1"),
    ({"think.alpha": "0"}, "think.alpha must be a finite number > 0"),
    ({"think.alpha": "inf"}, "think.alpha must be a finite number > 0"),
    ({"optim.lr": "nan"}, "optim.lr must be a finite number > 0"),
    ({"model.heads": "3"}, "does not divide"),
    ({"train.steps": "abc"}, "not a valid int"),
    ({"optim": "1"}, "is a section"),
    ({"model.conditioning": "film"}, "is not known"),
])
def test_bad_values_raise_one_clear_error(overrides, words):
    with pytest.raises(UserError, match=words):
        apply_overrides(RunConfig(), overrides)


def test_yaml_rejects_unknown_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"dimm": 3}}))
    with pytest.raises(UserError, match="dimm"):
        load_yaml(f)
