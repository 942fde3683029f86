"""`ebt data get bigbench`: the BigBench and SQuAD task files, taken once from the `bigbench` 1.0.0 source
distribution on the package index the user's pip already uses (never a download at evaluation time).

pip downloads the archive into a temporary folder (it prepares the package's metadata as for any install; nothing is
installed). Only the four task files below are read out of it, as bytes, by their exact names: no member is
extracted to a path the archive chooses. Each is checked against its SHA-256 and written into the cache folder
(`$EBT_CACHE_DIR/bigbench-1.0.0`, see `ebt.text.tokenizers.cache_dir`) with a manifest; the archive is deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from ebt.errors import UserError
from ebt.text.tokenizers import cache_dir

VERSION = "1.0.0"
ROOT = f"bigbench-{VERSION}/bigbench/benchmark_tasks/"
# task name -> (format, member of the archive, SHA-256 of that file in bigbench 1.0.0)
FILES: dict[str, tuple[str, str, str]] = {
    "dyck_languages": ("bigbench", "dyck_languages/task.json",
                       "34ac9745545b1c7496e49a0c42fbc2859d25e04fe979e1894f63a83b0ae79500"),
    "elementary_math_qa": ("bigbench", "elementary_math_qa/question_only/task.json",
                           "765c8817c43b068720fd3bf99abaed09132420df530e58b2e6bd5a16823d58eb"),
    "matrixshapes": ("bigbench", "matrixshapes/task.json",
                     "1bbe1f17e190e43fe571143d332a5ce61f010d49f66524febac6ddfd975a9f2c"),
    "squad": ("squad", "squad_shifts/squaddev_v1.1.json",
              "45089eff3cf52004b1dca6814cde5c57082fdb09872f18c79a5d944d45be523a"),
}


def folder() -> Path:
    return cache_dir() / f"bigbench-{VERSION}"


def task_file(name: str) -> tuple[str, Path]:
    """(format, path) of a fetched task; a one-line error when it has not been fetched."""
    fmt = FILES[name][0]
    path = folder() / f"{name}.json"
    if not path.is_file():
        raise UserError(f"task {name!r} comes from the bigbench package: run `ebt data get bigbench` once (or pass "
                        f"{fmt}=PATH to your own copy)")
    return fmt, path


def download(into: Path) -> Path:
    """The bigbench source archive, downloaded by pip into `into`."""
    cmd = [sys.executable, "-m", "pip", "download", f"bigbench=={VERSION}", "--no-deps", "--no-binary", "bigbench",
           "--disable-pip-version-check", "-d", str(into)]
    print(f"downloading the bigbench {VERSION} source archive (about 360 MB) with pip ...", file=sys.stderr)
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    archives = list(into.glob("bigbench-*.tar.gz"))
    if done.returncode != 0 or not archives:
        last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
        raise UserError(f"pip could not download bigbench {VERSION} (offline, or your package index lacks it: "
                        f"{last.strip()}): connect and rerun, or pass an archive you have with --from FILE")
    return archives[0]


def extract(archive: Path, out: Path, expected: Optional[dict[str, tuple[str, str, str]]] = None) -> dict:
    """Copy the task files out of `archive` into `out` after checking their SHA-256; returns the manifest."""
    expected = FILES if expected is None else expected
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"{archive} is not a readable .tar.gz archive ({exc}): pass the bigbench-{VERSION}.tar.gz "
                        "source archive") from None
    found = {}
    with tar:
        for name, (fmt, member, sha) in expected.items():
            try:
                info = tar.getmember(ROOT + member)
            except KeyError:
                raise UserError(f"{archive} has no {ROOT + member}: pass the bigbench-{VERSION}.tar.gz source "
                                "archive") from None
            data = tar.extractfile(info).read() if info.isfile() else b""
            if hashlib.sha256(data).hexdigest() != sha:
                raise UserError(f"{ROOT + member} in {archive} is not the file of bigbench {VERSION} (SHA-256 "
                                "differs): pass the unmodified source archive")
            found[name] = data
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"source": f"bigbench {VERSION} source distribution", "tasks": {}}
    for name, data in found.items():
        tmp = out / f".{name}.json.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / f"{name}.json")
        fmt, member, sha = expected[name]
        manifest["tasks"][name] = {"format": fmt, "member": ROOT + member, "sha256": sha, "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def get_bigbench(archive: Optional[str] = None) -> Path:
    """Fetch (or read `archive`) and cache the task files; returns the cache folder."""
    out = folder()
    if archive is not None:
        if not Path(archive).is_file():
            raise UserError(f"--from {archive!r} does not exist: give the bigbench-{VERSION}.tar.gz you downloaded")
        extract(Path(archive), out)
        return out
    with tempfile.TemporaryDirectory(prefix="ebt-bigbench-") as tmp:
        extract(download(Path(tmp)), out)
    return out
