"""Token shards: `ebt data prepare` tokenizes a corpus into flat uint16/uint32 token files (numpy-memmap layout) with
an index, and training streams windows from them without loading the corpus into memory.

A shard folder holds
    plan.json          the inputs cut into units (`ebt.text.corpus.plan_units`), the tokenizer, the split rule
    tokenizer.json     the tokenizer (absent for bytes), so the shards decode and checkpoints inherit it
    shards/NNNNNN.{train,val}.bin    one unit's tokens, documents each followed by <|endoftext|> (bytes: "\\n\\n")
    shards/NNNNNN.{train,val}.docs   int64 end offset of each document in that file
    shards/NNNNNN.json               written last: the unit is done (token, byte and document counts)
    index.json         written when every unit is done: the shards of each split with their counts
Held-out split: the last `val_fraction` of each unit's tokens, from the first document boundary at or after the cut
(inside the document when the unit has one), so validation is spread over the corpus and never overlaps training.
Units are independent: worker processes tokenize them in parallel, and an interrupted run resumes at the units
without a done file. A folder prepared with another tokenizer or other inputs is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ebt.errors import UserError
from ebt.text.corpus import UNIT_BYTES, Unit, plan_units, unit_to_dict
from ebt.text.data import PackedWindows
from ebt.text.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer, tokenizer_from_files

FORMAT, VERSION = "ebt-token-shards", 1
INDEX, PLAN, SPLITS = "index.json", "plan.json", ("train", "val")


def is_shard_folder(path) -> bool:
    return path is not None and Path(path).is_dir() and ((Path(path) / INDEX).is_file() or (Path(path) / PLAN).is_file())


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- preparing --------------------------------------------------------------------------------------------------

def cut_point(n: int, doc_ends: np.ndarray, val_fraction: float) -> int:
    """Where the held-out tail of a unit of n tokens starts: the document end nearest to n - n_val when it is within
    n_val / 2 of it (whole documents held out), else n - n_val itself (inside a document)."""
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return n
    inner = doc_ends[(doc_ends > 0) & (doc_ends < n)]
    if len(inner):
        nearest = int(inner[np.abs(inner - (n - n_val)).argmin()])
        if abs(nearest - (n - n_val)) <= n_val / 2:
            return nearest
    return n - n_val


def encode_unit(tok: Tokenizer, unit: Unit, field: str) -> tuple[list[list[int]], list[int]]:
    """The unit's documents as token ids (each followed by the separator) and their UTF-8 byte counts."""
    separator = [tok.eos_id] if tok.eos_id is not None else tok.encode("\n\n")
    docs = [d for d in unit.documents(field) if d]
    encode = getattr(tok, "encode_batch", None) or (lambda texts: [tok.encode(t) for t in texts])
    return [ids + separator for ids in encode(docs)], [len(d.encode("utf-8")) for d in docs]


_WORKER_TOKENIZER: dict[tuple[str, str], Tokenizer] = {}


def prepare_unit(out: str, fingerprint: str, number: int, unit: Unit, field: str, dtype: str,
                 val_fraction: float) -> dict:
    """Tokenize one unit into its train/val files and write its done file (in a worker process)."""
    folder = Path(out)
    if (out, fingerprint) not in _WORKER_TOKENIZER:
        _WORKER_TOKENIZER[(out, fingerprint)] = tokenizer_from_files(folder)
    docs, nbytes = encode_unit(_WORKER_TOKENIZER[(out, fingerprint)], unit, field)
    tokens = np.fromiter((i for ids in docs for i in ids), dtype=dtype, count=sum(map(len, docs)))
    ends = np.cumsum([len(ids) for ids in docs], dtype=np.int64)
    cut = cut_point(len(tokens), ends, val_fraction)
    stats = {}
    for split, (a, b) in zip(SPLITS, ((0, cut), (cut, len(tokens)))):
        name = f"shards/{number:06d}.{split}"
        in_split = (ends > a) & (ends <= b) if split == "train" else ends > a
        write_atomic(folder / f"{name}.bin", tokens[a:b].tobytes())
        write_atomic(folder / f"{name}.docs", (ends[in_split] - a).astype("<i8").tobytes())
        share = (b - a) / max(len(tokens), 1)
        stats[split] = {"file": f"{name}.bin", "tokens": int(b - a), "documents": int(in_split.sum()),
                        "bytes": int(round(sum(nbytes) * share))}
    write_atomic(folder / f"shards/{number:06d}.json", json.dumps(stats).encode())
    return stats


