"""`ebt eval downstream` end to end (EBT and Transformer++ side by side, thinking curve, exact match, report files;
the same numbers under torchrun as in one process) and `ebt data get bigbench` without a network."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ebt.cli import main
from ebt.config import ModelConfig, RunConfig
from ebt.text.models import TextTransformer
from ebt.training.checkpoint import save_checkpoint

from conftest import save_tiny_lms
from test_distributed import torchrun


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    paths = save_tiny_lms(root)[:2]
    gsm = root / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"What is {a} + 1?", "answer": f"{a} + 1 = {a + 1}\n#### {a + 1}"})
                             for a in range(5)))
    return root, [str(p) for p in paths], gsm


def test_downstream_report(ckpts, capsys, one_thread_per_module):
    root, (ebt, tpp), gsm = ckpts
    out = root / "report"
    argv = ["eval", "downstream", ebt, tpp, "--task", "dyck", "--task", f"gsm8k={gsm}", "--items", "4",
            "--seeds", "0,1", "--generate", "2", "--pretrain-windows", "2", "--out", str(out), "--json"]
    assert main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    ebt_rows = [r for r in records if r["model"] == "ebt"]
    tpp_rows = [r for r in records if r["model"] == "transformer"]
    assert len(tpp_rows) == 2 and len(ebt_rows) == 2 * 5                  # the curve is the EBT's only
    assert {r["setting"] for r in ebt_rows} == {"trained steps", "+1 step", "+3 steps", "+1 step, Langevin 1",
                                                "best-of-4"}
    dyck = {r["model"]: r for r in records if r["task"] == "dyck" and r["main"]}
    assert "mc_acc_energy" in dyck["ebt"] and "mc_acc_energy" not in dyck["transformer"]
    assert 0 <= dyck["ebt"]["mc_acc_ppl"] <= 1 and dyck["ebt"]["mc_chance"] == pytest.approx(0.25)
    gsm_main = [r for r in records if r["task"] == "gsm8k" and r["main"]]
    assert all("exact_match" in r and r["items"] == 4 for r in gsm_main)
    assert all(r["pretrain_ppl"] > 1 and r["answer_ppl_ci"][0] <= r["answer_ppl"] <= r["answer_ppl_ci"][1]
               for r in records)
    assert "answer_ppl_seed_std" in ebt_rows[0]
    best4 = next(r for r in ebt_rows if r["setting"] == "best-of-4")
    assert best4["nfe_per_token"] == 4 * (3 + 1)                           # 3 steps + the selecting pass, x 4
    text = (out / "downstream.md").read_text()
    assert "Thinking curve" in text and "best-of-4" in text and (out / "downstream.png").stat().st_size > 5000
    assert json.loads((out / "downstream.json").read_text()) == records
    assert main(argv) == 2                                                 # --out is not overwritten
    assert main(["eval", "downstream", "--merge", str(out / "downstream.json"), "--out", str(root / "merged")]) == 0
    capsys.readouterr()
    assert json.loads((root / "merged" / "downstream.json").read_text()) == records
    assert (root / "merged" / "downstream.md").read_text() == text


def test_downstream_under_torchrun_matches_one_process(ckpts, tmp_path, capsys, one_thread_per_module):
    root, (ebt, _), _ = ckpts
    args = ["eval", "downstream", ebt, "--task", "dyck", "--task", "cloze", "--items", "5", "--no-curve",
            "--pretrain-windows", "4", "--batch-size", "3"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    torchrun(["-m", "ebt", *args, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "downstream.json").read_text())
    two = json.loads((tmp_path / "two" / "downstream.json").read_text())
    for a, b in zip(one, two, strict=True):
        for key in ("pretrain_ppl", "item_ppl", "answer_ppl", "answer_bpb", "mc_acc_ppl", "mc_acc_energy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_get_bigbench_offline_is_one_line(tmp_path):
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "nothing"), "PIP_INDEX_URL": "",
           "EBT_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "ebt", "data", "get", "bigbench"], env=env, capture_output=True,
                         text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.startswith("ebt")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and "pip could not download bigbench 1.0.0" in lines[0] and "--from FILE" in lines[0]
    assert not (tmp_path / "cache" / "bigbench-1.0.0").exists()


def test_thinking_flags_apply_to_the_ebt_only_and_one_item_gives_strict_json(ckpts, tmp_path, capsys):
    root, (ebt, tpp), _ = ckpts
    out = tmp_path / "flags"
    assert main(["eval", "downstream", ebt, tpp, "--task", "dyck", "--items", "1", "--no-curve", "--steps", "2",
                 "--pretrain-windows", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    records = json.loads((out / "downstream.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert [(r["model"], r["setting"]) for r in records] == [("ebt", "given options"), ("transformer", "trained steps")]
    assert records[0]["nfe_per_token"] == 4 and records[0]["answer_ppl_ci"] is None


def test_downstream_with_a_bpe_checkpoint(tmp_path, capsys):
    """A checkpoint carrying its BPE tokenizer: items are encoded with it and bits per byte count text bytes."""
    from ebt.config import DataConfig
    from ebt.text.tokenizers import load_tokenizer

    tok = load_tokenizer("embedded-bpe-300")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=16, layers=1, heads=2, context=16, kind="transformer")
    ckpt = save_checkpoint(tmp_path / "bpe", TextTransformer(cfg),
                           RunConfig(model=cfg, data=DataConfig(tokenizer="embedded-bpe-300")), files=tok.files())
    assert main(["eval", "downstream", str(ckpt), "--task", "arithmetic", "--items", "3", "--pretrain-windows", "2",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["tokenizer"] == tok.fingerprint != "bytes" and 0 < r["answer_bpb"] < 20 and r["items"] == 3
