"""The text data path, measured (JSON on stdout):

- prepare:  `ebt data prepare` throughput in MB of text per second with 1 and with N worker processes (ratio), and
            tokenizing in the training loop instead (the text one lm-tiny-bpe step consumes, tokenized, as a share of
            that step's time);
- loader:   the share of a training step spent reading its batch from memory-mapped shards (lm-tiny-bpe EBT and
            Transformer++), timed interleaved with the steps in one process;
- memory:   peak resident memory of a short training run on generated shard sets of growing size (random tokens,
            `--memory-gb` GB each, written here and deleted after; never committed): flat means the corpus is not
            read into memory.

    python bench/text_data.py --json                       # all three (a few minutes on 2 cores)
    python bench/text_data.py --only memory --memory-gb 0.25,4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ebt.config import apply_overrides
from ebt.presets import get_preset
from ebt.text.corpus import embedded_corpus
from ebt.text.shards import FORMAT, VERSION, open_shards, prepare_shards
from ebt.text.tokenizers import load_tokenizer


def corpus_folder(root: Path, megabytes: int) -> Path:
    """`megabytes` files of 1 MB of the embedded corpus."""
    text = embedded_corpus()
    folder = root / "corpus"
    folder.mkdir()
    for k in range(megabytes):
        start = (k * 997_331) % (len(text) - 1_100_000)
        (folder / f"{k:03d}.txt").write_text(text[start:start + 1_000_000])
    return folder


def bench_prepare(root: Path, tokenizer: str, megabytes: int, workers: int, unit_mb: int) -> dict:
    """MB/s of `ebt data prepare` in one process (the tokenizer's own threads off, then on) and in `workers`
    processes (each single-threaded)."""
    folder = corpus_folder(root, megabytes)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    out = {"tokenizer": tokenizer, "megabytes": round(size, 1), "unit_mb": unit_mb}
    load_tokenizer(tokenizer)   # trained and cached before timing
    for label, n, threads in (("1_proc", 1, "false"), ("1_proc_tokenizer_threads", 1, "true"),
                              (f"{workers}_proc", workers, "false")):
        os.environ["TOKENIZERS_PARALLELISM"] = threads
        t = time.perf_counter()
        prepare_shards([str(folder)], tokenizer, root / f"shards-{label}", workers=n, unit_bytes=unit_mb << 20,
                       progress=False)
        out[f"mb_per_s_{label}"] = round(size / (time.perf_counter() - t), 3)
    out["process_speedup"] = round(out[f"mb_per_s_{workers}_proc"] / out["mb_per_s_1_proc"], 2)
    return out


def tiny_run(kind: str, shards: Path):
    from ebt.text.task import TextTask

    cfg = apply_overrides(get_preset("lm-tiny-bpe"), {"model.kind": kind, "data.path": str(shards),
                                                      "data.tokenizer": "auto"})
    task = TextTask(cfg)
    torch.manual_seed(0)
    return cfg, task, task.build_model()


def bench_loader(root: Path, steps: int) -> dict:
    """Batch reads from the shards vs training steps, interleaved, for both models."""
    shards = root / "shards-1_proc"
    out = {}
    for kind in ("ebt", "transformer"):
        cfg, task, model = tiny_run(kind, shards)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = task.train_batches(cfg.train.batch_size)
        load_s, step_s = [], []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(batch).loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if i >= 2:   # warm-up
                load_s.append(t1 - t0)
                step_s.append(t2 - t1)
        text = embedded_corpus()[:4 * cfg.train.batch_size * (cfg.model.context + 1)]   # ~ one step's text
        tok = task.tokenizer
        t = time.perf_counter()
        for _ in range(5):
            tok.encode(text)
        encode_s = (time.perf_counter() - t) / 5
        out[kind] = {"step_ms": round(1e3 * statistics.median(step_s), 2),
                     "load_ms": round(1e3 * statistics.median(load_s), 3),
                     "loader_share_pct": round(100 * statistics.median(load_s) / statistics.median(step_s), 3),
                     "tokenize_in_loop_share_pct": round(100 * encode_s / statistics.median(step_s), 2)}
    return out


def synthetic_shards(folder: Path, gigabytes: float, vocab: int = 4096) -> None:
    """A shard folder of 4 uint16 files holding `gigabytes` GB of random tokens (a 16 MB block repeated), with the
    BPE's tokenizer."""
    folder.mkdir(parents=True)
    tok = load_tokenizer(f"embedded-bpe-{vocab}")
    (folder / "shards").mkdir()
    per = int(gigabytes * 1e9 / 2 / 4)
    shards = []
    for k in range(4):
        name = f"shards/{k:06d}.train.bin"
        block = np.random.default_rng(k).integers(1, vocab, 1 << 23, dtype=np.uint16).tobytes()   # 16 MB
        with open(folder / name, "wb") as f:
            for start in range(0, per, 1 << 23):
                f.write(block[:2 * min(1 << 23, per - start)])
        shards.append({"file": name, "tokens": per, "documents": 0, "bytes": 0})
    val = np.random.default_rng(9).integers(1, vocab, 1 << 16, dtype=np.uint16)
    val.tofile(folder / "shards/000000.val.bin")
    for name, data in tok.files().items():
        (folder / name).write_bytes(data)
    index = {"format": FORMAT, "version": VERSION, "dtype": "uint16",
             "tokenizer": {"spec": tok.spec, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size},
             "splits": {"train": {"tokens": 4 * per, "documents": 0, "bytes": 0, "shards": shards},
                        "val": {"tokens": len(val), "documents": 0, "bytes": 0,
                                "shards": [{"file": "shards/000000.val.bin", "tokens": len(val), "documents": 0,
                                            "bytes": 0}]}}}
    (folder / "index.json").write_text(json.dumps(index))
    open_shards(folder)   # checks it


CHILD = """
import resource, sys, time
from ebt.config import apply_overrides
from ebt.presets import get_preset
from ebt.tasks import fit
cfg = apply_overrides(get_preset("lm-tiny-bpe"), {"model.kind": "transformer", "data.path": sys.argv[1],
    "data.tokenizer": "auto", "train.steps": "30", "train.eval_every": "30", "train.eval_batches": "1",
    "train.progress": "false", "train.threads": "1", "train.out_dir": sys.argv[2]})
fit(cfg)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_memory(root: Path, sizes: list[float]) -> dict:
    out = {}
    for gb in sizes:
        folder = root / f"synthetic-{gb}"
        synthetic_shards(folder, gb)
        res = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(root / f"run-{gb}")], capture_output=True,
                             text=True, check=True)
        out[f"{gb}GB"] = {"peak_rss_mb": round(float(res.stdout.strip().splitlines()[-1]), 1)}
        shutil.rmtree(folder)
    first, last = out[f"{sizes[0]}GB"]["peak_rss_mb"], out[f"{sizes[-1]}GB"]["peak_rss_mb"]
    out["rss_ratio_largest_to_smallest"] = round(last / first, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["prepare", "loader", "memory"])
    p.add_argument("--tokenizer", default="embedded-bpe-4096")
    p.add_argument("--megabytes", type=int, default=24, help="text to prepare")
    p.add_argument("--unit-mb", type=int, default=4, help="megabytes per unit of work")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per model (loader)")
    p.add_argument("--memory-gb", default="0.25,4", help="synthetic shard set sizes in GB")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="ebt-bench-data-"))
    results = {"threads": 1, "cpus": os.cpu_count()}
    try:
        if args.only in (None, "prepare", "loader"):
            results["prepare"] = bench_prepare(root, args.tokenizer, args.megabytes, args.workers, args.unit_mb)
        if args.only in (None, "loader"):
            results["loader"] = bench_loader(root, args.steps)
        if args.only in (None, "memory"):
            results["memory"] = bench_memory(root, [float(x) for x in args.memory_gb.split(",")])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
