"""What compact replay-buffer storage costs (docs/s2.md): memory at the reference's scale, the error of the stored
logits, and the effect on the loss of a small System 2 run trained with each storage.

    python bench/replay_storage.py [--steps 300] [--seeds 0,1] [--json]

Runs with the same seed still drift apart after any perturbation, so the val-CE spread across seeds of one storage
is printed as the yardstick for the differences between storages.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import torch

from ebt.text.replay import ReplayBuffer, record_bytes

STORAGES = {"float32": dict(replay_dtype="float32"), "bfloat16": dict(replay_dtype="bfloat16"),
            "float16": dict(replay_dtype="float16"),
            "top-32 bf16": dict(replay_dtype="bfloat16", replay_topk=32),
            "top-64 bf16": dict(replay_dtype="bfloat16", replay_topk=64)}


def reference_memory(records: int = 192, length: int = 256, vocab: int = 50277) -> dict[str, float]:
    """GB of stored logits for the reference's buffer (192 records of 256 x 50 277)."""
    return {name: records * record_bytes(length, vocab, kw["replay_dtype"], kw.get("replay_topk", 0)) / 1e9
            for name, kw in STORAGES.items()}


def storage_error(logits: torch.Tensor) -> dict[str, dict[str, float]]:
    """For final logits (B, L, V) of a trained model: KL(p_exact || p_stored) per position and the largest change of
    a logit, after each storage's round trip."""
    out = {}
    exact = logits.float().log_softmax(-1)
    for name, kw in STORAGES.items():
        buf = ReplayBuffer(logits.shape[0], kw["replay_dtype"], kw.get("replay_topk", 0))
        buf.push(torch.zeros(logits.shape[0], logits.shape[1] + 1, dtype=torch.long), logits)
        stored = torch.stack([buf.decode(r) for r in buf.records])
        kl = (exact.exp() * (exact - stored.log_softmax(-1))).sum(-1).mean().item()
        out[name] = {"kl": kl, "max_abs": (stored - logits).abs().max().item(),
                     "bytes_per_record": buf.records[0].nbytes() - buf.records[0].ids.nbytes}
    return out


def train_with(storage: dict, steps: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Train the s2-ablation model with one storage; returns the final validation metrics and a batch's logits."""
    from ebt.experiments.s2_ablation import AblationSettings, base_config
    from ebt.text.task import TextTask
    from ebt.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = base_config(AblationSettings(steps=steps, seed=seed), tmp)
        cfg.think = dataclasses.replace(cfg.think, **storage)
        cfg.train.eval_batches = 16
        task = TextTask(cfg)
        res = train(cfg, task=task)
        from ebt.text.task import load_model
        from ebt.training.checkpoint import find_checkpoint

        model, _ = load_model(find_checkpoint(tmp))
        batch = task.val_windows.batch(range(16))
        model.eval()
        out = model(batch, training=False)
    return res.val, out.thought.final.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    seeds = [int(x) for x in args.seeds.split(",")]
    result = {"reference_GB": reference_memory(), "runs": {}}
    logits = None
    for name, kw in STORAGES.items():
        if name == "float16":  # same memory as bfloat16; its error is measured below without a training run
            continue
        for seed in seeds:
            val, final = train_with(kw, args.steps, seed)
            result["runs"].setdefault(name, []).append(val["ce"])
            logits = final if logits is None else logits
            print(f"{name} seed {seed}: val ce {val['ce']:.4f}", flush=True)
    result["error"] = storage_error(logits)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"| storage | GB at 192 x 256 x 50 277 | bytes/record here | KL(exact || stored) | max |dlogit| "
          f"| val ce (seeds {args.seeds}) |")
    print("|---|---|---|---|---|---|")
    for name in STORAGES:
        e = result["error"][name]
        ces = result["runs"].get(name)
        print(f"| {name} | {result['reference_GB'][name]:.3f} | {e['bytes_per_record']} | {e['kl']:.2e} | "
              f"{e['max_abs']:.3g} | {' / '.join(f'{c:.4f}' for c in ces) if ces else '-'} |")


if __name__ == "__main__":
    main()
