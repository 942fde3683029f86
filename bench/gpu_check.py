"""Correctness of the training step on a GPU, before any timing is trusted.

    PYTHONPATH=src python bench/gpu_check.py            # on a CUDA machine (a few seconds)
    python bench/gpu_check.py --device cpu              # the same checks on CPU

1. The custom kernels (fused prediction attention, RMSNorm, candidate embedding/update, cross-entropy) pass
   float64 gradcheck and gradgradcheck on the device.
2. A tiny EBT's training loss and every parameter gradient (thinking steps with their second-order graph) are
   the same on the device, for each conditioning and attention path, as on the CPU through the plain (math)
   attention in float64, with the same weights, batch and initial candidates (with --compiled also for
   model.compile_kernels=true on the device). On CPU the math path's row would compare a computation with itself:
   it is reported as null.
   On CUDA this runs the vocabulary matmuls at their padded width (models/vocab.padded_vocab).
   Prints one JSON line; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from typing import Optional

import torch
from torch.autograd import gradcheck, gradgradcheck

F64 = torch.float64


def kernel_checks(device: torch.device) -> dict:
    from ebt.ops.prediction_attention import fused_prediction_attention
    from ebt.ops.rms_norm import rms_norm
    from ebt.ops.rope_heads import split_heads
    from ebt.ops.swiglu import swiglu_gate
    from ebt.models.layers import rope_angles
    from ebt.ops.vocab import candidate_cross_entropy, candidate_update, embed_probs

    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device).requires_grad_()

    B, H, L, S, d, V, D = 2, 2, 4, 5, 4, 7, 3
    allowed = (torch.arange(S)[None, :] <= torch.arange(L)[:, None] + 1).to(device)
    p = torch.softmax(torch.randn(B, L, V, generator=g, dtype=F64), -1).to(device)
    targets = torch.randint(0, V, (B, L), generator=g).to(device)
    alpha = torch.tensor([0.7], dtype=F64, device=device)
    cos, sin = rope_angles(torch.arange(L), d, 1e4)
    cases = {
        "attention": (lambda *a: fused_prediction_attention(*a, allowed),
                      (leaf(B, H, L, d), leaf(B, H, S, d), leaf(B, H, S, d), leaf(B, H, L, d), leaf(B, H, L, d))),
        "rms_norm": (lambda x, w: rms_norm(x, w, 1e-6), (leaf(B, L, D), leaf(D))),
        "swiglu_gate": (swiglu_gate, (leaf(B, L, D), leaf(B, L, D))),
        "split_heads": (lambda y: split_heads(y, cos.to(device), sin.to(device), H), (leaf(B, L, 3 * H * d),)),
        "embed_probs": (lambda M: embed_probs(p, M), (leaf(V, D),)),
        "candidate_update": (lambda dx, M: candidate_update(p, dx, M, alpha), (leaf(B, L, D), leaf(V, D))),
        "cross_entropy": (lambda z: candidate_cross_entropy(z, targets, ignore_index=0), (leaf(B, L, V),)),
    }
    return {name: bool(gradcheck(fn, ins) and gradgradcheck(fn, ins)) for name, (fn, ins) in cases.items()}


def step_parity(device: torch.device, conditioning: str, attn_impl: str, compiled: bool = False) -> Optional[float]:
    """Worst relative difference (loss and every gradient) of one training step on `device` through `attn_impl`
    vs the CPU through the math attention, float64; None where that would be the same computation."""
    from ebt.config import ModelConfig, ThinkConfig
    from ebt.text.models import TextEBT

    if device.type == "cpu" and attn_impl == "math" and not compiled:
        return None
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, dim=16, layers=2, heads=2, context=6, conditioning=conditioning,
                      attn_impl="math")
    cpu_model = TextEBT(cfg, ThinkConfig(landscapes=2)).double().train()
    # the device model: same weights, its own attention path (and, compiled, its custom-Function bodies through
    # torch.compile: Triton on CUDA)
    dev_cfg = dataclasses.replace(cfg, attn_impl=attn_impl, compile_kernels=compiled)
    dev_model = TextEBT(dev_cfg, ThinkConfig(landscapes=2)).double().to(device).train()
    dev_model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(1, 11, (3, 7))
    z0 = torch.randn(3, 6, 11, dtype=F64)
    results = []
    for model, dev in ((cpu_model, torch.device("cpu")), (dev_model, device)):
        loss = model(ids.to(dev), z0=z0.to(dev)).loss
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    worst = 0.0
    for a, b in zip(*results):
        worst = max(worst, ((a - b.cpu()).norm() / a.norm().clamp_min(1e-30)).item())
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--compiled", action="store_true", help="also check model.compile_kernels=true (slow to compile)")
    args = p.parse_args(argv)
    if args.compiled and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # a private compile cache: kernels compiled here for tiny float64 shapes must not be what a later benchmark
        # process finds in the shared cache (suspected of slowing the compiled row of a GPU run; docs/performance.md)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ebt_gpu_check_")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --device cpu for the CPU version", file=sys.stderr)
        return 2
    kernels = kernel_checks(device)
    parity = {f"{c}/{a}": step_parity(device, c, a)
              for c in ("pred_embed", "time_embed", "adaln") for a in ("fused", "math")}
    if args.compiled:
        parity["pred_embed/fused/compiled"] = step_parity(device, "pred_embed", "fused", compiled=True)
    ok = all(kernels.values()) and all(v < 1e-9 for v in parity.values() if v is not None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "ok": ok, "gradgradcheck": kernels,
                      "step_rel_err_vs_cpu_f64": parity}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
