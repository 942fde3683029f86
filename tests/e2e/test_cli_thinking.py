"""`ebt energy` and `ebt eval thinking` end to end."""
import json

import torch

from ebt.cli import main
from ebt.config import ModelConfig, ThinkConfig
from ebt.text.models import TextEBT


def model(conditioning="none", steps=2, vocab=17):
    torch.manual_seed(0)
    m = TextEBT(ModelConfig(vocab_size=vocab, dim=16, layers=2, heads=2, context=8, conditioning=conditioning),
                ThinkConfig(landscapes=steps, alpha=5.0)).double().eval()
    return m


def test_energy_and_eval_thinking_cli(tmp_path, capsys):
    from ebt.training.checkpoint import save_checkpoint
    from ebt.config import RunConfig

    m = model("time_embed", vocab=256).float()
    cfg = RunConfig(model=m.cfg, think=m.think_cfg)
    ckpt = save_checkpoint(tmp_path / "ebt", m, cfg)
    png = tmp_path / "energy.png"
    assert main(["energy", str(ckpt), "--text", "And God", "--png", str(png), "--json", "--steps", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["tokens"]) == 6 and len(res["final"]) == 6 and len(res["steps"]) == 4
    assert png.stat().st_size > 1000
    out = tmp_path / "sweep"
    assert main(["eval", "thinking", "--ebt", str(ckpt), "--out", str(out), "--windows", "1"]) == 0
    table = (out / "thinking.md").read_text()
    assert "best-of-10" in table and "dyck" in table and (out / "thinking.png").is_file()
    assert main(["eval", "thinking", "--ebt", str(ckpt), "--out", str(out)]) == 2   # refuses to overwrite
    diag = tmp_path / "diagnostics"
    assert main(["eval", "thinking", "--ebt", str(ckpt), "--out", str(diag), "--windows", "1", "--diagnostics",
                 "--samples", "3", "--no-embedded-ood", "--inference", "autograd", "--half", "report"]) == 0
    results = json.loads((diag / "diagnostics.json").read_text())
    assert set(results) == {"held-out"} and results["held-out"]["samples"] == 3
    assert "lowest energy = lowest CE" in (diag / "diagnostics.md").read_text()
    assert (diag / "diagnostics.png").stat().st_size > 1000
    assert main(["energy", str(ckpt), "--text", "x" * 40]) == 2                  # longer than the context
    assert main(["energy", str(ckpt), "--text", "ab", "--samples", "0"]) == 2
