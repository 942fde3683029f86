"""Tokenizers behind one small interface: UTF-8 bytes (the default) and any Hugging Face `tokenizer.json`.

Both give `encode`, `decode`, `vocab_size`, `eos_id`, `token_bytes` (how many bytes of text each id stands for,
for bits per byte), `fingerprint` (what shards and checkpoints compare) and `files` (what a checkpoint or a shard
folder stores to rebuild it). `load_tokenizer(spec)` turns a config's `data.tokenizer` into one:
    bytes                 UTF-8 bytes, vocabulary 256
    embedded-bpe-N        a byte-level BPE of N tokens trained on the embedded corpus at first use, then cached
    PATH                  a `tokenizer.json` (GPT-NeoX-20B, Llama, or one from `ebt tokenizer train`) or its folder
Id 0 is never a training target (the reference's pad = eos = 0): a BPE trained here puts <|endoftext|> at id 0, and
a tokenizer whose id 0 is an ordinary token (GPT-2's and Llama 3's "!") has every id shifted up by one, id 0 left
free as padding.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor

from ebt.errors import Note, UserError

TOKENIZER_FILE = "tokenizer.json"
EOS = "<|endoftext|>"
EMBEDDED_BPE = re.compile(r"embedded-bpe-(\d+)")
MAX_BPE_VOCAB = 2**20
"""The largest BPE vocabulary trained here (4x the largest in common use)."""
BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256). Id 0 (NUL) doubles as padding and is ignored by the loss."""

    vocab_size = 256
    eos_id: Optional[int] = None
    fingerprint = "bytes"
    spec = "bytes"

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as exc:   # e.g. undecodable bytes on the command line (surrogate escapes)
            raise UserError(f"the text is not valid UTF-8 (character {exc.start}): pass UTF-8 text") from None

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) != 0).decode("utf-8", errors="replace")

    def token_bytes(self) -> Tensor:
        return torch.ones(256, dtype=torch.long)

    def files(self) -> dict[str, bytes]:
        return {}


