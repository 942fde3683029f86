import os
import tempfile
from pathlib import Path

import pytest
import torch

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig
from ebt.text.models import TextEBT

ROOT = Path(__file__).resolve().parents[1]
# parity fixtures written by the reference implementation (tests/fixtures/reference/README.md); the variable points
# the parity tests at another folder of them
FIXTURES = Path(os.environ.get("EBT_PARITY_FIXTURES", ROOT / "tests" / "fixtures" / "reference"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# derived data (the embedded BPE tokenizers) is cached in a folder of the test session, never in ~/.cache; child
# processes (the CLI under torchrun, data-preparation workers) inherit it
os.environ["EBT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ebt-cache-")
# the tests never reach the Hugging Face Hub (push and pull are tested against a mocked API)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")   # W&B runs are written to disk, never sent
os.environ["WANDB_SILENT"] = "true"


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    """A model small enough for unit tests (dim 32, 2 layers), on 4 kB of the embedded corpus."""
    return RunConfig(
        model=ModelConfig(dim=32, layers=2, heads=2, context=16, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=20.0, alpha_lr_mult=60.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(steps=4, batch_size=4, eval_every=2, eval_batches=1, log_every=1,
                          out_dir=str(tmp_path / "run"), progress=False),
        data=DataConfig(max_chars=20000, val_fraction=0.1),
    )


def tiny_text_ebt(conditioning: str, dtype=torch.float64, vocab: int = 13, ctx: int = 6) -> TextEBT:
    """A seeded 2-layer, width-16 text EBT with 2 landscapes (adaln_zero's zero-initialised layers perturbed, so
    that comparisons see them)."""
    torch.manual_seed(0)
    m = TextEBT(ModelConfig(vocab_size=vocab, dim=16, layers=2, heads=2, context=ctx, conditioning=conditioning),
                ThinkConfig(landscapes=2, alpha=2.0)).to(dtype)
    if conditioning == "adaln_zero":
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def one_thread_per_module():
    """Tiny models: one thread avoids spin-waiting on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_pngs(folder, specs) -> None:
    """Random images, one PNG per (height, width, PIL mode) of `specs`."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w, mode) in enumerate(specs):
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")


def save_tiny_lms(root, context: int = 16):
    """A seeded byte-level text EBT (time_embed, 2 landscapes) and Transformer++ of width 16 saved as checkpoints
    under root: (ebt folder, transformer folder, the EBT)."""
    from ebt.text.models import TextTransformer
    from ebt.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ebt = TextEBT(ModelConfig(vocab_size=256, dim=16, layers=2, heads=2, context=context, conditioning="time_embed"),
                  ThinkConfig(landscapes=2, alpha=5.0))
    tpp_cfg = ModelConfig(vocab_size=256, dim=16, layers=2, heads=2, context=context, kind="transformer")
    return (str(save_checkpoint(root / "ebt", ebt, RunConfig(model=ebt.cfg, think=ebt.think_cfg))),
            str(save_checkpoint(root / "tpp", TextTransformer(tpp_cfg), RunConfig(model=tpp_cfg))), ebt)
