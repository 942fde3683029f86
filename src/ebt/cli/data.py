"""`ebt tokenizer train` (a byte-level BPE on your corpus), `ebt data prepare` (token shards for training) and
`ebt data get bigbench` (downstream task files from the package index)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ebt.cli.common import at_least, at_least_one
from ebt.errors import UserError
from ebt.text.corpus import embedded_corpus, plan_units
from ebt.text.downstream import bigbench
from ebt.text.downstream.items import read_items
from ebt.text.shards import prepare_shards
from ebt.text.tokenizers import HFTokenizer, train_bpe
from ebt.training.rundir import prepare_output


def tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="text files, folders, .jsonl or .parquet files, dataset folders (default: the embedded corpus)")
    p.add_argument("--field", default="text", help="the text field of JSONL / Parquet / dataset records")
    p.add_argument("--vocab", type=int, required=True, help="vocabulary size, including <|endoftext|> (id 0)")
    p.add_argument("--out", required=True, help="folder for tokenizer.json (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing tokenizer.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_tokenizer(args: argparse.Namespace) -> int:
    """Train a byte-level BPE tokenizer (Hugging Face `tokenizers`) on your corpus; writes OUT/tokenizer.json."""
    at_least_one(vocab=args.vocab)
    if args.data:
        units = plan_units(args.data, field=args.field)
        documents = (doc for unit in units for doc in unit.documents(args.field))
    else:
        documents = iter(embedded_corpus().split("\n"))
    tok = train_bpe(documents, args.vocab, progress=not args.no_progress)   # the inputs are read before --out is made
    tokenizer = HFTokenizer(tok, "trained")
    if tokenizer.vocab_size <= 257:
        raise UserError("the corpus is too small to learn any merge: pass more text")
    out = prepare_output(Path(args.out), args.overwrite)
    (out / "tokenizer.json").write_bytes(tokenizer.raw)
    print(json.dumps({"tokenizer": str(out / "tokenizer.json"), "vocab_size": tokenizer.vocab_size,
                      "fingerprint": tokenizer.fingerprint}))
    return 0


def prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="text files, folders (searched recursively), .jsonl/.ndjson, .parquet, or a Hugging Face "
                        "dataset folder saved with save_to_disk")
    p.add_argument("--tokenizer", default="bytes",
                   help="bytes, embedded-bpe-N, or a tokenizer.json (or its folder) (default: bytes)")
    p.add_argument("--out", required=True, help="shard folder (new, empty, or an unfinished one to resume)")
    p.add_argument("--field", default="text", help="the text field of JSONL / Parquet / dataset records")
    p.add_argument("--val-fraction", type=float, default=0.01, help="held-out share of every unit of work")
    p.add_argument("--workers", type=int, default=0, help="tokenizing processes (default: one per CPU core)")
    p.add_argument("--unit-mb", type=float, default=16.0, help="megabytes of input per unit of work")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def prepare(args: argparse.Namespace) -> int:
    """Tokenize a corpus into memory-mapped token shards with an index and a held-out split (resumable)."""
    at_least(0, workers=args.workers)
    if not args.unit_mb > 0:
        raise UserError(f"--unit-mb must be > 0, got {args.unit_mb}")
    index = prepare_shards(args.inputs, args.tokenizer, args.out, args.field, args.val_fraction, args.workers,
                           max(1, int(args.unit_mb * 2**20)), progress=not args.no_progress)
    print(json.dumps({"out": args.out, "tokenizer": index["tokenizer"], "dtype": index["dtype"],
                      **{split: {k: v for k, v in s.items() if k != "shards"} for split, s in index["splits"].items()}}))
    return 0


def get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["bigbench"], help="bigbench: dyck_languages, elementary_math_qa, matrixshapes "
                                                          "and the SQuAD v1.1 dev set from the bigbench 1.0.0 archive")
    p.add_argument("--from", dest="archive", metavar="FILE",
                   help="a bigbench-1.0.0.tar.gz you already have (default: download it with pip)")


def get(args: argparse.Namespace) -> int:
    """Fetch downstream task files once through pip, check them, and cache them for `ebt eval downstream`."""
    out = bigbench.get_bigbench(args.archive)
    counts = {name: len(read_items(fmt, out / f"{name}.json")) for name, (fmt, _, _) in bigbench.FILES.items()}
    print(json.dumps({"folder": str(out), "items": counts}))
    return 0
