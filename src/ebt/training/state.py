"""Trainer state (optimizer, scheduler, RNG streams, step) without pickle: tensors in `trainer.safetensors`, the
rest in `trainer.json`. Nothing a user hands us is unpickled, so a planted file cannot run code.

A nested state of dicts, lists, tuples, numbers, strings, None and tensors is split into a JSON tree where every
tensor is replaced by {"__tensor__": key} (and every tuple by {"__tuple__": [...]}, so that e.g. Python's
`random.getstate()` comes back as the tuple `random.setstate` expects) and a flat {key: tensor} safetensors file.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ebt.errors import UserError

STATE_JSON, STATE_TENSORS, LEGACY_STATE = "trainer.json", "trainer.safetensors", "trainer.pt"


def _split(node: Any, tensors: dict, path: str) -> Any:
    if isinstance(node, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = node.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(node, dict):
        if not all(isinstance(k, str) for k in node):
            return {"__intkeys__": [[k, _split(v, tensors, f"{path}.{k}")] for k, v in node.items()]}
        return {k: _split(v, tensors, f"{path}.{k}") for k, v in node.items()}
    if isinstance(node, tuple):
        return {"__tuple__": [_split(v, tensors, f"{path}[{i}]") for i, v in enumerate(node)]}
    if isinstance(node, list):
        return [_split(v, tensors, f"{path}[{i}]") for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"trainer state entry {path} has type {type(node).__name__}, which is not stored")


def _join(node: Any, tensors: dict) -> Any:
    if isinstance(node, dict):
        if set(node) == {"__tensor__"}:
            return tensors[node["__tensor__"]]
        if set(node) == {"__tuple__"}:
            return tuple(_join(v, tensors) for v in node["__tuple__"])
        if set(node) == {"__intkeys__"}:
            return {k: _join(v, tensors) for k, v in node["__intkeys__"]}
        return {k: _join(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_join(v, tensors) for v in node]
    return node


def write_state(folder: Path, state: dict) -> None:
    """Write `state` into `folder` as trainer.json + trainer.safetensors."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _split(state, tensors, "state")
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(tree))


LAYOUT = {"optimizer": dict, "scheduler": dict, "step": int, "torch_rng": list}
"""What the trainer needs from a state, and of which type."""


def _checked(state: Any) -> dict:
    if not isinstance(state, dict):
        raise TypeError("the state is not a mapping")
    for key, kind in LAYOUT.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise TypeError(f"{key!r} is missing or not a {kind.__name__}")
    return state


def read_state(folder: Path) -> Optional[dict]:
    """The trainer state of a checkpoint folder, or None if it has none. A `trainer.pt` of an older version is read
    with `weights_only=True` (tensors and plain containers only); anything else is refused with one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (folder / STATE_JSON).is_file():
        try:
            return _checked(_join(json.loads((folder / STATE_JSON).read_text()), load_file(str(folder / STATE_TENSORS))))
        except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"cannot read the trainer state in {str(folder)!r} ({type(exc).__name__}: {exc}): it is "
                            "damaged; start a new run from the checkpoint's weights instead") from None
    legacy = folder / LEGACY_STATE
    if not legacy.is_file():
        return None
    try:
        with warnings.catch_warnings():   # e.g. torch's note on the pickle protocol: not the user's concern
            warnings.simplefilter("ignore")
            return _checked(torch.load(legacy, weights_only=True, map_location="cpu"))
    except Exception as exc:  # torch raises many types for damaged, foreign or code-carrying files
        raise UserError(f"cannot read {str(legacy)!r} ({type(exc).__name__}) without running code: the trainer "
                        "state is damaged or was not written by `ebt train`; its weights (model.safetensors) still work with "
                        "`ebt eval` and `ebt generate`, but training cannot resume from it: start a new run") from None
