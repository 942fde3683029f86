"""What a resumed run may change: the saved config rules, and only settings that cannot change what is trained
may differ (more steps, logging, evaluation and checkpoint cadence, threads, device, process group, and the split
of the same global batch over another number of processes)."""
from __future__ import annotations

from typing import Any

from ebt.config import to_dict
from ebt.errors import UserError

RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batches", "train.save_every",
             "train.progress", "train.threads", "train.device", "train.out_dir", "train.skip_nonfinite",
             "dist.strategy", "dist.backend", "data.errors")
"""Keys a resumed run may change (train.steps only upwards; data.errors=replace changes no text that strict decoding
accepted)."""


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or its dict) as {dotted key: value}."""
    node = to_dict(node) if hasattr(node, "__dataclass_fields__") else node
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: node}


def changed_keys(cfg: Any, saved: Any, free: set) -> list[str]:
    """Dotted keys whose values differ between two configs, except those in `free`."""
    new, old = flat(cfg), flat(saved)
    return sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k) and k not in free)


def refuse_changes(changed: list[str], cfg: Any, saved: Any) -> None:
    if changed:
        new, old = flat(cfg), flat(saved)
        shown = ", ".join(f"{k}={new.get(k)!r} (saved {old.get(k)!r})" for k in changed[:3])
        raise UserError(f"--resume keeps the run's saved config, but this changes {shown}"
                        f"{' and more' if len(changed) > 3 else ''}: drop those settings, or start a new run; a "
                        f"resumed run may change only {', '.join(RESUMABLE)}")


def check_resume(cfg: Any, saved: Any, saved_world: int = 1, world: int = 1) -> None:
    """Refuse `cfg` for resuming a run saved with `saved` (by `saved_world` processes, now `world`) when it changes
    anything outside RESUMABLE. train.batch_size and train.grad_accum may change only together with the number of
    processes, keeping the global batch (processes x batch x accumulation)."""
    refuse_changes(changed_keys(cfg, saved, {*RESUMABLE, "train.batch_size", "train.grad_accum"}), cfg, saved)
    new_batch = world * cfg.train.batch_size * cfg.train.grad_accum
    old_batch = saved_world * saved.train.batch_size * saved.train.grad_accum
    if new_batch != old_batch:
        raise UserError(f"--resume would change the global batch from {old_batch} ({saved_world} process(es) x "
                        f"train.batch_size {saved.train.batch_size} x train.grad_accum {saved.train.grad_accum}) to "
                        f"{new_batch}: keep processes x batch_size x grad_accum = {old_batch}")
    if cfg.train.steps < saved.train.steps:
        raise UserError(f"--resume: train.steps={cfg.train.steps} is below the run's {saved.train.steps} (the "
                        "learning-rate schedule is laid out over it): keep it or raise it")
