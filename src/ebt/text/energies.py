"""Per-token energies as uncertainty (the paper's Fig. 8): each next-token prediction's energy over the thinking
steps, for a text, as numbers, coloured terminal text or a heatmap (`ebt energy`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ebt.errors import UserError
from ebt.text.tokenizers import ByteTokenizer, Tokenizer
from ebt.text.inference import think
from ebt.thinking import ThinkOptions


def scored_ids(model, text: str, tokenizer: Tokenizer) -> list[int]:
    """The token ids of --text, each after the first scored given those before it: at least two, at most one window."""
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise UserError("--text needs at least two tokens (each token is scored given the ones before it)")
    if len(ids) - 1 > model.cfg.context:
        raise UserError(f"--text has {len(ids)} tokens, more than the model's context {model.cfg.context} + 1: "
                        "shorten it")
    return ids


def token_energies(model, text: str, opts: Optional[ThinkOptions] = None, seed: int = 0,
                   tokenizer: Optional[Tokenizer] = None) -> dict:
    """Energies of each next-token prediction for `text`: per step (steps, T) and final (T,), with the tokens
    (decoded one by one with `tokenizer`, default bytes)."""
    tok = tokenizer or ByteTokenizer()
    ids = scored_ids(model, text, tok)
    x = torch.tensor([ids[:-1]])
    res = think(model, x, opts, generator=torch.Generator().manual_seed(seed))
    tokens = [tok.decode([i]) or "\\0" for i in ids[1:]]
    return {"tokens": tokens, "final": res.final_energy[0].tolist(), "steps": res.energies[:, 0].tolist(),
            "steps_used": res.steps_used[0].tolist()}


def colour(text: str, value: float, lo: float, hi: float) -> str:
    """ANSI 256-colour background from green (low energy: confident) to red (high energy: uncertain)."""
    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    code = [46, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196][min(10, int(t * 10.999))]
    return f"\x1b[48;5;{code}m\x1b[30m{text}\x1b[0m"


def heatmap(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = torch.tensor(result["steps"] + [result["final"]])  # (steps + 1, T)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * steps.shape[1]), 0.5 * steps.shape[0] + 1.5))
    im = ax.imshow(steps.numpy(), aspect="auto", cmap="RdYlGn_r")
    ax.set_xticks(range(steps.shape[1]), [t.replace("\n", "\\n") for t in result["tokens"]], fontsize=8)
    ax.set_yticks(range(steps.shape[0]), [f"step {k}" for k in range(steps.shape[0] - 1)] + ["final"])
    ax.set_title("energy of each next-token prediction (lower = more confident)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
