"""Bad input across every command: each row runs `ebt ...` in-process and must exit with its code, print exactly one
line on stderr (no traceback) naming the problem, and change nothing on disk. docs/errors.md lists the table."""
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from ebt.cli import main

from conftest import FIXTURES

TEXT = ["--preset", "lm-tiny", "--model.dim=32", "--model.layers=2", "--model.heads=2", "--model.context=16",
        "--train.steps=2", "--train.batch_size=4", "--train.eval_batches=1", "--data.max_chars=20000",
        "--data.val_fraction=0.1", "--train.progress=false", "--train.threads=1"]
VIDEO = ["--preset", "video-tiny", "--model.dim=16", "--model.layers=1", "--model.heads=2", "--model.context=4",
         "--video.context_frames=2", "--data.image_size=8", "--data.digit_size=4", "--data.videos=20", "--video.patch=2",
         "--train.steps=2", "--train.batch_size=4", "--train.eval_batches=1", "--train.progress=false",
         "--train.threads=1"]
IMAGE = ["--data.embedded=digits", "--data.image_size=0", "--data.max_images=48", "--model.patch=2", "--model.dim=16",
         "--model.layers=1", "--model.heads=2", "--train.steps=2", "--train.batch_size=8", "--train.eval_batches=1",
         "--train.progress=false", "--train.threads=1"]


class Payload:
    """Unpickling this creates the file PWNED: proof that code ran."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, one_thread_per_module):
    """A workspace: trained text and image runs, good and bad files, and pickle payloads in every readable format."""
    root = tmp_path_factory.mktemp("ws")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", *TEXT, "--out", "runs/ebt"]) == 0
        assert main(["train", *TEXT, "--model", "transformer", "--out", "runs/tpp"]) == 0
        assert main(["train", "--preset", "denoise-tiny", *IMAGE, "--out", "runs/img-ebt"]) == 0
        assert main(["train", "--preset", "dit-tiny", *IMAGE, "--out", "runs/img-dit"]) == 0
        assert main(["train", *VIDEO, "--out", "runs/vid"]) == 0
        assert main(["train", *VIDEO, "--model", "transformer", "--out", "runs/vid-tpp"]) == 0
    finally:
        os.chdir(cwd)
    (root / "good.txt").write_text("In the beginning " * 300)
    assert main(["data", "prepare", str(root / "good.txt"), "--tokenizer", "embedded-bpe-300", "--out",
                 str(root / "shards-bpe"), "--workers", "1", "--val-fraction", "0.2", "--no-progress"]) == 0
    import shutil
    shutil.copytree(root / "shards-bpe", root / "shards-damaged")
    (root / "shards-damaged" / "index.json").write_text('{"format": "ebt-token-shards", "vers')
    (root / "norecs.jsonl").write_text('{"body": "no text field"}\n')
    (root / "emptycorpus").mkdir()
    (root / "emptycorpus" / "a.txt").write_text("")
    (root / "notatok.json").write_text('{"model": "not a tokenizer"}')
    (root / "bad.bin").write_bytes(b"valid text then \xff\xfe invalid" * 100)
    (root / "afile").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "notrun").mkdir()
    (root / "notrun" / "thesis.tex").write_text("precious")
    (root / "bad.yaml").write_text("train: [unclosed")
    (root / "random.ckpt").write_bytes(os.urandom(256))
    payload = pickle.dumps({"state_dict": Payload()})
    (root / "payload.ckpt").write_bytes(payload)
    (root / "payload.pt").write_bytes(payload)
    (root / "payload.npy").write_bytes(payload)
    import numpy as np
    np.savez(root / "payload.npz", images=np.array([Payload()], dtype=object))   # an object array: a pickle inside
    (root / "payload.yaml").write_text("train: !!python/object/apply:builtins.open [PWNED, w]\n")
    missing = torch.load(FIXTURES / "tiny_default.ckpt", weights_only=True)
    del missing["hyper_parameters"]["embedding_dim"]
    torch.save(missing, root / "missing_key.ckpt")
    (root / "victim.txt").write_text("precious")
    (root / "linked").mkdir()
    (root / "linked" / ".lock").symlink_to(root / "victim.txt")          # a lock file that points elsewhere
    (root / "nest" / "inner").mkdir(parents=True)
    for d in (root / "nest", root / "nest" / "inner"):
        (d / ".ebt-run").write_text("{}")
    (root / "pngs").mkdir()
    from conftest import write_pngs
    write_pngs(root / "pngs", [(8, 8, "L")])
    from ebt.media import save_gif
    save_gif(torch.rand(2, 1, 8, 8), root / "short.gif")
    save_gif(torch.rand(12, 1, 8, 8), root / "shortvids" / "a.gif")
    save_gif(torch.rand(2, 1, 8, 8), root / "shortvids" / "b.gif")
    write_pngs(root / "mixedvids" / "a", [(8, 8, "L")] * 6)
    write_pngs(root / "mixedvids" / "b", [(10, 10, "L")] * 6)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    # a copy of the text run whose files carry payloads: weights, config and a legacy trainer.pt
    for name, file in (("weights", "model.safetensors"), ("config", "config.json"), ("trainer", "trainer.pt"),
                       ("state", "trainer.json"), ("tensors", "trainer.safetensors"), ("layout", "trainer.json")):
        run = root / "planted" / name
        (run / "checkpoint").mkdir(parents=True)
        for f in (root / "runs" / "ebt" / "checkpoint").iterdir():
            (run / "checkpoint" / f.name).write_bytes(f.read_bytes())
        (run / ".ebt-run").write_text("{}")
        if name == "trainer":
            for f in ("trainer.json", "trainer.safetensors"):
                (run / "checkpoint" / f).unlink()
        (run / "checkpoint" / file).write_bytes(payload if name != "layout" else b'{"step": "3"}')
    (root / "keep.png").write_bytes(b"not overwritten")
    for name in ("mismatch", "truncated", "hugevocab"):   # configs whose sizes differ from the weights, cut weights
        (root / name).mkdir()
        for f in (root / "runs" / "ebt" / "checkpoint").iterdir():
            (root / name / f.name).write_bytes(f.read_bytes())
    config = json.loads((root / "mismatch" / "config.json").read_text())
    config["config"]["model"]["dim"] = 64
    (root / "mismatch" / "config.json").write_text(json.dumps(config))
    config["config"]["model"]["vocab_size"] = 10**12
    (root / "hugevocab" / "config.json").write_text(json.dumps(config))
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return root


def snapshot(root: Path) -> dict:
    """Every file's size and modification time and every folder's name (a run folder's .lock file may appear:
    it holds no data and locks nothing once its process has gone)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if p.name != ".lock"}


