"""torchrun on CPU (gloo, 2 ranks): DDP and FSDP2 gradients, loss curves and checkpoints match one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import GLOBAL_BATCH, SEED, grad_config, grad_tokens

from ebt import noise
from ebt.cli import main as cli
from ebt.text.models import build_lm
from ebt.text.task import load_model
from ebt.training.checkpoint import load_trainer_state


GRAD_RTOL = 1e-6   # the bounds, float32


LOSS_RTOL = 1e-5


HERE = Path(__file__).resolve().parent


# lm-tiny shrunk to dim 32 / 2 layers / context 16 on 4000 characters; a constant LR after warm-up, so a run stopped
# at step 5 and resumed to 10 follows the same schedule as a 10-step run
TRAIN = ["train", "--preset", "lm-tiny", "--model.dim=32", "--model.layers=2", "--model.heads=2", "--model.context=16",
         "--think.alpha=20", "--think.alpha_lr_mult=60", "--optim.warmup_steps=2", "--optim.min_lr_ratio=1",
         "--optim.alpha_min_lr_ratio=1", "--train.grad_accum=2", "--train.eval_every=5", "--train.eval_batches=2",
         "--train.log_every=1", "--train.progress=false", "--train.threads=1", "--data.max_chars=4000",
         "--data.val_fraction=0.2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, timeout: int = 150) -> None:
    """`torchrun --nproc_per_node 2 ARGS` on CPU (gloo), one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-6000:]}"


def losses(run: Path, split: str = "train", key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if r["split"] == split}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture
def one_thread():
    """The reference runs with the workers' single intra-op thread: on these tiny EBTs the descent amplifies
    round-off, and a different thread count alone moves float32 gradients by ~7e-6."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gradients_match_one_process(tmp_path, one_thread):
    out = tmp_path / "grads.pt"
    torchrun([str(HERE / "dist_worker.py"), str(out)], tmp_path)
    got = torch.load(out)

    torch.manual_seed(SEED)
    model = build_lm(grad_config())
    with noise.per_sample(SEED, range(GLOBAL_BATCH), key=0):
        model(grad_tokens()).loss.backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    for strategy in ("ddp", "fsdp2"):
        assert set(got[strategy]) == set(ref), strategy
        errors = {n: ((got[strategy][n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in ref.items()}
        worst = max(errors, key=errors.get)
        print(f"{strategy}: max relative gradient error {errors[worst]:.2e} ({worst})")
        assert errors[worst] <= GRAD_RTOL, (strategy, worst, errors[worst])
    assert got["fsdp2_bf16_finite"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 4 (10 steps); 2 DDP ranks with batch 2 (10 steps, `torchrun -m ebt`); 2 FSDP2 ranks with
    batch 2 (5 steps, the `ebt` console script under torchrun), resumed on one process with batch 4 to step 10."""
    root = tmp_path_factory.mktemp("dist")
    threads = torch.get_num_threads()  # --train.threads=1 below sets it for this process too
    assert cli([*TRAIN, "--train.steps=10", "--train.batch_size=4", "--out", str(root / "one")]) == 0
    torchrun(["-m", "ebt", *TRAIN, "--train.steps=10", "--train.batch_size=2", "--dist.strategy=ddp",
              "--out", str(root / "ddp")], root)
    script = Path(sys.executable).with_name("ebt")
    launcher = [str(script)] if script.is_file() else ["-m", "ebt"]
    torchrun([*launcher, *TRAIN, "--train.steps=5", "--train.batch_size=2", "--dist.strategy=fsdp2",
              "--out", str(root / "fsdp2")], root)
    assert cli([*TRAIN, "--resume", "--train.steps=10", "--train.batch_size=4", "--out", str(root / "fsdp2")]) == 0
    torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_loss_curve_matches_one_process(runs, strategy):
    ref, got = losses(runs / "one"), losses(runs / strategy)
    assert sorted(got) == list(range(1, 11)) and sorted(ref) == list(range(1, 11))
    errors = [rel(got[s], ref[s]) for s in range(1, 11)]
    print(f"{strategy}: max relative loss error over 10 steps {max(errors):.2e}")
    assert max(errors) <= LOSS_RTOL, errors
    # validation is split across ranks and still agrees (per-window noise)
    val_ref, val = losses(runs / "one", "val", "ce"), losses(runs / strategy, "val", "ce")
    assert all(rel(val[s], val_ref[s]) <= LOSS_RTOL for s in (5, 10)), (val, val_ref)


def test_two_rank_checkpoints_load_in_one_process(runs):
    """The FSDP2 run's step-5 checkpoint (2 ranks) was resumed on one process above; the DDP run's (2 ranks) loads
    for inference, whole tensors in safetensors, and records both ranks' generators and the data position."""
    model, cfg = load_model(runs / "ddp" / "checkpoint")
    assert cfg.model.dim == 32 and cfg.dist.strategy == "ddp"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = load_trainer_state(runs / "ddp" / "checkpoint")
    assert state["world"] == 2 and len(state["torch_rng"]) == 2 and state["samples"] == 10 * 2 * 4
    resumed = json.loads((runs / "fsdp2" / "checkpoint" / "config.json").read_text())
    assert resumed["meta"]["step"] == 10 and resumed["config"]["dist"]["strategy"] == "fsdp2"
