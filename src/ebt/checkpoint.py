"""Checkpoints: a folder with `model.safetensors` (weights), `config.json` (the RunConfig) and, for training runs,
`trainer.pt` (optimizer, scheduler, RNG and step). Folders are written next to their destination and renamed into
place, so an interrupted save never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ebt.config import RunConfig, from_dict, to_dict
from ebt.errors import UserError

WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


def save_checkpoint(path: str | Path, model: nn.Module, cfg: RunConfig, trainer_state: Optional[dict] = None,
                    meta: Optional[dict] = None, weights: Optional[dict] = None) -> Path:
    """Write a checkpoint folder atomically (replacing an older checkpoint at the same path).

    `weights`: the state dict to write instead of `model.state_dict()` (a sharded model's gathered full state)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "kind": getattr(model, "kind", "")})
        (tmp / CONFIG).write_text(json.dumps({"config": to_dict(cfg), "meta": meta or {}}, indent=1))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_config(path: str | Path) -> tuple[RunConfig, dict]:
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        raise UserError(f"{str(path)!r} is a reference (Lightning) checkpoint: convert it first with "
                        f"`ebt convert {path} OUT_DIR`")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{str(path)!r} is not an ebt checkpoint folder (no {CONFIG}): pass a folder written by "
                        "`ebt train` or `ebt convert`")
    try:
        data = json.loads(cfg_file.read_text())
        cls = RunConfig
        if data["config"].get("task") == "denoise":  # an image run (ebt.images.config.ImageRunConfig)
            from ebt.images.config import ImageRunConfig as cls
        return from_dict(cls, data["config"], "config"), data.get("meta", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{str(cfg_file)!r} is unreadable ({exc}): the checkpoint is damaged") from None


def load_checked(path: str | Path, cls: type, build, kind: Optional[str], wrong_type: str,
                 wrong_kind: str) -> tuple[nn.Module, Any]:
    """find the checkpoint, read its config, refuse another run type (`wrong_type`) or model kind (`wrong_kind`;
    both formatted with found=, kind=), build the model and load its weights. Shared by text and image models."""
    path = find_checkpoint(path)
    cfg, _ = read_config(path)
    if not isinstance(cfg, cls):
        raise UserError(f"{str(path)!r} " + wrong_type.format(found=cfg.model.kind, kind=kind))
    if kind is not None and cfg.model.kind != kind:
        raise UserError(f"{str(path)!r} " + wrong_kind.format(found=cfg.model.kind, kind=kind))
    model = build(cfg)
    load_checked_weights(model, path)
    return model, cfg


def load_model(path: str | Path, kind: Optional[str] = None, device: Any = "cpu") -> tuple[nn.Module, RunConfig]:
    """Rebuild the model saved at `path`; `kind` ("ebt"/"transformer") refuses a checkpoint of another type."""
    from ebt.lm import build_lm

    model, cfg = load_checked(
        path, RunConfig, build_lm, kind,
        "holds an image denoiser ({found}), not a language model: use `ebt denoise` or `ebt eval denoise` with it",
        "holds a {found} model, but this command needs {kind}: pass a checkpoint of the right model type")
    return model.to(device), cfg


def load_checked_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint folder's weights into `model`, with a one-line error for damaged or mismatched files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(Path(path) / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"cannot read weights in {str(path)!r} ({exc}): the checkpoint is damaged") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"weights in {str(path)!r} do not match its config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}): the checkpoint is damaged")


def load_trainer_state(path: str | Path) -> Optional[dict]:
    f = Path(path) / TRAINER
    return torch.load(f, weights_only=False, map_location="cpu") if f.is_file() else None


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (whose latest checkpoint is `RUN/checkpoint`)."""
    path = Path(path)
    if (path / CONFIG).is_file() or (path.is_file() and path.suffix == ".ckpt"):
        return path
    if (path / "checkpoint" / CONFIG).is_file():
        return path / "checkpoint"
    if not path.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist: pass a run folder or a checkpoint folder")
    return path