T, E = "train", "eval"
ROWS = [  # (argv, words in the message, exit code)
    ([T, *TEXT, "--train.steps=-1"], "train.steps must be >= 1", 2),
    ([T, *TEXT, "--think.alpha=0"], "think.alpha must be a finite number > 0", 2),
    ([T, *TEXT, "--think.alpha=inf"], "think.alpha='inf' is not a finite number", 2),
    ([T, *TEXT, "--optim.lr=nan"], "optim.lr='nan' is not a finite number", 2),
    ([T, *TEXT, "--model.heads=3"], "does not divide", 2),
    ([T, *TEXT, "--optim.lrr=1"], "did you mean 'lr'", 2),
    ([T, *TEXT, "--data", "/nonexistent/x.txt", "--out", "o"], "does not exist", 2),
    ([T, "--preset", "nope"], "unknown preset", 2),
    ([T, *TEXT, "--train.device=tpu"], "train.device='tpu' is not known", 2),
    ([T, *TEXT, "--train.threads=-2"], "train.threads must be >= 0", 2),
    ([T, *TEXT, "--data", "bad.bin", "--out", "o"], "is not valid utf-8 (byte 16", 2),
    ([T, *TEXT, "--data.errors=ignore"], "use strict or replace", 2),
    ([T, *TEXT, "--data.encoding=klingon"], "is not a known encoding", 2),
    ([T, *TEXT, "--think.init_std=inf"], "think.init_std='inf' is not a finite number", 2),
    ([T, *TEXT, "--out", "afile"], "is a file", 2),
    ([T, *TEXT, "--out", "notrun", "--overwrite"], "has no .ebt-run marker", 2),
    ([T, *TEXT, "--out", ".", "--overwrite"], "it is the working directory", 2),
    ([T, *TEXT, "--out", "..", "--overwrite"], "it is the working directory or one of its parents", 2),
    ([T, *TEXT, "--out", "runs/ebt"], "already exists: pass --resume", 2),
    ([T, *TEXT, "--out", "empty", "--resume"], "has no checkpoint to resume from", 2),
    ([T, *TEXT, "--out", "nowhere", "--resume"], "does not exist; drop --resume", 2),
    ([T, "--out", "runs/ebt", "--resume", "--model.heads=4"], "changes model.heads=4 (saved 2)", 2),
    ([T, *TEXT, "--out", "runs/ebt", "--resume", "--preset", "lm-tiny-s2"], "--resume keeps the run's saved config", 2),
    ([T, "--out", "runs/ebt", "--resume", "--train.steps=1"], "is below the run's 2", 2),
    ([T, "--out", "planted/trainer", "--resume"], "without running code", 2),
    ([T, "--out", "planted/state", "--resume"], "cannot read the trainer state", 2),
    ([T, "--out", "planted/tensors", "--resume"], "cannot read the trainer state", 2),
    ([T, "--out", "planted/layout", "--resume"], "'optimizer' is missing", 2),
    ([T, "--out", "runs/ebt", "--resume", "--train.batch_size=2"], "would change the global batch from 4", 2),
    ([T, *TEXT, "--out", "linked"], "holds a symbolic link '.lock'", 2),
    ([T, *TEXT, "--out", "nest", "--overwrite"], "it holds another run folder", 2),
    ([T, "--config", "payload.yaml"], "is not valid YAML", 2),
    ([T, *TEXT, "--model.dim=400000", "--model.heads=2", "--out", "o"], "GiB are free", 2),
    ([T, "--config", "missing.yaml"], "does not exist", 2),
    ([T, "--config", "bad.yaml"], "is not valid YAML", 2),
    ([T, *TEXT, "--train.steps=abc"], "not a valid int", 2),
    ([T, *TEXT, "--model.conditioning=film"], "is not known", 2),
    ([T, *TEXT, "--dist.strategy=zero"], "dist.strategy='zero' is not known", 2),
    ([T, *TEXT, "--foo"], "unrecognised argument '--foo'", 2),
    ([T, *TEXT, "--train.out_dir="], "train.out_dir is empty", 2),
    ([T, *TEXT, "--data.tokenizer=notatok.json"], "is not a Hugging Face tokenizer file", 2),
    ([T, *TEXT, "--data.tokenizer=embedded-bpe-300"], "has 300 ids, more than model.vocab_size=256", 2),
    ([T, *TEXT, "--data", "shards-damaged", "--out", "o"], "is damaged (unreadable index.json", 2),
    ([T, *TEXT, "--data", "shards-bpe", "--data.tokenizer=bytes", "--out", "o"], "were made with the tokenizer", 2),
    ([T, *TEXT, "--model.vocab_size=-1"], "model.vocab_size must be >= 1 (or 0", 2),
    (["data", "prepare", "norecs.jsonl", "--out", "o"], "has no field 'text'", 2),
    (["data", "prepare", "emptycorpus", "--out", "o"], "hold no text", 2),
    (["data", "prepare", "good.txt", "--tokenizer", "notatok.json", "--out", "o"], "not a Hugging Face tokenizer", 2),
    (["data", "prepare", "good.txt", "--out", "shards-bpe"], "holds shards of another tokenizer", 2),
    (["data", "prepare", "good.txt", "--out", "runs/ebt"], "exists and is not a shard folder", 2),
    (["data", "prepare", "bad.bin", "--out", "o"], "unsupported file type '.bin'", 2),
    (["data", "prepare", "good.txt", "--out", "o", "--val-fraction", "0"], "--val-fraction must be in (0, 1)", 2),
    (["tokenizer", "train", "--vocab", "100", "--out", "o"], "at least 258", 2),
    (["tokenizer", "train", "--data", "/nonexistent", "--vocab", "300", "--out", "o"], "does not exist", 2),
    (["tokenizer", "train", "--data", "norecs.jsonl", "--vocab", "300", "--out", "o"], "has no field 'text'", 2),
    (["tokenizer", "train", "--data", "good.txt", "--vocab", "300", "--out", "runs"], "already exists", 2),
    (["generate", "/nonexistent", "--prompt", "x"], "does not exist", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--temperature", "nan"], "temperature must be a finite number", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--temperature", "-1"], "temperature must be a finite number", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--top-p", "0"], "top-p must be in (0, 1]", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--max-new", "-1"], "max new tokens must be >= 0", 2),
    (["generate", "runs/ebt", "--prompt", ""], "the prompt is empty", 2),
    (["generate", "runs/ebt", "--prompt", "caf\udce9"], "not valid UTF-8", 2),
    (["generate", "runs/ebt", "--prompt", "x" * 40], "more than the model's context", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--steps", "0"], "thinking steps must be >= 1", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--samples", "0"], "samples must be >= 1", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--alpha", "inf"], "alpha must be a finite number > 0", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--langevin", "-1"], "Langevin noise must be", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--init-scale", "0"], "init scale must be a finite number > 0", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--entropy-weight", "-2"], "entropy weight must be", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--samples", "1000000000"], "GiB are free", 2),
    (["generate", "runs/tpp", "--prompt", "x", "--steps", "2"], "need an EBT checkpoint", 2),
    (["generate", "runs/img-ebt", "--prompt", "x"], "holds a denoise model", 2),
    (["generate", "runs/ebt"], "needs --prompt TEXT", 2),
    (["generate", "runs/vid"], "needs --out FILE.gif", 2),
    (["generate", "runs/vid", "--out", "v.png"], "name a .gif file", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--context", "9"], "must be between 1 and the model's trained context of 4", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--input", "short.gif", "--context", "3"], "fewer than --context 3", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--input", "broken.mp4"], "cannot read video", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--frames", "0"], "--frames must be >= 1", 2),
    (["generate", "planted/weights", "--prompt", "x"], "cannot read weights", 2),
    (["generate", "planted/config", "--prompt", "x"], "is unreadable", 2),
    ([E, "empty", "--json"], "not an ebt checkpoint folder", 2),
    ([E, "runs/ebt", "--windows", "0"], "--windows must be >= 1", 2),
    ([E, "runs/ebt", "--batch-size", "0"], "--batch-size must be >= 1", 2),
    ([E, "runs/ebt", "--data", "/nonexistent"], "does not exist", 2),
    ([E, "text", "runs/ebt", "--data", "bad.bin"], "is not valid utf-8", 2),
    ([E, "runs/ebt", "--data", "shards-bpe"], "were made with the tokenizer 'embedded-bpe-300'", 2),
    ([E, "thinking", "--ebt", "runs/tpp", "--out", "o"], "holds a transformer model, but this command needs ebt", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "runs/ebt"], "already exists and is not empty", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "afile"], "is a file", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "o", "--ood", "noequals"], "write NAME=PATH", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "o", "--diagnostics", "--samples", "1"], "give at least 2", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "o", "--ood", "x=/nonexistent"], "does not exist", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "o", "--windows", "0"], "--windows must be >= 1", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "nope"], "is not a known task", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "gsm8k=norecs.jsonl"], "line 1: no 'question' field", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "lambada=emptycorpus/a.txt"], "has no lambada items", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "bigbench=bad.yaml"], "is not JSON", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "squad=bad.bin"], "is not UTF-8 text", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "arc=/nonexistent"], "does not exist", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "matrixshapes"], "run `ebt data get bigbench` once", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--task", "csv=good.txt"], "is not a file format", 2),
    ([E, "downstream", "runs/ebt", "--out", "runs/ebt"], "already exists and is not empty", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--seeds", ""], "--seeds is empty", 2),
    ([E, "downstream", "runs/ebt", "--out", "o", "--stride", "0"], "--stride must be >= 1", 2),
    ([E, "downstream", "empty", "--out", "o"], "not an ebt checkpoint folder", 2),
    ([E, "downstream", "--merge", "good.txt", "--out", "o"], "is not a downstream.json", 2),
    ([E, "downstream", "--out", "o"], "give checkpoints to evaluate, or --merge", 2),
    (["data", "get", "bigbench", "--from", "/nonexistent.tar.gz"], "does not exist", 2),
    (["data", "get", "bigbench", "--from", "bad.bin"], "is not a readable .tar.gz archive", 2),
    (["export", "runs/ebt", "notrun"], "already exists and is not empty", 2),
    (["export", "nothing/here", "o"], "nor as a model in the Hugging Face cache", 2),
    (["push", "runs/ebt", "no-slash"], "is not a Hub model name", 2),
    (["pull", "a/b/c"], "is not a Hub model name", 2),
    (["explore", "runs/tpp", "--text", "And God", "--out", "e.html"], "but this command needs ebt", 2),
    (["explore", "runs/ebt", "--text", "A", "--out", "e.html"], "needs at least two tokens", 2),
    (["explore", "runs/ebt", "--text", "And God", "--out", "good.txt"], "already exists", 2),
    (["explore", "runs/ebt", "--text", "And God", "--out", "nodir/e.html"], "its folder does not exist", 2),
    (["explore", "runs/ebt", "--text", "And God", "--out", "e.html", "--compare", "runs/ebt"],
     "but this command needs transformer", 2),
    (["train", *TEXT, "--train.loggers=tensorboard,mlflow", "--out", "o"], "'mlflow' is not a logger", 2),
    ([E, "someone/not-downloaded"], "download the Hub model once with `ebt pull someone/not-downloaded`", 2),
    ([E, "denoise", "--ebt", "runs/img-ebt", "--dit", "runs/img-dit", "--levels", ""], "--levels is empty", 2),
    ([E, "denoise", "--ebt", "runs/img-ebt", "--dit", "runs/img-dit", "--levels", "1.5"], "is outside (0, 1)", 2),
    ([E, "denoise", "--ebt", "runs/img-ebt", "--dit", "runs/img-dit", "--dit-ddim-steps", "0"], "must be >= 1", 2),
    ([E, "denoise", "--ebt", "runs/img-ebt", "--dit", "runs/img-dit", "--out", "runs/ebt"], "already exists", 2),
    ([E, "denoise", "--ebt", "runs/img-dit", "--dit", "runs/img-dit", "--out", "o"], "ebt is expected", 2),
    ([E, "denoise", "--ebt", "runs/ebt", "--dit", "runs/img-dit", "--out", "o"], "holds a text model", 2),
    (["energy", "runs/tpp", "--text", "hello"], "this command needs ebt", 2),
    (["energy", "runs/ebt", "--text", "a"], "at least two tokens", 2),
    (["energy", "runs/ebt", "--text", "hello", "--png", "missing/dir/x.png"], "its folder does not exist", 2),
    (["denoise", "runs/img-ebt", "--input", "/nonexistent", "--out", "o"], "does not exist", 2),
    (["denoise", "runs/img-ebt", "--input", "pngs", "--out", "o", "--noise", "2"], "is outside (0, 1)", 2),
    ([T, *VIDEO, "--data", "shortvids", "--out", "o"], "fewer than a clip's 5 (model.context + 1 in training", 2),
    ([T, *VIDEO, "--data", "short.gif", "--out", "o"], "cannot give a training and a held-out clip", 2),
    ([T, *VIDEO, "--data", "mixedvids", "--data.image_size=0", "--out", "o"], "videos have mixed frame sizes", 2),
    ([T, *VIDEO, "--data", "broken.mp4", "--out", "o"], "broken.mp4' (OSError", 2),
    ([T, *VIDEO, "--data", "payload.npy", "--out", "o"], "cannot read array file", 2),
    ([T, *VIDEO, "--data", "pngs/nothing.txt", "--out", "o"], "does not exist", 2),
    ([T, *VIDEO, "--video.encoder=autoencoder", "--out", "o"], "needs video.encoder_path", 2),
    ([T, *VIDEO, "--video.encoder=autoencoder", "--video.encoder_path=runs/ebt", "--out", "o"],
     "is not a frame autoencoder run", 2),
    ([T, *VIDEO, "--video.encoder=sd-vae", "--video.encoder_path=empty", "--out", "o"], "empty", 2),
    ([T, *VIDEO, "--video.start=middle"], "video.start='middle' is not known", 2),
    ([T, *VIDEO, "--video.patch=3", "--out", "o"], "is not divisible by video.patch=3", 2),
    ([T, *VIDEO, "--video.context_frames=9"], "must be <= model.context=4", 2),
    ([E, "video", "runs/ebt"], "not a video model", 2),
    ([E, "video", "runs/vid", "--context", "9"], "exceeds", 2),
    ([E, "video", "runs/vid-tpp", "--steps", "3"], "need an EBT checkpoint", 2),
    ([E, "video", "runs/vid", "--horizon", "0"], "--horizon must be >= 1", 2),
    ([E, "video", "runs/vid", "--init-scale", "2"], "apply to text EBTs", 2),
    ([E, "video", "runs/vid", "runs/vid/checkpoint"], "a checkpoint is given twice", 2),
    ([E, "video", "runs/vid", "--data", "shortvids", "--data-seed", "3"], "--data-seed regenerates", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--temperature", "0"], "--temperature applies to text", 2),
    ([E, "video", "runs/vid", "--data", "short.gif"], "has 2 frame(s) at stride 1, fewer than a clip's 7", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--context", "0"], "must be between 1 and", 2),
    (["generate", "runs/vid-tpp", "--out", "v.gif", "--samples", "2"], "EBT checkpoints only", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--samples", "1000000000000"], "GiB are free", 2),
    (["generate", "runs/ebt", "--prompt", "x", "--frames", "3"], "--frames applies to video checkpoints", 2),
    (["denoise", "runs/img-ebt", "--input", "pngs", "--out", "runs/ebt"], "already exists and is not empty", 2),
    (["denoise", "runs/img-ebt", "--input", "pngs", "--out", "o", "--steps", "0"], "--steps must be >= 1", 2),
    (["denoise", "runs/ebt", "--input", "pngs", "--out", "o"], "holds a text model", 2),
    (["denoise", "runs/img-ebt", "--input", "payload.pt", "--out", "o"], "cannot read array file", 2),
    (["denoise", "runs/img-ebt", "--input", "payload.npy", "--out", "o"], "cannot read array file", 2),
    (["denoise", "runs/img-ebt", "--input", "payload.npz", "--out", "o"], "cannot read array file", 2),
    (["convert", "/nonexistent.ckpt", "o"], "does not exist", 2),
    (["convert", "random.ckpt", "o"], "cannot read", 2),
    (["convert", "payload.ckpt", "o"], "cannot read", 2),
    (["convert", "missing_key.ckpt", "o"], "lacks the setting", 2),
    (["convert", "missing_key.ckpt", "runs"], "already exists", 2),
    (["bench", "train", "--steps", "0"], "--steps must be >= 1", 2),
    (["bench", "train", "--batch", "0"], "--batch must be >= 1", 2),
    (["bench", "train", "--warmup", "-1"], "--warmup must be >= 0", 2),
    (["bench", "train", "--device", "tpu", "--no-memory"], "device 'tpu' is not known", 2),
    (["bench", "train", "--set", "nokey", "--no-memory"], "write KEY=VALUE", 2),
    (["bench", "generate", "--prompt", "100", "--new", "100"], "exceeds --ctx", 2),
    (["experiment", "s2-ablation", "--out", "runs"], "already exists", 2),
    (["experiment", "s2-ablation", "--out", "o", "--variants", "nope"], "unknown variant", 2),
    (["experiment", "s2-ablation", "--out", "o", "--steps", "0"], "--steps must be >= 1", 2),
    (["experiment", "s2-ablation", "--out", "o", "--threads", "-1"], "--threads must be >= 0", 2),
    (["experiment", "scaling", "--out", "o", "--budget", "huge"], "unknown budget 'huge'", 2),
    (["experiment", "scaling", "--out", "o", "--axes", "data,vibes"], "unknown axis 'vibes'", 2),
    (["experiment", "scaling", "--out", "o", "--models", "rnn"], "unknown model 'rnn'", 2),
    (["experiment", "scaling", "--out", "o", "--jobs", "0"], "--jobs must be >= 1, got 0", 2),
    (["experiment", "scaling", "--out", "runs"], "is not a scaling study folder", 2),
    (["experiment", "scaling", "--out", "o", "--task", "smell"], "unknown task 'smell'", 2),
    (["presets", "extra"], "unrecognised arguments", 2),
    ([T, *TEXT, "--config", "bad.bin"], "is not UTF-8 text", 2),
    ([T, *TEXT, "--model.dim=1e400"], "model.dim='1e400' is not a valid int", 2),
    (["generate", "mismatch", "--prompt", "hi"], "do not match its config (size mismatch", 2),
    (["generate", "runs/vid", "--out", "v.gif", "--frames", "100000000"], "generate fewer --frames", 2),
    ([E, "video", "runs/vid", "--horizon", "100000000"], "use a shorter --horizon", 2),
    ([E, "video", "runs/vid", "--out", "notrun"], "already exists and is not empty", 2),
    (["energy", "runs/ebt", "--text", "hi", "--png", "keep.png"], "already exists: choose a new file", 2),
    (["energy", "runs/ebt", "--text", "hi", "--png", "good.txt"], "name a .png file", 2),
    (["tokenizer", "train", "--data", "good.txt", "--vocab", "100000000000", "--out", "tk"],
     "more than this library trains", 2),
    (["export", "truncated", "exported"], "cannot read weights", 2),
    (["export", "runs/ebt", "runs/tpp", "--overwrite"], "is a training run folder", 2),
    (["convert", "empty", "o"], "is a folder: pass the .ckpt file itself", 2),
    ([E, "downstream", "runs/img-ebt", "--out", "o"], "holds a denoise model, not a language model", 2),
    ([E, "downstream", "--merge", "nothing.json", "--out", "o"], "--merge 'nothing.json' does not exist", 2),
    (["experiment", "s2-ablation", "--out", "o", "--variants", "full,full"], "names full twice", 2),
    (["generate", "hugevocab", "--prompt", "hi"], "its config.json may be damaged", 2),
    (["bench", "train", "--dim", "400000", "--no-memory"], "use a smaller model", 2),
    ([T, *TEXT, "--data", "norecs.jsonl", "--out", "o"], "holds records, not plain text: tokenize it with `ebt data prepare", 2),
    ([T, *TEXT, "--out", "runs/ebt", "--resume", "--overwrite"], "choose one", 2),
    (["bench", "train", "--reference", "--no-memory"], "add --pair", 2),
    ([E, "thinking", "--ebt", "runs/ebt", "--out", "o", "--samples", "3"], "add --diagnostics", 2),
    (["denoise", "runs/img-ebt", "--input", "pngs", "--out", "o", "--recurse", "2"], "re-runs a DiT's DDIM chain", 2),
    ([E, "denoise", "--ebt", "runs/img-ebt", "--dit", "runs/img-dit", "--dit-ddim-steps", ","],
     "--dit-ddim-steps is empty", 2),
    ([E, "video", "runs/vid", "--overwrite"], "--overwrite applies to --out", 2),
    (["energy", "runs/ebt", "--text", "hi", "--overwrite"], "--overwrite applies to --png", 2),
    (["bench", "generate", "--pair"], "compare training steps", 2),
    ([E, "downstream", "--merge", "empty", "--out", "o"], "--merge 'empty' is a folder", 2),
]


@pytest.mark.parametrize("argv, words, code", ROWS, ids=[f"{i:02d}-{r[0][0]}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_changes_nothing(ws, capsys, monkeypatch, argv, words, code):
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    got = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("ebt: note:")]
    assert got == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    assert snapshot(ws) == before, "the command changed files on disk"
    assert not (ws / "PWNED").exists(), "a pickle payload ran"


def test_a_mistyped_option_is_one_line(capsys):
    """argparse's own errors (a missing argument, an unknown choice, a value of the wrong type) are one line naming
    the command's help, exit code 2, without the usage block."""
    for argv in (["generate"], ["train", "--model", "rnn"], ["nosuchcommand"], ["generate", "x", "--max-new", "a"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--help`" in err, err


def test_the_table_is_large_and_covers_every_command():
    from ebt.cli import command_names

    assert len(ROWS) >= 60
    assert set(command_names()) <= {argv[0] for argv, _, _ in ROWS}


def test_docs_table_lists_every_row():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    listed = [line for line in doc.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(listed) == len(ROWS), "rerun `python docs/errors_table.py`"
