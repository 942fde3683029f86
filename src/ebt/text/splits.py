"""The tokenizer and the training / held-out windows of a text run, from its `data` section: the embedded corpus
or a user's text (tokenized in memory, the tail held out), or a token shard folder (memory-mapped, its own
held-out split)."""
from __future__ import annotations

from typing import Optional

from ebt.errors import UserError
from ebt.text.data import PackedWindows, load_text, split_stream, token_stream
from ebt.text.shards import is_shard_folder, open_shards
from ebt.text.tokenizers import Tokenizer, load_tokenizer


def run_tokenizer(cfg) -> Tokenizer:
    """data.tokenizer, where `auto` is a shard folder's own tokenizer, or bytes for text."""
    if is_shard_folder(cfg.data.path):
        given = None if cfg.data.tokenizer == "auto" else load_tokenizer(cfg.data.tokenizer)
        return open_shards(cfg.data.path, given).tokenizer
    return load_tokenizer("bytes" if cfg.data.tokenizer == "auto" else cfg.data.tokenizer)


def run_splits(cfg, tokenizer: Tokenizer) -> tuple[PackedWindows, PackedWindows]:
    """(training, held-out) windows of context+1 tokens."""
    length, data = cfg.model.context + 1, cfg.data
    if is_shard_folder(data.path):
        shards = open_shards(data.path, tokenizer)
        return shards.windows("train", length), shards.windows("val", length)
    tokens = token_stream(load_text(data.path, data.max_chars, data.errors, data.encoding), tokenizer)
    return split_stream(tokens, data.val_fraction, length, tokenizer.token_bytes())


def windows_for(text: str, context: int, tokenizer: Tokenizer) -> PackedWindows:
    """All of `text` as held-out windows."""
    return PackedWindows(token_stream(text, tokenizer), context + 1, tokenizer.token_bytes())


def heldout_windows(cfg, tokenizer: Tokenizer, data_path: Optional[str] = None) -> PackedWindows:
    """The run's own held-out split (its shards' val split, or the tail of its text), or, given `data_path`, a
    shard folder's held-out split or all of a text file or folder."""
    if data_path is None:
        return run_splits(cfg, tokenizer)[1]
    if is_shard_folder(data_path):
        return open_shards(data_path, tokenizer).windows("val", cfg.model.context + 1)
    text = load_text(data_path, errors=cfg.data.errors, encoding=cfg.data.encoding)
    if len(text) > 50_000_000:
        raise UserError(f"{data_path!r} is {len(text) / 1e6:.0f} MB of text: prepare it as shards with "
                        "`ebt data prepare` and evaluate on those")
    return windows_for(text, cfg.model.context, tokenizer)
