"""The scaling study (`ebt experiment scaling`): how validation perplexity falls as data, batch size, parameters,
width and depth grow, for the EBT and the Transformer++, with fitted rates and bootstrap intervals.

For each axis a ladder of points varies that quantity with everything else at the budget's base. Every point is an
ordinary run folder (`runs/MODEL-LlayersHheadsDwidth-Ssteps-Bbatch-Eeval-sSEED`: points of several axes with the
same configuration, such as the base, share one run) trained by the same trainer and evaluated afterwards on the same
held-out windows; its measures go to `point.json` there, which marks it done. A study that is killed resumes: done
points are skipped and interrupted ones continue from their last checkpoint. Points run `jobs` at a time in
separate processes with one thread each. FLOPs is not a ladder of its own: the parameter and data points are fitted
again against their training FLOPs (matmul FLOPs counted from one real step, times the steps; element-wise work
excluded). Tasks plug in through POINT_TASKS: how a point's config is built, trained and measured — text (fitted on
validation perplexity and cross-entropy) and video (fitted on the held-out latent SmoothL1 of next-frame predictions;
"tokens" are then frames).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig, save_yaml
from ebt.errors import UserError
from ebt.presets import SIZES
from ebt.text.evaluate import evaluate_text
from ebt.text.splits import heldout_windows, run_tokenizer
from ebt.text.task import load_model
from ebt.training.checkpoint import find_checkpoint, read_config
from ebt.training.flops import matmul_flops, parameter_counts
from ebt.training.loop import train
from ebt.training.registry import task_for
from ebt.video.config import video_tiny
from ebt.video.task import VideoTask, load_video_model

AXES = ("data", "params", "width", "depth", "batch")
FITTED = AXES + ("flops",)
MODELS = ("ebt", "transformer")
X_OF = {"data": "tokens", "params": "params_non_embedding", "width": "dim", "depth": "layers", "batch": "batch",
        "flops": "train_flops"}
"""The measure each axis is fitted against."""


@dataclass(frozen=True)
class Budget:
    """A study's base run and ladders. Ladders: `data` multiplies the base steps (tokens = steps x batch x context),
    `params` lists (layers, heads, width), `width` widths at the base depth, `depth` layers at the base width,
    `batch` batch sizes at the base steps (so tokens grow with the batch, as in the paper's batch scaling)."""
    name: str
    size: tuple[int, int, int]
    """Base (layers, heads, width)."""
    context: int
    batch: int
    steps: int
    lr: float
    """Peak learning rate of points whose size is not in ebt.presets.SIZES (which states one per size)."""
    data: tuple[float, ...]
    params: tuple[tuple[int, int, int], ...]
    width: tuple[int, ...]
    depth: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    eval_windows: int = 64
    max_chars: int = 0
    alpha: float = 50.0
    """EBT step size (lm-tiny's: byte level); alpha_lr_mult = 3 alpha (the reference's S1 rule)."""
    tokenizer: str = "bytes"
    vocab_size: int = 256
    minutes: str = ""
    """What it is meant to take."""
    seeds: int = 1
    """Seeds per point unless the command asks for another number."""


def size_of(name: str) -> tuple[int, int, int]:
    s = SIZES[name]
    return s.layers, s.heads, s.dim


BUDGETS: dict[str, Budget] = {b.name: b for b in (
    Budget("trivial", size=(1, 2, 16), context=8, batch=4, steps=4, lr=3e-3, data=(0.5, 1.0), params=((1, 2, 16),
           (1, 2, 32)), width=(16, 32), depth=(1, 2), batch_sizes=(2, 4), eval_windows=4, max_chars=20000,
           minutes="seconds (tests)"),
    Budget("tiny", size=(2, 2, 64), context=64, batch=16, steps=200, lr=3e-3, seeds=2, data=(0.25, 0.5, 1.0, 2.0),
           params=((1, 2, 32), (2, 2, 48), (2, 2, 64), (3, 2, 96)), width=(32, 48, 64, 96), depth=(1, 2, 3, 4),
           batch_sizes=(4, 8, 16, 32), eval_windows=64, minutes="<= 30 on 2 CPU cores (3 axes)"),
    Budget("small", size=(4, 4, 128), context=64, batch=16, steps=400, lr=3e-3, data=(0.25, 0.5, 1.0, 2.0),
           params=((2, 2, 64), (2, 2, 96), (4, 4, 128), (4, 4, 192), (6, 4, 256)), width=(64, 96, 128, 192, 256),
           depth=(1, 2, 4, 6, 8), batch_sizes=(4, 8, 16, 32, 64), eval_windows=128, minutes="~2 h on 2 CPU cores"),
    Budget("gpu-15min", size=size_of("4xs"), context=256, batch=32, steps=400, lr=2.4e-3, data=(0.25, 0.5, 1.0, 2.0),
           params=(size_of("4xs"), (4, 4, 128), size_of("3xs"), size_of("xxs")), width=(64, 128, 192, 256),
           depth=(1, 2, 4, 6), batch_sizes=(8, 16, 32, 64), eval_windows=256, alpha=500.0,
           tokenizer="embedded-bpe-8192", vocab_size=0, minutes="meant for ~15 min of one GPU, 3 axes (not measured)"),
    Budget("gpu", size=size_of("xxs"), context=256, batch=64, steps=2000, lr=1.2e-3, data=(0.25, 0.5, 1.0, 2.0),
           params=tuple(size_of(n) for n in ("4xs", "3xs", "xxs", "xs")), width=(192, 384, 576, 768),
           depth=(2, 4, 6, 12), batch_sizes=(16, 32, 64, 128), eval_windows=256, alpha=500.0,
           tokenizer="embedded-bpe-8192", vocab_size=0, minutes="one GPU, a few hours"),
)}


def lr_for(budget: Budget, layers: int, heads: int, dim: int) -> float:
    """The stated learning-rate rule: the suggested rate of a size in ebt.presets.SIZES, else the budget's."""
    match = [s.lr for s in SIZES.values() if (s.layers, s.heads, s.dim) == (layers, heads, dim)]
    return match[0] if match else budget.lr


@dataclass(frozen=True)
class Point:
    axis: str
    value: float | int | str
    model: str
    seed: int


def text_point(budget: Budget, point: Point, run_dir: Path, procs: int = 1) -> RunConfig:
    """The run config of a text point: the base with the point's axis changed. With `procs` processes each takes
    batch / procs windows, so the global batch (and the tokens) stay the budget's. Only the params axis changes the
    learning rate (by the size rule); width and depth points keep the base's, so their slopes are not a rate change."""
    layers, heads, dim = budget.size
    steps, batch = budget.steps, budget.batch
    if point.axis == "data":
        steps = max(1, round(budget.steps * float(point.value)))
    elif point.axis == "params":
        layers, heads, dim = point.value
    elif point.axis == "width":
        dim = int(point.value)
    elif point.axis == "depth":
        layers = int(point.value)
    elif point.axis == "batch":
        batch = int(point.value)
    largest_data = point.axis == "data" and float(point.value) == max(budget.data)
    if batch % procs:
        raise UserError(f"--procs {procs} does not divide the batch size {batch} of {point.axis}={point.value}: "
                        "choose a --procs that divides the budget's batch sizes")
    lr = lr_for(budget, layers, heads, dim) if point.axis == "params" else lr_for(budget, *budget.size)
    return RunConfig(
        model=ModelConfig(kind=point.model, vocab_size=budget.vocab_size, dim=dim, layers=layers, heads=heads,
                          context=budget.context, conditioning="time_embed"),
        think=ThinkConfig(landscapes=2, alpha=budget.alpha, alpha_lr_mult=3 * budget.alpha),
        optim=OptimConfig(lr=lr, warmup_steps=max(1, steps // 10)),
        train=TrainConfig(steps=steps, batch_size=batch // procs, seed=point.seed, threads=1, progress=False,
                          eval_every=max(1, steps // 8) if largest_data else steps, eval_batches=4,
                          save_every=max(1, steps // 4), log_every=max(1, steps // 20), out_dir=str(run_dir)),
        data=DataConfig(max_chars=budget.max_chars, tokenizer=budget.tokenizer),
    )


def video_point(budget: Budget, point: Point, run_dir: Path, procs: int = 1):
    """The run config of a video point: video-tiny (moving digits, pixel patches, 16-frame clips) at the budget's size,
    steps, batch and learning rate, with the point's axis changed as for text. The budget's base steps x batch set
    the number of training videos (100 to 2,000), so that small budgets do not spend their time generating data."""
    text = text_point(budget, point, run_dir, procs)
    cfg = video_tiny()
    m = text.model
    cfg.model.kind, cfg.model.dim, cfg.model.layers, cfg.model.heads = m.kind, m.dim, m.layers, m.heads
    cfg.optim, cfg.train = text.optim, text.train
    cfg.data.videos = max(100, min(2000, budget.steps * budget.batch))
    # Widths below the 256 latent values could not remove starting noise outside the input projection's row space
    # (video_tiny's docstring): every point starts its candidates at zero (the reference's `zeros` start), so all
    # widths face the same task.
    cfg.think.init_std = 0.0
    return cfg


def measure_text(model, saved: RunConfig, budget: Budget) -> dict:
    res = evaluate_text(model, heldout_windows(saved, run_tokenizer(saved)), None, budget.eval_windows, batch_size=16)
    return {"loss": res["ce"], "ce": res["ce"], "ppl": res["ppl"], "bpb": res.get("bpb"), "eval_tokens": res["tokens"]}


def load_video_point(run_dir: Path, device: str = "cpu"):
    model, cfg = load_video_model(run_dir)
    return model.to(device), cfg


def measure_video(model, saved, budget: Budget) -> dict:
    task = VideoTask(saved)
    device = next(model.parameters()).device
    batches = max(1, budget.eval_windows // 16)
    res = task.evaluate(model, device, batches, 16)
    return {"loss": res["loss"], "copy_last_loss": res["copy_last_loss"],
            "eval_clips": min(len(task.val_set), batches * 16)}


@dataclass(frozen=True)
class PointTask:
    """How the scaling runner trains and measures points of one task."""
    config: Callable[[Budget, Point, Path, int], Any]
    """(budget, point, run folder, processes) -> the point's run config."""
    load: Callable[..., tuple]
    """(run folder, device=...) -> (model, saved config)."""
    measure: Callable[[Any, Any, Budget], dict]
    """(model, saved config, budget) -> {"loss": the fitted loss, ...}."""
    curve_key: str
    """The key of the fitted loss in the run's validation rows (metrics.jsonl)."""
    preset: str
    """The preset a torchrun job lays the point's YAML over (`ebt train --preset P --config POINT.yaml`)."""


POINT_TASKS: dict[str, PointTask] = {
    "text": PointTask(text_point, load_model, measure_text, "ce", "lm-tiny"),
    "video": PointTask(video_point, load_video_point, measure_video, "loss", "video-tiny"),
}


def plan(budget: Budget, axes: tuple[str, ...], models: tuple[str, ...], seeds: int) -> list[Point]:
    ladders = {"data": budget.data, "params": budget.params, "width": budget.width, "depth": budget.depth,
               "batch": budget.batch_sizes}
    return [Point(axis, value, model, seed) for axis in axes for value in ladders[axis] for model in models
            for seed in range(seeds)]


def run_name(cfg) -> str:
    """The run folder of a configuration (what the points of every axis that use it share)."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    return f"{m.kind}-L{m.layers}H{m.heads}D{m.dim}-S{t.steps}-B{t.batch_size}-E{t.eval_every}-lr{o.lr:g}-s{t.seed}"


def train_run(cfg, task, run_dir: Path, resume: bool, procs: int, preset: str) -> None:
    """Train a point's run here on `task` (already built: its data are not read again), or as a torchrun job of
    `procs` processes (its config passed as YAML over `preset`, a preset of the same task)."""
    overwrite = not resume and run_dir.exists()
    if procs <= 1:
        train(cfg, resume=resume, overwrite=overwrite, task=task)
        return
    config = run_dir.parent / f"{run_dir.name}.yaml"
    save_yaml(cfg, config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "ebt",
           "train", "--preset", preset, "--config", str(config), "--out", str(run_dir)]
    cmd += ["--resume"] if resume else (["--overwrite"] if overwrite else [])
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
                              ).returncode
    if code != 0:
        errors = [line for line in log.read_text().splitlines() if "error:" in line]
        raise UserError(f"the torchrun job of {run_dir.name} failed"
                        f"{' (' + errors[-1].strip() + ')' if errors else ''}: its output is in {str(log)!r}")


def run_point(task: str, budget: Budget, point: Point, run_dir: Path, procs: int = 1) -> dict:
    """Train (or finish) one point's run and measure it; writes RUN/point.json. Runs in a worker process."""
    torch.set_num_threads(1)
    plug = POINT_TASKS[task]
    cfg = plug.config(budget, point, run_dir, procs)
    task_obj = task_for(cfg)
    torch.manual_seed(0)
    probe = task_obj.build_model()
    window = next(task_obj.train_batches(1))
    # matmul FLOPs grow linearly with the batch: one window measured, times the global batch
    flops_per_step = matmul_flops(lambda: probe(window).loss.backward()) * cfg.train.batch_size * procs
    counts = parameter_counts(probe)
    del probe
    started = time.time()
    done_step = 0
    checkpoint = find_checkpoint(run_dir) if run_dir.exists() else None   # also one a kill left mid-swap
    if checkpoint is not None and (checkpoint / "config.json").is_file():
        done_step = read_config(checkpoint)[1].get("step", 0)
    if done_step < cfg.train.steps:
        train_run(cfg, task_obj, run_dir, done_step > 0, procs, plug.preset)
    model, saved = plug.load(run_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    measured = plug.measure(model, saved, budget)
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    record = {"model": point.model, "seed": point.seed, "run": run_dir.name, "task": task, **measured,
              "tokens": cfg.train.steps * cfg.train.batch_size * procs * cfg.model.context, "steps": cfg.train.steps,
              "batch": cfg.train.batch_size * procs, "dim": cfg.model.dim, "layers": cfg.model.layers, **counts,
              "flops_per_step": flops_per_step, "train_flops": flops_per_step * cfg.train.steps,
              "seconds": round(time.time() - started, 1), "lr": cfg.optim.lr,
              "curve": [{"tokens": r["step"] * cfg.train.batch_size * procs * cfg.model.context,
                         "loss": r[plug.curve_key]} for r in curve if r.get("split") == "val"]}
    write_record(run_dir, record)
    return record


def write_record(run_dir: Path, record: dict) -> None:
    tmp = run_dir / ".point.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / "point.json")


def read_record(run_dir: Path):
    """A run's point.json, or None (not done, or a damaged file: the run is measured again)."""
    try:
        return json.loads((run_dir / "point.json").read_text())
    except (OSError, ValueError):
        return None


def _run_point(args: tuple) -> dict:
    """One run; a run that fails (diverges, say) is recorded as failed and left out of the fits, so that the study
    finishes and reports what it could."""
    task, budget, point, run_dir, procs = args
    try:
        return run_point(task, budget, point, run_dir, procs)
    except UserError as exc:
        record = {"model": point.model, "seed": point.seed, "run": run_dir.name, "task": task, "failed": str(exc)}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run_dir, record)
        return record


@dataclass
class StudySettings:
    budget: str = "tiny"
    axes: tuple[str, ...] = ("data", "params", "width")
    models: tuple[str, ...] = MODELS
    seeds: int = 0
    """0: the budget's."""
    jobs: int = 2
    procs: int = 1
    """Processes per point (> 1: each point a torchrun job, e.g. one per GPU)."""
    task: str = "text"
    progress: bool = True


def check_settings(s: StudySettings) -> Budget:
    if s.budget not in BUDGETS:
        raise UserError(f"unknown budget {s.budget!r}: choose one of {', '.join(BUDGETS)}")
    bad = [a for a in s.axes if a not in FITTED]
    if bad or not s.axes:
        raise UserError(f"unknown axis {bad[0] if bad else '(none)'!r}: choose from {', '.join(FITTED)}")
    bad = [m for m in s.models if m not in MODELS]
    if bad or not s.models:
        raise UserError(f"unknown model {bad[0] if bad else '(none)'!r}: choose from {', '.join(MODELS)}")
    if s.task not in POINT_TASKS:
        raise UserError(f"unknown task {s.task!r}: choose from {', '.join(POINT_TASKS)}")
    for name, value, low in (("seeds", s.seeds, 0), ("jobs", s.jobs, 1), ("procs", s.procs, 1)):
        if value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}" + (" (0: the budget's)" if low == 0 else ""))
    return BUDGETS[s.budget]


def run_study(out: Path, s: StudySettings) -> list[dict]:
    """Run (or resume) every point of the study into OUT/runs and return their records."""
    budget = check_settings(s)
    axes = tuple(dict.fromkeys(a2 for a in s.axes for a2 in (("params", "data") if a == "flops" else (a,))))
    points = plan(budget, axes, s.models, s.seeds or budget.seeds)
    runs = out / "runs"
    study = {"budget": json.loads(json.dumps(asdict(budget))), "task": s.task}
    if (out / "study.json").is_file():
        try:
            saved = json.loads((out / "study.json").read_text())
            same = saved["budget"] == study["budget"] and saved.get("task", "text") == s.task
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{str(out / 'study.json')!r} is damaged: choose a new --out") from None
        if not same:
            raise UserError(f"{str(out)!r} holds a study of another budget definition or task: choose a new --out")
    runs.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({**study, "axes": list(s.axes), "models": list(s.models),
                                                "seeds": s.seeds or budget.seeds}, indent=1))
    uses = {p: run_name(POINT_TASKS[s.task].config(budget, p, runs, s.procs)) for p in points}
    measured, todo = {}, {}
    for p, name in uses.items():
        record = read_record(runs / name)
        if record is not None:
            measured[name] = record
        elif name not in todo:
            todo[name] = (s.task, budget, p, runs / name, s.procs)
    bar = None
    if s.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(measured) + len(todo), initial=len(measured), desc=f"scaling {s.budget}", unit="run")
    try:
        if s.jobs == 1 or len(todo) <= 1:
            for name, job in todo.items():
                measured[name] = _run_point(job)
                bar is not None and bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from concurrent.futures import as_completed

            with ProcessPoolExecutor(s.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_run_point, job): name for name, job in todo.items()}
                for future in as_completed(futures):
                    measured[futures[future]] = future.result()
                    bar is not None and bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [{"axis": p.axis, "value": p.value, **measured[name], "task": s.task} for p, name in uses.items()]


