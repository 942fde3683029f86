"""Run folders and output folders: what may be written, replaced or deleted, and by whom.

- A run folder carries a marker (`.ebt-run`) written when `ebt train` creates it. `--overwrite` deletes only a
  folder with that marker, and never the working directory, one of its parents, the home folder or the root.
- While a process trains in a run folder it holds an exclusive lock on `RUN/.lock` (fcntl.flock, released by the
  kernel when the process dies, so a killed run never leaves it stuck; rank 0 holds it under torchrun). A second
  `train`, `--resume` or `--overwrite` on that folder is refused with the holder's PID.
- Every command that writes an output folder follows one rule (`prepare_output`): an existing non-empty folder is
  refused unless `--overwrite` is given.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ebt.errors import UserError

MARKER, LOCK = ".ebt-run", ".lock"
WRITTEN = (MARKER, LOCK, "config.yaml", "metrics.jsonl", "tb", "checkpoint", ".checkpoint.old")
"""What a run writes in its folder: none of these may be a symbolic link (writing through it would change a file
elsewhere)."""


def is_run(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _protected(folder: Path) -> Optional[str]:
    """Why `folder` may never be deleted, or None."""
    target = folder.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        return "it is the working directory or one of its parents"
    if target == Path.home().resolve() or target == Path(target.anchor):
        return "it is the home folder or the root"
    return None


class RunLock:
    """An exclusive, non-blocking lock on RUN/.lock; `release()` (or the process's death) frees it."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)   # never via a link
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"run folder {str(self.path.parent)!r} is in use by process {holder}: wait for it to "
                            "finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing the descriptor drops the flock
            self.fd = None


def prepare_run(folder: Path, resume: bool, overwrite: bool) -> RunLock:
    """Check and lock the run folder for a new run, a resumed one or a replaced one; returns the held lock.
    Called by the process that writes the run (rank 0); nothing is changed on disk when a check fails."""
    exists = folder.is_dir() and any(p.name != LOCK for p in folder.iterdir())
    if folder.exists() and not folder.is_dir():
        raise UserError(f"run folder {str(folder)!r} is a file: choose another --out")
    links = [name for name in WRITTEN if (folder / name).is_symlink()]
    if links:
        raise UserError(f"run folder {str(folder)!r} holds a symbolic link {links[0]!r} where ebt writes: remove the "
                        "link or choose another --out")
    if resume:
        if not folder.is_dir():
            raise UserError(f"--resume: {str(folder)!r} does not exist; drop --resume to start a new run")
        checkpoints = [folder / "checkpoint", folder / ".checkpoint.old"]
        if not any((c / "config.json").is_file() for c in checkpoints):
            raise UserError(f"--resume: {str(folder)!r} has no checkpoint to resume from; start a new run in an "
                            "empty folder")
        return RunLock(folder).acquire()
    if exists and not overwrite:
        raise UserError(f"run folder {str(folder)!r} already exists: pass --resume to continue it, --overwrite to "
                        "replace it, or choose another --train.out_dir")
    if exists:
        nested = next((p.parent for p in folder.rglob(MARKER) if p.parent != folder), None)
        reason = _protected(folder) or (None if is_run(folder) else
                                        f"it has no {MARKER} marker, so it is not a run folder written by `ebt train` (a run of "
                                        "an older version: delete it yourself)") or \
            (f"it holds another run folder, {str(nested)!r}" if nested is not None else None)
        if reason:
            raise UserError(f"--overwrite refuses to delete {str(folder)!r}: {reason}; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder).acquire()
    except OSError as exc:
        raise UserError(f"cannot create the run folder {str(folder)!r} ({exc.strerror}): choose a writable "
                        "folder") from None
    if exists:   # under the lock: delete everything but the lock file itself
        for entry in folder.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (folder / MARKER).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return lock


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop metrics.jsonl rows after `step` (a resumed run repeats the steps after its checkpoint)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except ValueError:
            pass   # a line cut short by a kill or a full disk
    path.write_text("".join(kept))


def check_output_file(path: Path, overwrite: bool, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """The rule for an output file: not a folder, not an existing file unless `overwrite` (the command then has an
    --overwrite flag), in a folder that exists, and with one of `suffixes` (e.g. (".png",)) when given."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {str(path)!r}: name a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder: name a file")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {str(path)!r} already exists: choose a new file or pass --overwrite")
    if not path.resolve().parent.is_dir():
        raise UserError(f"{flag} {str(path)!r}: its folder does not exist; create it or choose another path")
    return path


def prepare_output(folder: Path, overwrite: bool, flag: str = "--out", can_overwrite: bool = True) -> Path:
    """The one rule for output folders: refuse an existing non-empty folder unless `overwrite` (files written
    again are then replaced; nothing else is deleted). Creates the folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {str(folder)!r} is a file: choose a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        hint = " or pass --overwrite to replace the files it writes" if can_overwrite else ""
        raise UserError(f"{flag} {str(folder)!r} already exists and is not empty: choose a new folder{hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {flag} {str(folder)!r} ({exc.strerror}): choose a writable folder") from None
    return folder