def byte_alphabet() -> dict[str, int]:
    """The printable character that stands for each byte in byte-level BPE vocabularies (GPT-2's convention):
    printable Latin-1 bytes stand for themselves, the other bytes for the characters from U+0100 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + k): b for k, b in enumerate(others)})
    return mapping


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (any tokenizer.json); `raw` is the file's bytes (kept as they are, so the
    fingerprint does not depend on the library's version)."""

    def __init__(self, tokenizer, spec: str, raw: Optional[bytes] = None):
        self.tok, self.spec = tokenizer, spec
        self.raw = raw if raw is not None else tokenizer.to_str().encode("utf-8")
        self.fingerprint = "sha256:" + hashlib.sha256(self.raw).hexdigest()[:16]
        setup = json.loads(tokenizer.to_str())
        self.byte_level = "ByteLevel" in json.dumps(setup.get("pre_tokenizer"))   # no pre-token crosses a newline
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        first = tokenizer.id_to_token(0)
        self.offset = 0 if first is None or first in specials else 1   # keep id 0 free when it is a real token
        self.vocab_size = max(vocab.values()) + 1 + self.offset
        eos = next((tokenizer.token_to_id(t) for t in (EOS, "<|end_of_text|>", "</s>", "<eos>")
                    if tokenizer.token_to_id(t) is not None), None)
        self.eos_id = None if eos is None else eos + self.offset

    @classmethod
    def from_file(cls, path: str | Path) -> "HFTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"tokenizer {str(path)!r} does not exist: pass bytes, embedded-bpe-N, a tokenizer.json "
                            "or a folder holding one")
        try:
            return cls(Tokenizer.from_file(str(file)), str(path), file.read_bytes())
        except Exception as exc:   # tokenizers raises a bare Exception for every parse error
            raise UserError(f"{str(file)!r} is not a Hugging Face tokenizer file ({str(exc).splitlines()[0][:80]}): "
                            "pass a tokenizer.json written by `tokenizers` or `ebt tokenizer train`") from None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without added special tokens (BOS). With a byte-level pre-tokenizer long texts
        are encoded in pieces cut after a newline that precedes a non-space character, where no pre-token runs
        across (the `tokenizers` library is much slower on one long string than on many short ones)."""
        pieces = [split_long(t) if self.byte_level else [t] for t in texts]
        encoded = iter(e.ids for e in self.tok.encode_batch([p for ps in pieces for p in ps], add_special_tokens=False))
        return [[i + self.offset for _ in ps for i in next(encoded)] for ps in pieces]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) - self.offset for i in ids if int(i) >= self.offset])

    def token_bytes(self) -> Tensor:
        """Bytes of text per id: each character of a byte-level token is one byte (GPT-2's alphabet); a byte-fallback
        token <0xNN> is one byte; otherwise the token's UTF-8 length with SentencePiece's "▁" as one space; special
        tokens count 0."""
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        alphabet = byte_alphabet()
        out = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, i in self.tok.get_vocab(with_added_tokens=True).items():
            if token in special:
                continue
            if self.byte_level and all(c in alphabet for c in token):
                out[i + self.offset] = len(token)
            elif BYTE_FALLBACK.fullmatch(token):
                out[i + self.offset] = 1
            else:
                out[i + self.offset] = len(token.replace("\u2581", " ").encode("utf-8"))
        return out

    def files(self) -> dict[str, bytes]:
        return {TOKENIZER_FILE: self.raw}


Tokenizer = ByteTokenizer | HFTokenizer

PIECE_CUT = re.compile(r"\n(?=\S)")


def split_long(text: str, size: int = 1 << 16) -> list[str]:
    """`text` in pieces of about `size` characters, each cut after a newline that a non-space character follows."""
    pieces, i = [], 0
    while len(text) - i > size:
        cut = PIECE_CUT.search(text, i + size)
        if cut is None:
            break
        pieces.append(text[i:cut.end()])
        i = cut.end()
    return pieces + [text[i:]]


def cache_dir() -> Path:
    """Where derived data (the embedded BPEs) is cached: $EBT_CACHE_DIR, else $XDG_CACHE_HOME/ebt, else ~/.cache/ebt."""
    if os.environ.get("EBT_CACHE_DIR"):
        return Path(os.environ["EBT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ebt"


def train_bpe(documents: Iterable[str], vocab_size: int, count: Optional[int] = None, progress: bool = True):
    """A byte-level BPE of `vocab_size` ids (<|endoftext|> = 0, then the 256 byte symbols, then merges) trained on
    `documents` with Hugging Face `tokenizers`; returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise UserError(f"a byte-level BPE needs a vocabulary of at least 258 (256 bytes, <|endoftext|>, one merge), "
                        f"got {vocab_size}: pass a larger --vocab")
    if vocab_size > MAX_BPE_VOCAB:   # the trainer reserves room for the whole vocabulary up front
        raise UserError(f"a vocabulary of {vocab_size:,} is more than this library trains (at most "
                        f"{MAX_BPE_VOCAB:,}): pass a smaller vocabulary size")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer, length=count)
    return tok


def embedded_bpe(vocab_size: int, progress: bool = False) -> HFTokenizer:
    """The byte-level BPE of `vocab_size` tokens trained on the embedded corpus (a few seconds), cached."""
    from ebt.text.corpus import embedded_corpus

    spec = f"embedded-bpe-{vocab_size}"
    file = cache_dir() / "tokenizers" / spec / TOKENIZER_FILE
    if file.is_file():
        cached = HFTokenizer.from_file(file)
        return HFTokenizer(cached.tok, spec, cached.raw)
    tok = HFTokenizer(train_bpe(embedded_corpus().split("\n"), vocab_size, progress=progress), spec)
    try:   # write-then-rename: processes that train it at the same time write the same file
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tokenizer.")
        with os.fdopen(fd, "wb") as f:
            f.write(tok.raw)
        os.replace(tmp, file)
    except OSError as exc:
        warnings.warn(f"cannot cache the {spec} tokenizer in {str(file.parent)!r} ({exc.strerror}); it will be "
                      "trained again next time (set EBT_CACHE_DIR to a writable folder)", Note, stacklevel=2)
    return tok


def load_tokenizer(spec: str) -> Tokenizer:
    """`bytes`, `embedded-bpe-N`, or a path to a tokenizer.json (or a folder holding one)."""
    if spec == "bytes":
        return ByteTokenizer()
    match = EMBEDDED_BPE.fullmatch(spec)
    if match:
        return embedded_bpe(int(match.group(1)))
    return HFTokenizer.from_file(spec)


def tokenizer_from_files(folder: Path) -> Tokenizer:
    """The tokenizer a checkpoint or shard folder stores: its tokenizer.json, or bytes when it has none."""
    return HFTokenizer.from_file(folder / TOKENIZER_FILE) if (folder / TOKENIZER_FILE).is_file() else ByteTokenizer()
