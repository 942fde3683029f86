"""Checkpoints: a folder with `model.safetensors` (weights), `config.json` (the run config) and, for training runs,
`trainer.json` + `trainer.safetensors` (optimizer, scheduler, RNG and step; `state.py`). No file is ever unpickled.

A checkpoint is written into a scratch folder next to its destination and swapped in with two renames
(checkpoint -> .checkpoint.old, scratch -> checkpoint), so an interrupted save never leaves a half-written
checkpoint. A kill between the two renames leaves only `.checkpoint.old`: readers then read it, and the next
training start in that run folder renames it back (`recover`). A failed write (disk full, read-only folder)
removes its scratch folder and leaves the previous checkpoint as it was.
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

from ebt.config import from_dict, to_dict
from ebt.errors import UserError
from ebt.training import hub
from ebt.training.devices import check_fits, meta_size
from ebt.training.registry import task_spec
from ebt.training.state import read_state, write_state

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Any, trainer_state: Optional[dict] = None,
                    meta: Optional[dict] = None, weights: Optional[dict] = None,
                    files: Optional[dict[str, bytes]] = None) -> Path:
    """Write a checkpoint folder atomically (replacing an older checkpoint at the same path).

    `weights`: the state dict to write instead of `model.state_dict()` (a sharded model's gathered full state);
    `files`: more files to write into the folder, by name (the task's, e.g. a text run's tokenizer.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    recover(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise UserError(f"cannot write a checkpoint in {str(path.parent)!r} ({exc.strerror}): choose a writable "
                        "folder") from None
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "kind": getattr(model, "kind", "")})
        files = files or {}
        meta = {**(meta or {}), **({"files": sorted(files)} if files else {})}
        (tmp / CONFIG).write_text(json.dumps({"config": to_dict(cfg), "meta": meta}, indent=1))
        if trainer_state is not None:
            write_state(tmp, trainer_state)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        _swap_in(tmp, path)
    except (OSError, SafetensorError) as exc:   # safetensors reports a full disk as its own error type
        reason = getattr(exc, "strerror", None) or str(exc).rpartition("I/O error: ")[2].split(" (os error")[0]
        kept = "the previous checkpoint is intact" if (path / CONFIG).is_file() else "no checkpoint was written"
        raise UserError(f"cannot write the checkpoint {str(path)!r} ({reason}): {kept}; free some space or choose "
                        "another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    old = _previous(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)      # between these two renames only .checkpoint.old exists: see `recover`
    shutil.rmtree(old, ignore_errors=True)


def recover(path: str | Path) -> None:
    """Finish a checkpoint swap that a kill interrupted: `.NAME.old` alone is renamed back to NAME; next to a
    complete NAME it is removed. Only the process that writes the run calls this."""
    path = Path(path)
    old = _previous(path)
    for scratch in path.parent.glob(f".{path.name}.*"):   # scratch folders of saves a kill interrupted
        if scratch != old and scratch.is_dir() and not scratch.is_symlink():
            shutil.rmtree(scratch, ignore_errors=True)
    if not old.is_dir():
        return
    if (path / CONFIG).is_file():
        shutil.rmtree(old, ignore_errors=True)
    elif (old / CONFIG).is_file():
        shutil.rmtree(path, ignore_errors=True)   # an empty or partial folder, never a complete checkpoint
        os.replace(old, path)


def _raw_config(path: Path) -> tuple[dict, dict]:
    """The (config, meta) dicts of a checkpoint folder, with one-line errors for what is not one."""
    if path.is_file() and path.suffix == ".ckpt":
        raise UserError(f"{str(path)!r} is a reference (Lightning) checkpoint: convert it first with "
                        f"`ebt convert {path} OUT_DIR`")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{str(path)!r} is not an ebt checkpoint folder (no {CONFIG}): pass a folder written by "
                        "`ebt train` or `ebt convert`")
    try:
        data = json.loads(cfg_file.read_text())
        if not isinstance(data["config"], dict):
            raise TypeError("config is not a mapping")
        return data["config"], data.get("meta", {})
    except (ValueError, KeyError, TypeError) as exc:   # JSON and UTF-8 decoding errors are ValueErrors
        raise UserError(f"{str(cfg_file)!r} is unreadable ({type(exc).__name__}): the checkpoint is damaged") from None


def task_name(config: dict) -> str:
    """The task of a saved config; checkpoints written before configs had a `task` field are text runs."""
    return config.get("task", "text")


def saved_task(path: str | Path) -> str:
    """The task of a checkpoint folder's saved config, read without rebuilding it."""
    return task_name(_raw_config(Path(path))[0])


def read_config(path: str | Path, cls: Optional[type] = None) -> tuple[Any, dict]:
    """(config, meta) of a checkpoint folder; the config is rebuilt as `cls`, or as its registered task's class."""
    data, meta = _raw_config(Path(path))
    cls = cls or task_spec(task_name(data)).config_class
    try:
        return from_dict(cls, data), meta
    except TypeError as exc:
        raise UserError(f"{str(Path(path) / CONFIG)!r} is unreadable ({exc}): the checkpoint is damaged") from None


def load_checked(path: str | Path, task: str, cls: type, build, kind: Optional[str], wrong_type: str,
                 wrong_kind: str) -> tuple[nn.Module, Any]:
    """Find the checkpoint, refuse one of another task (`wrong_type`) or model kind (`wrong_kind`; both formatted
    with found= (the saved model kind), kind=, and task= (the saved task)), rebuild its config as `cls`, build the model and load its weights. Shared by every task."""
    path = find_checkpoint(path)
    data, _ = _raw_config(path)
    if task_name(data) != task:
        found = data.get("model", {}).get("kind", "?") if isinstance(data.get("model"), dict) else "?"
        raise UserError(f"{str(path)!r} " + wrong_type.format(found=found, kind=kind, task=task_name(data)))
    cfg, _ = read_config(path, cls)
    if kind is not None and cfg.model.kind != kind:
        raise UserError(f"{str(path)!r} " + wrong_kind.format(found=cfg.model.kind, kind=kind))
    # sizes from a damaged or foreign config.json are refused before allocating; loading holds the model and a
    # copy of its weights (8 bytes per float32 element)
    n = meta_size(lambda: build(cfg))
    check_fits(8.0 * n, torch.device("cpu"), f"the model in {str(path)!r} ({n / 1e6:,.0f}M values)",
               "its config.json may be damaged; or use a machine with more memory")
    model = build(cfg)
    load_checked_weights(model, path)
    return model, cfg


def read_weights(path: str | Path) -> dict:
    """A checkpoint folder's weights (name -> tensor), with a one-line error for a damaged or foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"cannot read weights in {str(path)!r} ({exc}): the checkpoint is damaged") from None


def size_mismatch(exc: RuntimeError) -> str:
    """The first size mismatch `load_state_dict` reports (strict=False still refuses those), in one line."""
    return next((line.strip().rstrip(".") for line in str(exc).splitlines() if "size mismatch" in line),
                "shapes differ")


def load_checked_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint folder's weights into `model`, with a one-line error for damaged or mismatched files."""
    state = read_weights(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # shapes that differ from the config's
        raise UserError(f"weights in {str(path)!r} do not match its config ({size_mismatch(exc)}): the checkpoint "
                        "is damaged") from None
    if missing or unexpected:
        raise UserError(f"weights in {str(path)!r} do not match its config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}): the checkpoint is damaged")


def load_trainer_state(path: str | Path) -> Optional[dict]:
    """The optimizer, scheduler, RNG and step state of a training checkpoint (None if it has none); never
    unpickled (`state.py`)."""
    return read_state(Path(path))


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (whose latest checkpoint is `RUN/checkpoint`, or, while a save
    is between its two renames, `RUN/.checkpoint.old`)."""
    path = Path(path)
    if (path / CONFIG).is_file() or (path.is_file() and path.suffix == ".ckpt"):
        return path
    for candidate in (path / "checkpoint", _previous(path / "checkpoint"), _previous(path)):
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        if hub.looks_like_repo(str(path)):   # "user/name": from the Hugging Face cache only (`ebt pull` downloads)
            return hub.cached_snapshot(str(path))
        raise UserError(f"checkpoint {str(path)!r} does not exist: pass a run folder or a checkpoint folder")
    return path


def check_same_files(path: str | Path, files: dict[str, bytes]) -> None:
    """Refuse to resume a run whose task now brings other files (e.g. another tokenizer, or none where the run had
    one) than its checkpoint has (their names are in its meta `files`)."""
    path = Path(path)
    saved = set(_raw_config(path)[1].get("files", []))
    for name in saved | set(files):
        if name not in files or name not in saved or not (path / name).is_file() \
                or (path / name).read_bytes() != files[name]:
            raise UserError(f"the run's checkpoint {str(path)!r} was trained with another {name} than its data has "
                            "now: resume with the data (and data.tokenizer) it was trained on, or start a new run")
