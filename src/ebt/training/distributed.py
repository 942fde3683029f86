"""torchrun integration: process group set-up, rank helpers, DDP / FSDP2 wrapping, full state dicts, reductions.

Single-process runs go through the same calls, which then do nothing.

DDP is exact with EBTs because the inner gradients are taken with `torch.autograd.grad` and the loss with
`backward()`; `static_graph=True` is never used (it silently corrupts EBT gradients, docs/reference.md §9).

FSDP2 (`dist.strategy=fsdp2`) shards every transformer block (and the rest of the model at the root) with
`fully_shard`, but does not let FSDP gather and free blocks around each forward: the thinking loop calls every block
several times and differentiates through those calls twice (the inner `autograd.grad` with create_graph, then the
outer `backward`). FSDP's per-module hooks assume one forward and one backward per step: the inner gradient fires
their backward hooks, which reshard parameters that the second-order graph still needs (DTensors then meet plain
tensors). So here a training step runs inside `gathered(model)`: every block is all-gathered once before the
forward, stays unsharded through the whole descent and the outer backward, and FSDP's own post-backward callback at
the root reduce-scatters all gradients and reshards afterwards. The blocks' forward hooks are removed so that models
that call `block(x)` behave the same as ones that call block methods. See docs/distributed.md for the memory this uses.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

import torch
import torch.distributed as tdist
from torch import nn

from ebt.config import DistConfig
from ebt.errors import UserError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_created_group = False


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def setup(backend: str = "auto", device: str = "auto") -> None:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    global _created_group
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and not device.startswith("cpu") else "gloo"
        if backend == "nccl" and not torch.cuda.is_available():
            raise UserError("dist.backend=nccl needs GPUs: use dist.backend=gloo (or auto) on CPU")
        tdist.init_process_group(backend)
        _created_group = True


def teardown() -> None:
    """Destroy the process group if `setup` created it (the CLI calls this at exit). The ranks meet first, so that
    none tears down gloo's connections while another still uses them (seen once as an abort at exit)."""
    global _created_group
    if _created_group and is_distributed():
        tdist.barrier()
        tdist.destroy_process_group()
    _created_group = False


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def device_for_rank(name: str) -> torch.device:
    if torch.cuda.is_available() and name in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def dist_config(cfg: Any):
    """The run's `dist` section (configs without one get the defaults)."""
    return getattr(cfg, "dist", None) or DistConfig()


# ---- wrapping ---------------------------------------------------------------------------------------------------
def wrap(model: nn.Module, cfg: Any) -> nn.Module:
    """DDP-wrap or FSDP2-shard the model when distributed; returns what the training step should call."""
    if not is_distributed():
        return model
    d = dist_config(cfg)
    if d.strategy == "fsdp2":
        return shard_fsdp2(model, d.param_dtype, d.reduce_dtype)
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(model.parameters()).device
    # find_unused_parameters: truncated (S2) descents and random step counts leave some parameters unused
    return DDP(model, device_ids=[dev] if dev.type == "cuda" else None, find_unused_parameters=True)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded on their own: `model.fsdp_units()` if defined, else every entry of every ModuleList
    (the transformer blocks)."""
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    units, inside = [], set()
    for m in model.modules():  # pre-order: an outer list's entries come first; lists inside them are not split
        if isinstance(m, nn.ModuleList) and id(m) not in inside:
            for c in m:
                if any(True for _ in c.parameters()):
                    units.append(c)
                    inside.update(id(d) for d in c.modules())
    return units


def shard_fsdp2(model: nn.Module, param_dtype: str = "fp32", reduce_dtype: str = "fp32") -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (world(),))
    mp = MixedPrecisionPolicy(param_dtype=None if param_dtype == "fp32" else _DTYPES[param_dtype],
                              reduce_dtype=_DTYPES[reduce_dtype])
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        # `gathered` unshards the units for the whole step; their per-forward hooks would reshard mid-descent
        state = unit._get_fsdp_state()
        handles = [getattr(state, n, None) for n in ("_pre_forward_hook_handle", "_post_forward_hook_handle")]
        if any(h is None for h in handles):
            raise UserError(f"dist.strategy=fsdp2 relies on FSDP2 internals that torch {torch.__version__} does not "
                            "have: use dist.strategy=ddp, or the torch version this package pins")
        for h in handles:
            h.remove()
    # the root keeps its hooks: they run FSDP's post-backward callback that reduce-scatters every unit's gradients
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep every FSDP2 unit of `model` unsharded inside (one training micro-step, forward and backward, or an
    evaluation) and reshard on exit. A no-op for other models."""
    units = fsdp_modules(model) if is_fsdp(model) else []
    if not units:
        yield
        return
    pending = []
    for u in units:  # one all-gather in flight ahead of the one being copied out: buffers stay one unit in size
        pending.append(u.unshard(async_op=True))
        if len(pending) > 1:
            pending.pop(0).wait()
    for h in pending:
        h.wait()
    try:
        with warnings.catch_warnings():
            # the root returns views (e.g. per-step energies) that we never modify in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            yield
    finally:
        for u in units:
            u.reshard()


def no_sync_unless(model: nn.Module, sync: bool):
    """Skip the gradient reduction on intermediate accumulation micro-steps (DDP no_sync / FSDP2 sync flag)."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def as_float(x: Any) -> float:
    """A Python float from a tensor, a DTensor (e.g. FSDP2's clipped gradient norm) or a number."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


# ---- state dicts ------------------------------------------------------------------------------------------------
def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> Optional[dict]:
    """The whole model's state dict on CPU (FSDP2: gathered; collective, call on every rank). None off rank 0."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_options())
        return state if is_main() else None
    if not is_main():
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> Optional[dict]:
    """Optimizer state keyed by parameter name, whole tensors on CPU: loads under any world size and strategy
    (collective, call on every rank). None off rank 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, opt, options=_options())
    return state if is_main() else None


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a state written by `full_optimizer_state` (or a plain `opt.state_dict()` of an older checkpoint)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = [p for g in state.get("param_groups", []) for p in g.get("params", [])]
    if names and not isinstance(names[0], str):  # id-keyed: written by a single process before names were used
        if is_fsdp(model):
            raise UserError("this checkpoint's optimizer state predates sharded training: resume it with "
                            "dist.strategy=ddp or in one process")
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # every rank passes the whole state (all read the same file); FSDP2 keeps only its own shard of it
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


# ---- reductions -------------------------------------------------------------------------------------------------
def _comm_device() -> torch.device:
    """NCCL reduces only GPU tensors; gloo takes CPU tensors."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    tdist.all_reduce(t)
    return dict(zip(keys, (t / world()).tolist()))   # one device-to-host copy, not one per key


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        moved = t.to(_comm_device())
        tdist.all_reduce(moved)
        t.copy_(moved)
    return t


def gather_objects(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out
