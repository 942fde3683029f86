"""Config sections and their plumbing: presets, YAML round trips, typed overrides, one-line errors, renamed keys."""
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
    ({"think.alpha": "inf"}, "think.alpha='inf' is not a finite number"),
    ({"optim.lr": "nan"}, "optim.lr='nan' is not a finite number"),
    ({"model.ffn_mult": "inf"}, "model.ffn_mult='inf' is not a finite number"),
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


def test_renamed_key_still_loads_with_a_note(tmp_path):
    """`think.steps` is now `think.landscapes`: overrides, YAML files and saved configs with the old name still load."""
    from ebt.config import RunConfig, from_dict
    from ebt.config.parsing import RenamedKeyWarning

    with pytest.warns(RenamedKeyWarning, match="'think.steps' is now 'think.landscapes'"):
        cfg = apply_overrides(RunConfig(), {"think.steps": "3"})
    assert cfg.think.landscapes == 3
    path = tmp_path / "old.yaml"
    path.write_text("think:\n  steps: 4\n")
    with pytest.warns(RenamedKeyWarning):
        assert load_yaml(path).think.landscapes == 4
    saved = to_dict(RunConfig())
    saved["think"]["steps"] = saved["think"].pop("landscapes")                 # as written before the rename
    del saved["task"]                                                          # ... and before configs had a task
    with pytest.warns(RenamedKeyWarning):
        old = from_dict(RunConfig, saved)
    assert old == RunConfig()
    with pytest.raises(UserError, match="did you mean 'landscapes'"):
        apply_overrides(RunConfig(), {"think.landscape": "2"})


def test_sections_built_in_python_refuse_non_finite_rates():
    from ebt.config import OptimConfig, ThinkConfig

    with pytest.raises(UserError, match="think.alpha must be a finite number > 0"):
        ThinkConfig(alpha=float("inf"))
    with pytest.raises(UserError, match="optim.lr must be a finite number > 0"):
        OptimConfig(lr=float("nan"))


def test_an_empty_config_file_or_section_changes_nothing(tmp_path):
    for text in ("", "model: {}\n", "# only a comment\n"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        assert to_dict(load_yaml(path)) == to_dict(RunConfig())