def _prepare_unit(args: tuple) -> dict:
    return prepare_unit(*args)


def start_folder(out: Path, plan: dict) -> None:
    """Create the shard folder, or check that an existing one holds this very plan (then it resumes)."""
    if (out / PLAN).is_file():
        try:
            old = json.loads((out / PLAN).read_text())
            old_tokenizer = old["tokenizer"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{str(out / PLAN)!r} is damaged: delete {str(out)!r} or prepare into a new --out "
                            "folder") from None
        if not any((out / "shards").glob("*.json")):
            shutil.rmtree(out / "shards", ignore_errors=True)   # nothing was finished: start again with this plan
            for stale in (out / TOKENIZER_FILE, out / INDEX):
                stale.unlink(missing_ok=True)
        elif old_tokenizer.get("fingerprint") != plan["tokenizer"]["fingerprint"]:
            raise UserError(f"{str(out)!r} holds shards of another tokenizer ({old_tokenizer.get('spec')}): shards "
                            f"of two tokenizers never mix; prepare into a new --out folder (or delete {str(out)!r})")
        elif {**old, "tokenizer": None} != {**plan, "tokenizer": None}:
            raise UserError(f"{str(out)!r} holds shards of other inputs or settings (inputs, --field or "
                            f"--val-fraction changed, or files changed size): delete {str(out)!r} to start again, "
                            "or prepare into a new --out folder")
        else:
            return
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} exists and is not a shard folder: choose a new or empty folder")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_atomic(out / PLAN, json.dumps(plan, indent=1).encode())


