"""train.loggers: the same keys in metrics.jsonl, TensorBoard and W&B (offline without a key); unknown loggers and
a missing wandb refused in one line."""
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

from ebt.config import TrainConfig
from ebt.errors import UserError
from ebt.tasks import fit


class FakeRun:
    def __init__(self, **kw):
        self.kw, self.logged, self.finished = kw, [], False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_every_logger_gets_the_same_keys(tiny_cfg, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    fake.Histogram = lambda values: ("histogram", len(values))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(Path(tiny_cfg.train.out_dir).parent))   # no ~/.netrc: no key
    tiny_cfg.train.loggers = "tensorboard,wandb"
    fit(tiny_cfg)
    run = Path(tiny_cfg.train.out_dir)
    (wb,) = runs
    assert wb.kw["mode"] == "offline" and wb.kw["config"]["model"]["dim"] == 32
    assert wb.finished and (run / "wandb" / "run_id").read_text() == wb.kw["id"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["step"], {f"{r['split']}/{k}": float(v) for k, v in r.items() if k not in ("step", "split")})
                for r in rows]
    scalars = [(step, v) for step, v in wb.logged if not any(isinstance(x, tuple) for x in v.values())]
    hists = [(step, v) for step, v in wb.logged if all(isinstance(x, tuple) for x in v.values())]
    assert scalars == expected
    assert [step for step, _ in hists] == [r["step"] for r in rows if r["split"] == "train"]
    assert set(hists[0][1]) == {"train/energy_step1", "train/energy_step2"}   # energies of each step, B x L each
    assert hists[0][1]["train/energy_step1"] == ("histogram", tiny_cfg.train.batch_size * tiny_cfg.model.context)
    train_keys = set(expected[0][1])
    assert {"train/ce_step1", "train/ce_step2", "train/alpha", "train/energy_gap", "train/grad_norm",
            "train/samples_per_s"} <= train_keys
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    assert set(tb.Tags()["scalars"]) == {k for _, values in expected for k in values}
    assert set(tb.Tags()["histograms"]) == {"train/energy_step1", "train/energy_step2"}


def test_wandb_writes_an_offline_run(tiny_cfg):
    pytest.importorskip("wandb")
    tiny_cfg.train.loggers = "wandb"
    tiny_cfg.train.steps = 2
    fit(tiny_cfg)
    run = Path(tiny_cfg.train.out_dir)
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")) and not (run / "tb").exists()


def test_bad_loggers_are_one_line(tiny_cfg, monkeypatch):
    with pytest.raises(UserError, match="'mlflow' is not a logger"):
        TrainConfig(loggers="tensorboard,mlflow")
    assert TrainConfig(loggers="none").loggers == "none"
    monkeypatch.setitem(sys.modules, "wandb", None)               # not installed: a saved config still loads,
    tiny_cfg.train.loggers = "wandb"                              # training says what to install
    assert TrainConfig(loggers="wandb").loggers == "wandb"
    with pytest.raises(UserError, match=r"pip install 'energy-based-transformers\[wandb\]'"):
        fit(tiny_cfg)
