"""One training loop for every model: AdamW groups, warm-up + cosine (each group with its own floor), clipping,
accumulation, bf16 autocast, validation, JSONL + TensorBoard metrics, tqdm, atomic checkpoints and exact resume.

A *task* (`ebt.training.registry.Task`) supplies the data and the model; the loop itself knows no modality.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ebt import noise
from ebt.config import save_yaml, to_dict
from ebt.errors import Diverged, NonFinite, UserError
from ebt.training import distributed as dist
from ebt.training.checkpoint import (check_same_files, load_checked_weights, load_trainer_state, read_config,
                                     recover, save_checkpoint)
from ebt.training.devices import autocast, check_fits, meta_size, resolve_device
from ebt.training.metrics import MetricsLog
from ebt.training.optim import build_optimizer
from ebt.training.registry import Task, task_for
from ebt.training.resume import check_resume
from ebt.training.rundir import RunLock, prepare_run, truncate_metrics
from ebt.training.sharding import rank_positions

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    val: dict
    seconds: float


def train(cfg: Any, resume: bool = False, overwrite: bool = False, task: Optional[Task] = None,
          stop_at: Optional[int] = None) -> TrainResult:
    """Train `cfg` (on `task`, default: the registered task of `cfg.task`) and return the final validation metrics.

    `stop_at` ends the run early at that step (with a checkpoint) while keeping the schedule of train.steps, so a
    later `resume=True` continues exactly as if the run had not stopped. A resumed run keeps its saved config
    (`resume.RESUMABLE` lists what may change). A non-finite loss or gradient norm stops the run with `Diverged`
    (exit code 3) and keeps the last checkpoint, unless train.skip_nonfinite allows skipping that many steps.
    """
    t = cfg.train
    dcfg = dist.dist_config(cfg)
    dist.setup(dcfg.backend, t.device)
    out_dir = Path(t.out_dir)
    device = resolve_device(t.device) if not dist.is_distributed() else dist.device_for_rank(t.device)
    if device.type == "cpu":
        # thinking sharpens the candidates' softmax until many probabilities underflow into denormal floats, which
        # x86 CPUs process ~100x slower (a whole EBT step took 1.5x longer); flushing values below 1e-38 to zero
        # changes no result that matters (docs/performance.md)
        torch.set_flush_denormal(True)
    if t.threads:
        torch.set_num_threads(t.threads)
    task = task or task_for(cfg)   # the data and the model are checked before the run folder is touched
    check_model_fits(task.build_model, device)
    torch.manual_seed(t.seed)  # the same initial weights on every rank (FSDP2 shards what each rank built)
    random.seed(t.seed)
    model = task.build_model().to(device)
    lock = open_run(out_dir, cfg, resume, overwrite)
    try:
        return _run(cfg, task, model, out_dir, device, resume, stop_at)
    finally:
        if lock is not None:
            lock.release()


def check_model_fits(build_model: Callable[[], nn.Module], device: torch.device) -> None:
    """Count the parameters of the model `build_model()` makes on the meta device (nothing allocated) and refuse a
    model whose weights, gradients and AdamW moments (16 bytes per parameter) cannot fit: in the machine's memory,
    for every process of this machine, and on the GPU."""
    n = meta_size(build_model)
    what, fix = f"a model of {n / 1e6:,.0f}M parameters", "use a smaller model (model.dim, model.layers)"
    check_fits(16.0 * n * (dist.world() if device.type == "cpu" else 1), torch.device("cpu"), what, fix)
    if device.type == "cuda":
        check_fits(16.0 * n, device, what, fix)


def open_run(out_dir: Path, cfg: Any, resume: bool, overwrite: bool) -> Optional[RunLock]:
    """Rank 0 checks and locks the run folder (and, resuming, finishes an interrupted checkpoint swap); the other
    ranks wait for it."""
    lock = None
    if dist.is_main():
        lock = prepare_run(out_dir, resume, overwrite)
        try:
            if resume:
                recover(out_dir / CHECKPOINT_DIR)
        except BaseException:
            lock.release()
            raise
    dist.barrier()
    return lock


def _run(cfg: Any, task: Task, model: nn.Module, out_dir: Path, device: torch.device, resume: bool,
         stop_at: Optional[int]) -> TrainResult:
    t, dcfg = cfg.train, dist.dist_config(cfg)
    step, samples, state = 0, 0, None
    if resume:
        state = load_trainer_state(out_dir / CHECKPOINT_DIR)
        if state is None:
            raise UserError(f"--resume: {str(out_dir / CHECKPOINT_DIR)!r} has no trainer state (it was not written "
                            "by `ebt train`): start a new run from it instead")
        check_resume(cfg, read_config(out_dir / CHECKPOINT_DIR)[0], state.get("world", 1), dist.world())
        check_same_files(out_dir / CHECKPOINT_DIR, task.checkpoint_files())
        load_checked_weights(model, out_dir / CHECKPOINT_DIR)  # whole weights, before any sharding
    wrapped = dist.wrap(model, cfg)
    opt, sched = build_optimizer(model, cfg.optim, t.steps)  # after wrapping: FSDP2 replaces the parameters
    if state is not None:
        dist.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        # data position in samples, so a different world size continues at the same place in the stream
        samples = state.get("samples", step * t.grad_accum * t.batch_size * len(state["torch_rng"]))
    seed_rngs(state, t.seed, step)
    # fsdp2 bf16 parameters meet float32 candidates: autocast does the casting in the matmuls
    precision = "bf16" if dcfg.param_dtype == "bf16" and dist.is_fsdp(wrapped) else t.precision
    if dist.is_main():
        save_yaml(cfg, out_dir / "config.yaml")
        truncate_metrics(out_dir, step)   # a resumed run logs the steps after its checkpoint again
    log = MetricsLog(out_dir, dist.is_main(), purge_step=step if resume else None, loggers=t.loggers,
                     config=to_dict(cfg))
    micro = t.batch_size
    batches = task.train_batches(micro, start=samples, rank=dist.rank(), world=dist.world())
    bar = None
    if t.progress and dist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, initial=step, desc=f"train {task.describe()}", dynamic_ncols=True)
    start_time, val, saved, skipped = time.time(), {}, (step if resume else None), 0
    logged_time, logged_samples = start_time, samples   # throughput since the last log line
    try:
        last_step = min(t.steps, stop_at) if stop_at else t.steps
        while step < last_step:
            model.train()
            opt.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            bad = None   # what was not finite in this step
            for m in range(t.grad_accum):
                batch = next(batches).to(device)
                start, samples = samples, samples + micro * dist.world()   # consumed even when skipped
                if bad is not None:
                    continue
                try:
                    with dist.no_sync_unless(wrapped, m == t.grad_accum - 1), dist.gathered(wrapped), \
                            sample_noise(dcfg.invariant_noise, t.seed, start, micro), autocast(device, precision):
                        out = wrapped(batch)
                        # with System 1's stepwise gradients (think.stepwise_grad, the default) the forward has
                        # already taken each thinking step's parameter gradient and freed its graph; this backward
                        # hands those gradients to the parameters and back-propagates the context stream once
                        # (text/stepwise.py)
                        (out.loss / t.grad_accum).backward()
                except NonFinite:   # (under torchrun every rank meets it: the weights are the same)
                    bad = "energy gradient of a thinking step is not finite"
                    continue
                for k, v in {"loss": out.loss.item(), **out.metrics}.items():
                    totals[k] = totals.get(k, 0.0) + float(v) / t.grad_accum
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = dist.as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            totals = dist.all_reduce_mean(totals) if bad is None else {"loss": float("nan")}
            bad = bad or next((f"{k} is {v}" for k, v in (("loss", totals["loss"]), ("gradient norm", grad_norm))
                               if not math.isfinite(v)), None)
            if bad is not None:
                skipped += 1
                if skipped > t.skip_nonfinite:
                    raise Diverged(_diverged_message(step + 1, bad, saved, out_dir))
                opt.zero_grad(set_to_none=True)   # skip this update (train.skip_nonfinite)
            else:
                opt.step()
            sched.step()
            step += 1
            if step % t.log_every == 0 or step == t.steps:
                now = time.time()
                log.log(step, "train", {**totals, "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                                        "samples": samples, "skipped": skipped,
                                        "samples_per_s": (samples - logged_samples) / max(now - logged_time, 1e-9)})
                logged_time, logged_samples = now, samples
                thought = getattr(out, "thought", None) if bad is None else None   # the last micro-batch's descent
                if thought is not None:
                    log.histograms(step, "train", {f"energy_step{k + 1}": e for k, e in enumerate(thought.energies)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss']:.3f}", ce=f"{totals.get('final_ce', 0):.3f}")
            if step % t.eval_every == 0 or step == t.steps:
                with dist.gathered(model), _diverges_at(step, saved, out_dir):
                    val = task.evaluate(model, device, t.eval_batches, t.batch_size, precision)
                log.log(step, "val", val)
                if bar is not None:
                    shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
                    bar.write(f"step {step}: val {shown}")  # whatever the task reports (ce/ppl, psnr/mse, ...)
            if (t.save_every and step % t.save_every == 0) or step == last_step:
                save_run(out_dir, model, cfg, opt, sched, step, samples, task.checkpoint_files())
                saved = step
    finally:
        if bar is not None:
            bar.close()
        log.close()
    return TrainResult(out_dir, step, val, time.time() - start_time)


def _diverged_message(step: int, what: str, saved: Optional[int], out_dir: Path) -> str:
    kept = (f"the last good checkpoint (step {saved}) is kept in {str(out_dir / CHECKPOINT_DIR)!r}" if saved
            else "no checkpoint was written")
    return (f"training diverged at step {step}: the {what}; start again with a lower optim.lr (or think.alpha "
            f"for an EBT), or resume with train.skip_nonfinite=N to skip up to N such steps; {kept}")


@contextmanager
def _diverges_at(step: int, saved: Optional[int], out_dir: Path) -> Iterator[None]:
    """A thinking step that meets a non-finite gradient in validation is a divergence of training (exit code 3)."""
    try:
        yield
    except NonFinite:
        raise Diverged(_diverged_message(step, "energy gradient of a thinking step is not finite", saved,
                                         out_dir)) from None


def sample_noise(enabled: bool, seed: int, start: int, batch_size: int):
    """World-size-invariant noise for the micro-batch at stream position `start` (see `ebt.noise`)."""
    if not enabled:
        return nullcontext()
    return noise.per_sample(seed, rank_positions(start, batch_size, dist.rank()).tolist(), key=start)


def seed_rngs(state: Optional[dict], seed: int, step: int) -> None:
    """Rank-offset seeds for a new run; a resumed run restores each rank's generators, or, on a different world
    size, re-seeds every rank from (seed, step, rank) so that no two ranks share a stream."""
    r = dist.rank()
    rngs = (state or {}).get("torch_rng") or []
    py = (state or {}).get("py_rng")
    if state is not None and len(rngs) == dist.world() and isinstance(py, list):
        torch.set_rng_state(rngs[r])
        random.setstate(py[r])
        cuda = state.get("cuda_rng")
        if cuda and len(cuda) == dist.world() and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda[r])
        return
    if state is not None and len(rngs) == 1 and dist.world() == 1:  # single-process checkpoint of an older version
        torch.set_rng_state(rngs[0])
        random.setstate(py)
        return
    s = seed + r if state is None else noise.mix(seed, step, r) % (1 << 63)
    torch.manual_seed(s)
    random.seed(s)


def save_run(out_dir: Path, model: nn.Module, cfg: Any, opt, sched, step: int, samples: int = 0,
             files: Optional[dict[str, bytes]] = None) -> None:
    """All ranks call this (RNG states and FSDP2 shards are gathered); rank 0 writes the checkpoint folder, whole
    tensors only, so it loads in one process or under any world size."""
    rngs = dist.gather_objects(torch.get_rng_state())
    py_rngs = dist.gather_objects(random.getstate())
    cuda_rngs = dist.gather_objects(torch.cuda.get_rng_state()) if torch.cuda.is_available() else None
    weights = dist.full_model_state(model)
    optim = dist.full_optimizer_state(model, opt)
    if dist.is_main():
        state = {"optimizer": optim, "scheduler": sched.state_dict(), "step": step, "samples": samples,
                 "world": dist.world(), "torch_rng": rngs, "py_rng": py_rngs, "cuda_rng": cuda_rngs}
        save_checkpoint(out_dir / CHECKPOINT_DIR, model, cfg, state, meta={"step": step}, weights=weights, files=files)
    dist.barrier()
