"""Peak bytes held by tensors during training steps, on CPU: the quantity `torch.cuda.max_memory_allocated` reports
on a GPU, for predicting and comparing GPU memory without one.

    python bench/alloc_peak.py --size small --ctx 256 --batch 1 --vocab 50277 --dtype bf16 --as-cuda --predict-batch 32

Every tensor storage created while the step runs (forward, thinking, backward, optimizer) is counted from its
allocation to its release (a dispatch mode sees every operator, the autograd engine's included); parameters and
optimizer state that exist before are counted too. `--predict-batch N` runs batch b and b+1 and extrapolates the
live bytes after every operator linearly to batch N (the operator sequence does not depend on the batch), so a
GPU-sized peak is predicted wherever in the step it happens; `--as-cuda` makes the kernels' CUDA-specific
choices (padded vocabulary matmuls, row chunks). Check a prediction against one GPU measurement before trusting it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import weakref
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ebt.benchmarks.train_step import TrainSpec, add_spec_args, build, spec_from_args, train_step  # noqa: E402
from ebt.ops import vocab  # noqa: E402
from ebt.training.devices import autocast  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created under it; `peak` is the maximum seen."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        self.trace: list[int] = []      # live bytes after each operator
        self._owner: dict[int, int] = {}  # address -> registration token
        self._token = 0

    def add(self, storage) -> None:
        ptr, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or ptr in self.live:
            return
        self._token += 1
        self.live[ptr] = n
        self._owner[ptr] = self._token
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._release, ptr, self._token)

    def _release(self, ptr: int, token: int) -> None:
        if self._owner.get(ptr) == token:     # not a later storage at a reused address
            del self._owner[ptr]
            self.now -= self.live.pop(ptr, 0)

    def __enter__(self):
        # storages freed by resize_(0) (the thinking loop frees its scratch start that way) leave the count here
        self._resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage, n):
            tracker._owner.pop(storage.data_ptr(), None)
            tracker.now -= tracker.live.pop(storage.data_ptr(), 0)
            out = tracker._resize(storage, n)
            tracker.add(storage)
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.add(t.untyped_storage())
        self.trace.append(self.now)
        return out


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (gradients of fused weights share one storage)."""
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measure(spec: TrainSpec, as_cuda: bool, chunks_at: int = 0) -> tuple[int, list[int], list[int]]:
    """(bytes alive throughout, live bytes after each operator of forward+backward, of clipping+optimizer).

    chunks_at=N: split (rows, V) work into as many row chunks as a batch of N makes, whatever the batch here, so
    that two batch sizes run the same operators (the chunks' sizes then scale with the batch)."""
    patches = contextlib.ExitStack()
    with patches:
        if as_cuda:   # the choices the kernels make on CUDA: padded vocabulary matmuls, larger row chunks
            cuda_chunk, cuda_width = vocab._CHUNK_ELEMENTS["cuda"], vocab.padded_vocab
            patches.enter_context(mock.patch.object(vocab, "padded_vocab",
                                                    lambda v, device: cuda_width(v, torch.device("cuda"))))
            patches.enter_context(mock.patch.object(vocab, "_CHUNK_ELEMENTS", {"cpu": cuda_chunk, "cuda": cuda_chunk}))
        if chunks_at:
            per_chunk = vocab._CHUNK_ELEMENTS["cpu"]
            n_chunks = -(-chunks_at * spec.ctx // max(1, per_chunk // spec.vocab))
            patches.enter_context(mock.patch.object(
                vocab, "_row_chunks", lambda t, v: list(t.reshape(-1, t.shape[-1]).tensor_split(n_chunks))))
        device = torch.device("cpu")
        model, opt, batch = build(spec, device)
        train_step(model, opt, batch, device, spec.dtype)            # optimizer state now exists
        state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        base = storage_bytes(list(model.parameters()) + state)       # parameters + optimizer state, alive throughout
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        tracker = LiveBytes()
        with tracker:                                                 # phase 1: forward, thinking, backward
            with autocast(device, "bf16" if spec.dtype == "bf16" else "fp32"):
                model(batch).loss.backward()
            n = len(tracker.trace)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # phase 2: clipping and the optimizer step
            opt.step()
    return base, tracker.trace[:n], tracker.trace[n:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_args(p)
    p.add_argument("--predict-batch", type=int, default=0,
                   help="also run at batch+1 and extrapolate the peak to this batch, operator by operator")
    p.add_argument("--as-cuda", action="store_true", help="make the kernels' CUDA-specific choices on CPU")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = spec_from_args(args, device="cpu")
    base, fb, op = measure(spec, args.as_cuda, args.predict_batch)
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    row = {"model": args.model, "size": args.size, "batch": args.batch, "ctx": args.ctx, "vocab": args.vocab,
           "dtype": args.dtype, "overrides": spec.overrides, "peak_mib": mib(base + max(fb + op)),
           "forward_backward_peak_mib": mib(base + max(fb)), "optimizer_peak_mib": mib(base + max(op))}
    if args.predict_batch:
        _, fb2, op2 = measure(dataclasses.replace(spec, batch=args.batch + 1), args.as_cuda, args.predict_batch)
        if len(fb2) != len(fb) or len(op2) != len(op):
            raise SystemExit("the two batch sizes ran different operator sequences: cannot extrapolate")
        k = args.predict_batch - args.batch
        predicted = [a + k * (b - a) for a, b in zip(fb + op, fb2 + op2)]
        row.update(predicted_batch=args.predict_batch, predicted_peak_mib=mib(base + max(predicted)),
                   predicted_peak_at=f"operator {predicted.index(max(predicted))} of {len(predicted)}")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