def prepare_shards(inputs: list[str], tokenizer: str, out: str | Path, field: str = "text",
                   val_fraction: float = 0.01, workers: int = 0, unit_bytes: int = UNIT_BYTES,
                   progress: bool = True) -> dict:
    """Tokenize `inputs` into a shard folder `out` (resuming an interrupted preparation); returns the index."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}: training needs held-out text")
    out, tok = Path(out), load_tokenizer(tokenizer)
    units = plan_units(inputs, unit_bytes, field)
    files = sorted({f for u in units for f in (getattr(u, "files", None) or [u.path])})
    if sum(os.path.getsize(f) for f in files) == 0:
        raise UserError(f"the inputs hold no text (every file is empty): pass files with text in them")
    plan = {"format": FORMAT, "version": VERSION, "dtype": token_dtype(tok.vocab_size), "field": field,
            "val_fraction": val_fraction,
            "tokenizer": {"spec": tok.spec, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size},
            "sizes": {f: os.path.getsize(f) for f in files}, "units": [unit_to_dict(u) for u in units]}
    start_folder(out, plan)
    for name, data in tok.files().items():
        write_atomic(out / name, data)
    todo = [(str(out), tok.fingerprint, k, u, field, plan["dtype"], val_fraction) for k, u in enumerate(units)
            if not (out / f"shards/{k:06d}.json").is_file()]
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="prepare", unit="unit", dynamic_ncols=True)
    try:
        if workers == 1:
            for job in todo:
                _prepare_unit(job)
                bar is not None and bar.update(1)
        else:
            import multiprocessing

            # spawn: a forked child would inherit the tokenizer's thread pool; one thread each, processes in parallel
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_prepare_unit, todo):
                    bar is not None and bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return write_index(out, plan)


def write_index(out: Path, plan: dict) -> dict:
    splits = {s: {"tokens": 0, "documents": 0, "bytes": 0, "shards": []} for s in SPLITS}
    for k in range(len(plan["units"])):
        done = json.loads((out / f"shards/{k:06d}.json").read_text())
        for s in SPLITS:
            for key in ("tokens", "documents", "bytes"):
                splits[s][key] += done[s][key]
            if done[s]["tokens"]:
                splits[s]["shards"].append(done[s])
    if splits["train"]["tokens"] == 0:
        raise UserError(f"the inputs hold no text (0 tokens in {str(out)!r}): pass files with text in them")
    index = {"format": FORMAT, "version": VERSION, "dtype": plan["dtype"], "tokenizer": plan["tokenizer"],
             "splits": splits}
    write_atomic(out / INDEX, json.dumps(index, indent=1).encode())
    return index


# --- reading ----------------------------------------------------------------------------------------------------

class TokenFile:
    """A shard's tokens on disk, read window by window at their offset (one `pread` each, ~50 µs). Not a long-lived
    memory map of the whole file: that keeps every page the loader ever touched in the process's resident memory,
    which then grows with the corpus, and mapping per read costs ~2 ms (bench/text_data.py measures both)."""

    def __init__(self, path: Path, dtype: str, length: int):
        self.path, self.dtype, self.length = path, np.dtype(dtype), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, where: slice) -> np.ndarray:
        a, b, _ = where.indices(self.length)
        if b <= a:
            return np.zeros(0, dtype=np.int64)
        return np.fromfile(self.path, dtype=self.dtype, count=b - a, offset=a * self.dtype.itemsize).astype(np.int64)


@dataclass
class ShardSet:
    """A prepared shard folder: its tokenizer and the memory-mapped token files of each split."""
    folder: Path
    index: dict
    tokenizer: Tokenizer

    def tokens(self, split: str) -> int:
        return self.index["splits"][split]["tokens"]

    def windows(self, split: str, length: int) -> PackedWindows:
        if self.tokens(split) < length:
            raise UserError(f"the {split} split of {str(self.folder)!r} has {self.tokens(split)} tokens, fewer than one "
                            f"window of {length}: prepare more data (or a larger --val-fraction) or use a smaller "
                            "model.context")
        parts = [TokenFile(self.folder / s["file"], self.index["dtype"], s["tokens"])
                 for s in self.index["splits"][split]["shards"]]
        return PackedWindows(parts, length, self.tokenizer.token_bytes())


def damaged(folder: Path, what: str) -> UserError:
    return UserError(f"the shard folder {str(folder)!r} is damaged ({what}): run `ebt data prepare` again with the "
                     "same inputs and --out (it resumes), or into a new folder")


def open_shards(folder: str | Path, tokenizer: Optional[Tokenizer] = None) -> ShardSet:
    """Open and check a shard folder; `tokenizer`, when given, must be the one the shards were made with."""
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        raise UserError(f"{str(folder)!r} is an unfinished shard folder (no {INDEX}): run `ebt data prepare` again "
                        "with the same inputs and --out to finish it")
    try:
        index = json.loads((folder / INDEX).read_text())
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise damaged(folder, f"not a {FORMAT} v{VERSION} index")
        itemsize = np.dtype(index["dtype"]).itemsize
        for split in SPLITS:
            for shard in index["splits"][split]["shards"]:
                file = folder / shard["file"]
                if not file.is_file() or file.stat().st_size != shard["tokens"] * itemsize:
                    raise damaged(folder, f"{shard['file']} is missing or has the wrong size")
        recorded = index["tokenizer"]["fingerprint"]
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise damaged(folder, f"unreadable {INDEX}: {type(exc).__name__}") from None
    own = tokenizer_from_files(folder)
    if own.fingerprint != recorded:
        raise damaged(folder, f"its {TOKENIZER_FILE or 'tokenizer'} is not the one in {INDEX}")
    if tokenizer is not None and tokenizer.fingerprint != own.fingerprint:
        raise UserError(f"the shards in {str(folder)!r} were made with the tokenizer {index['tokenizer']['spec']!r} "
                        f"({own.fingerprint}), not {tokenizer.spec!r} ({tokenizer.fingerprint}): use shards "
                        "prepared with the model's tokenizer, or train on these shards with data.tokenizer=auto")
    return ShardSet(folder, index, own)

