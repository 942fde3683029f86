"""The text task: binds a `RunConfig` (task=text) to its data and model for the trainer, registers it, and loads
text checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

from torch import Tensor, nn

from ebt.config import RunConfig
from ebt.errors import UserError
from ebt.text.evaluate import evaluate_text
from ebt.text.models import build_lm
from ebt.text.splits import run_splits, run_tokenizer
from ebt.text.tokenizers import Tokenizer, tokenizer_from_files
from ebt.training import distributed as dist
from ebt.training.checkpoint import find_checkpoint, load_checked, read_config, saved_task
from ebt.training.registry import register_task


class TextTask:
    """Next-token prediction on packed windows of the embedded corpus, a user's text or token shards."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tokenizer = run_tokenizer(cfg)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.tokenizer.vocab_size   # saved in the run's config: the size is then fixed
        if cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise UserError(f"the tokenizer {self.tokenizer.spec!r} has {self.tokenizer.vocab_size} ids, more than "
                            f"model.vocab_size={cfg.model.vocab_size}: set model.vocab_size="
                            f"{self.tokenizer.vocab_size} (or 0, the tokenizer's size)")
        self.train_windows, self.val_windows = run_splits(cfg, self.tokenizer)

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files every checkpoint of this run carries: its tokenizer (none for bytes)."""
        return self.tokenizer.files()

    def describe(self) -> str:
        return self.cfg.model.kind

    def build_model(self) -> nn.Module:
        return build_lm(self.cfg)

    def train_batches(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensor]:
        """Batches of process `rank` of `world` from stream position `start` (samples consumed by all processes);
        the layout every task follows is `ebt.training.sharding`'s."""
        return self.train_windows.batches(batch_size, self.cfg.train.seed, start, rank, world)

    def evaluate(self, model: nn.Module, device, max_batches: int, batch_size: int, precision: str = "fp32") -> dict:
        """Held-out CE and perplexity of the trained schedule (no thinking options), `max_batches` batches per
        process."""
        res = evaluate_text(model, self.val_windows, None, max_batches * batch_size * dist.world(), batch_size,
                            device=device, precision=precision)
        return {k: res[k] for k in ("ce", "ppl", "bpb", "tokens") if k in res}


register_task("text", RunConfig, TextTask)


def load_model(path: str | Path, kind: Optional[str] = None, device: Any = "cpu") -> tuple[nn.Module, RunConfig]:
    """Rebuild the language model saved at `path` (a run or checkpoint folder); `kind` ("ebt"/"transformer")
    refuses a checkpoint of another model type."""
    model, cfg = load_checked(
        path, "text", RunConfig, build_lm, kind,
        "holds a {task} model ({found}), not a language model: use it with its task's commands (`ebt denoise`, "
        "`ebt eval denoise`, `ebt eval video`, `ebt generate`)",
        "holds a {found} model, but this command needs {kind}: pass a checkpoint of the right model type")
    return model.to(device), cfg


def load_tokenizer_of(path: str | Path) -> Tokenizer:
    """The tokenizer a text checkpoint (or run) folder carries: its tokenizer.json, or bytes (refused for a model
    whose vocabulary is not the byte tokenizer's, e.g. a converted reference checkpoint)."""
    folder = find_checkpoint(path)
    task = saved_task(folder)
    if task != "text":   # another task's config is named, not misread as a text one
        raise UserError(f"{str(folder)!r} holds a {task} model, not a language model: pass a text checkpoint")
    cfg = read_config(folder, RunConfig)[0]
    tok = tokenizer_from_files(folder)
    vocab = cfg.model.vocab_size
    if tok.vocab_size > vocab or (tok.fingerprint == "bytes" and vocab != 256):
        raise UserError(f"{str(folder)!r} has a vocabulary of {vocab} but carries no tokenizer.json that fits it: "
                        "copy the tokenizer.json it was trained with into that folder")
    return tok
