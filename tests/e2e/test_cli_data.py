"""A user's corpus end to end: `ebt tokenizer train` on a folder, `ebt data prepare` into shards, an EBT and a
Transformer++ trained on them (also under torchrun), resumed exactly, evaluated in bits per byte, and generating
text with the tokenizer their checkpoints carry."""
import json
import math
import shutil

import pytest
import torch

from ebt.cli import main
from ebt.config import apply_overrides
from ebt.errors import UserError
from ebt.presets import get_preset
from ebt.tasks import fit
from ebt.text.tokenizers import load_tokenizer

from test_distributed import losses, rel, torchrun

TINY = ["--model.dim=32", "--model.layers=2", "--model.heads=2", "--model.context=16", "--model.vocab_size=0",
        "--think.alpha=2", "--think.alpha_lr_mult=6", "--optim.warmup_steps=2", "--train.batch_size=4",
        "--train.eval_every=3", "--train.eval_batches=2", "--train.log_every=1", "--train.progress=false",
        "--train.threads=1"]


def jsonl_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ws(tmp_path_factory, one_thread_per_module):
    """A corpus of text files and JSONL, a BPE trained on it, and its shards."""
    from ebt.text.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("corpus")
    lines = embedded_corpus()[:60000].split("\n")
    (root / "corpus" / "books").mkdir(parents=True)
    for k in range(3):
        (root / "corpus" / "books" / f"{k}.txt").write_text("\n".join(lines[k * 100:(k + 1) * 100]))
    with open(root / "corpus" / "verses.jsonl", "w") as f:
        for line in lines[300:]:
            f.write(json.dumps({"text": line}) + "\n")
    assert main(["tokenizer", "train", "--data", str(root / "corpus"), "--vocab", "320", "--out", str(root / "tok"),
                 "--no-progress"]) == 0
    assert main(["data", "prepare", str(root / "corpus"), "--tokenizer", str(root / "tok"), "--out",
                 str(root / "shards"), "--workers", "2", "--unit-mb", "0.01", "--val-fraction", "0.05",
                 "--no-progress"]) == 0
    return root


def test_tokenizer_and_shards_are_what_was_asked(ws, capsys):
    tok = load_tokenizer(str(ws / "tok"))
    assert tok.vocab_size == 320 and tok.eos_id == 0
    index = json.loads((ws / "shards" / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["tokenizer"]["fingerprint"] == tok.fingerprint
    assert len(index["splits"]["train"]["shards"]) >= 4 and index["splits"]["val"]["tokens"] > 200
    assert (ws / "shards" / "tokenizer.json").read_bytes() == tok.raw


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_train_on_shards_then_eval_and_generate_with_the_checkpoints_tokenizer(ws, capsys, kind):
    out = ws / f"run-{kind}"
    assert main(["train", "--data", str(ws / "shards"), "--model", kind, *TINY, "--train.steps=6",
                 "--out", str(out)]) == 0
    val = jsonl_line(capsys)["val"]
    tok = load_tokenizer(str(ws / "tok"))
    assert (out / "checkpoint" / "tokenizer.json").read_bytes() == tok.raw
    assert json.loads((out / "checkpoint" / "config.json").read_text())["config"]["model"]["vocab_size"] == 320
    assert 0 < val["bpb"] < val["ce"] / math.log(2)          # more than one byte per token
    # `ebt eval` on the run's own held-out split reproduces training's validation (the shards' val split)
    assert main(["eval", str(out), "--json", "--windows", str(2 * 4)]) == 0
    res = jsonl_line(capsys)
    assert res["ce"] == pytest.approx(val["ce"], rel=1e-6) and res["bpb"] == pytest.approx(val["bpb"], rel=1e-6)
    assert main(["generate", str(out), "--prompt", "And God said", "--max-new", "8", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("And God said") and len(text) > len("And God said") + 8   # BPE tokens, decoded
    if kind == "ebt":
        assert main(["energy", str(out), "--text", "And God said unto", "--json"]) == 0
        assert "".join(json.loads(capsys.readouterr().out)["tokens"]) == " God said unto"


def test_resume_on_shards_is_exact_and_refuses_another_tokenizer(ws, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(ws / "shards", shards)
    cfg = apply_overrides(get_preset("lm-tiny"), {k[2:].split("=")[0]: k.split("=")[1] for k in TINY})
    cfg.data.path, cfg.train.steps = str(shards), 6
    whole = apply_overrides(cfg, {"train.out_dir": str(tmp_path / "whole")})
    fit(whole)
    parts = apply_overrides(cfg, {"train.out_dir": str(tmp_path / "parts")})
    fit(parts, stop_at=3)
    fit(parts, resume=True)
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    # the same shard folder made again with the byte tokenizer: the run will not continue on it
    shutil.rmtree(shards)
    assert main(["data", "prepare", str(ws / "corpus"), "--out", str(shards), "--no-progress"]) == 0
    with pytest.raises(UserError, match="trained with another tokenizer.json"):
        fit(apply_overrides(parts, {"train.steps": "8", "model.vocab_size": "320"}), resume=True)


def test_two_gloo_processes_on_shards_match_one(ws, tmp_path):
    """Each rank reads its slice of one process's batch from the shards (checked window by window), and a
    Transformer++ trained by 2 gloo processes follows the one-process loss curve (the first step to round-off;
    Adam amplifies float32 reduction-order differences a little after that)."""
    from ebt.text.task import TextTask

    cfg = apply_overrides(get_preset("lm-tiny"), {k[2:].split("=")[0]: k.split("=")[1] for k in TINY})
    cfg.data.path = str(ws / "shards")
    task = TextTask(cfg)
    one = task.train_batches(4, start=40)
    ranks = [task.train_batches(2, start=40, rank=r, world=2) for r in (0, 1)]
    for _ in range(3):
        assert torch.equal(next(one), torch.cat([next(r) for r in ranks]))
    args = ["train", "--data", str(ws / "shards"), *TINY, "--train.steps=4", "--optim.min_lr_ratio=1",
            "--model", "transformer"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun(["-m", "ebt", *args, "--train.batch_size=2", "--out", str(tmp_path / "two")], tmp_path)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4] and rel(two[1], one[1]) < 1e-6
    assert max(rel(two[s], one[s]) for s in one) < 1e-4, (one, two)


def test_lm_tiny_bpe_preset_resolves_its_tokenizer_and_vocabulary(tmp_path, capsys):
    assert main(["train", "--preset", "lm-tiny-bpe", "--model.vocab_size=300", "--data.tokenizer=embedded-bpe-300",
                 "--model.dim=32", "--model.layers=1", "--model.heads=2", "--model.context=16", "--train.steps=2",
                 "--train.batch_size=2", "--train.eval_batches=1", "--data.max_chars=30000", "--train.progress=false",
                 "--train.threads=1", "--out", str(tmp_path / "bpe")]) == 0
    val = jsonl_line(capsys)["val"]
    assert val["tokens"] > 0 and val["bpb"] > 0
    assert (tmp_path / "bpe" / "checkpoint" / "tokenizer.json").is_file()
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"lm-{size}" in listed for size in ("4xs", "xxs", "xl")) and "lm-tiny-bpe" in listed
