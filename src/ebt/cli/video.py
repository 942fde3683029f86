"""`ebt eval video` (rollouts of video checkpoints against copy-last-frame) and video generation for `ebt generate`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ebt.cli.common import add_think_args, think_options
from ebt.errors import UserError
from ebt.training.checkpoint import find_checkpoint
from ebt.training.devices import check_fits
from ebt.training.rundir import check_output_file, prepare_output
from ebt.video.data import all_clips, cut_clips, heldout_clips, load_videos
from ebt.video.evaluate import VideoEvalSettings, evaluate_video, markdown
from ebt.video.models import rollout
from ebt.video.render import save_rollout
from ebt.video.task import load_video_model


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="video run or checkpoint folders (EBT, Transformer++)")
    p.add_argument("--context", type=int, help="frames given before generating (default: the first checkpoint's "
                   "video.context_frames, 5 as in the reference's test)")
    p.add_argument("--horizon", type=int, default=5, help="frames generated after them")
    p.add_argument("--clips", type=int, default=64, help="held-out clips evaluated (at most)")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds per clip for EBTs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", help="other held-out videos (default: the first checkpoint's held-out clips)")
    p.add_argument("--data-seed", type=int, help="embedded moving digits: generate the held-out clips from this seed "
                   "(default: the run's; the run validated on its own, so report on another)")
    p.add_argument("--out", help="also write video.md and video.json into this folder (a new or empty one)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out, replacing its files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_think_args(p)


def evaluate(args: argparse.Namespace) -> int:
    """Roll video checkpoints out on held-out clips: latent SmoothL1/MSE and pixel MSE/PSNR per horizon step, NFE,
    against copy-last-frame."""
    found = [find_checkpoint(c).resolve() for c in args.checkpoints]
    if len(set(found)) < len(found):
        raise UserError("a checkpoint is given twice (a run folder and its checkpoint folder count as one): name each "
                        "once")
    loaded = [load_video_model(c) for c in args.checkpoints]
    first = loaded[0][1]
    shapes = {(cfg.data.image_size, cfg.data.channels) for _, cfg in loaded}
    if len(shapes) > 1:
        raise UserError(f"the checkpoints read frames of different sizes/channels {sorted(shapes)}: compare models "
                        "trained on the same frames")
    s = VideoEvalSettings(context=first.video.context_frames if args.context is None else args.context,
                          horizon=args.horizon, clips=args.clips,
                          seeds=args.seeds, batch_size=args.batch_size, options=think_options(args))
    if s.options is not None and not any(m.can_think for m, _ in loaded):
        raise UserError("thinking options (--steps, --samples, ...) need an EBT checkpoint")
    changes = {"path": args.data} if args.data else {}
    if args.data_seed is not None:
        if args.data or first.data.path:
            raise UserError("--data-seed regenerates the embedded moving digits: it does not apply to videos from "
                            "files (--data, or a run trained on them)")
        changes["seed"] = args.data_seed
    data = type(first.data)(**{**vars(first.data), **changes})
    # the run's own held-out clips (or another seed's), or every clip of the videos given with --data
    if args.overwrite and not args.out:
        raise UserError("--overwrite applies to --out: add --out FOLDER or drop --overwrite")
    length = s.context + s.horizon
    frame_bytes = 4 * data.channels * data.image_size ** 2   # float32 pixels of one frame, read at data.stride
    check_fits(4.0 * s.clips * length * data.stride * frame_bytes, torch.device("cpu"),
               f"{s.clips} clips of {length} frames", "use a shorter --horizon or fewer --clips")
    out = prepare_output(Path(args.out), args.overwrite) if args.out else None   # refused before any work
    clips = (all_clips(data, length) if args.data else heldout_clips(data, length, first.clip_frames)).clips
    names = [Path(c).name or c for c in args.checkpoints]
    if len(set(names)) < len(names):
        names = [str(c) for c in args.checkpoints]
    result = evaluate_video({f"{n} ({m.kind})": m for n, (m, _) in zip(names, loaded)}, clips, s)
    table = markdown(result)
    if out is not None:
        (out / "video.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "video.md").write_text(table + "\n")
    print(json.dumps(result) if args.json else table)
    return 0


def generate_video(args: argparse.Namespace) -> int:
    """Continue a clip with a video checkpoint: a GIF (truth | prediction) and a PNG strip with per-frame energies."""
    if not args.out:
        raise UserError("a video checkpoint needs --out FILE.gif (the PNG strip goes beside it)")
    out = check_output_file(Path(args.out), args.overwrite, "--out", (".gif",))
    strip = check_output_file(out.with_suffix(".png"), args.overwrite, "the PNG strip beside --out")
    text = [f"--{k.replace('_', '-')}" for k in ("prompt", "max_new", "temperature", "top_p") if getattr(args, k) is not None]
    if text:
        raise UserError(f"{text[0]} applies to text checkpoints: a video checkpoint continues a clip (--input, "
                        "default: a held-out clip)")
    model, cfg = load_video_model(args.checkpoint)
    options = think_options(args)
    model.check_options(options)
    context = cfg.video.context_frames if args.context is None else args.context
    if not 1 <= context <= model.window:
        raise UserError(f"--context {context} must be between 1 and the model's trained context of {model.window} "
                        "frames")
    frames = 10 if args.frames is None else args.frames
    if frames < 1:
        raise UserError(f"--frames must be >= 1, got {frames}")
    # the clip, its prediction and their rendering, in float32 pixels
    frame_bytes = 4 * cfg.data.channels * cfg.data.image_size ** 2
    check_fits(4.0 * (context + frames) * cfg.data.stride * frame_bytes, torch.device("cpu"), f"{frames} frames",
               "generate fewer --frames")
    if args.input:
        name, video = load_videos(args.input, cfg.data)[0]
        clip = cut_clips(name, video, min(context + frames, len(video[::cfg.data.stride])), cfg.data.stride)[0]
        if len(clip) < context:
            raise UserError(f"{args.input!r} has {len(clip)} frame(s) at stride {cfg.data.stride}, fewer than "
                            f"--context {context}")
        clip = clip * 2 - 1
    else:
        clip = heldout_clips(cfg.data, context + frames, cfg.clip_frames).clips[0]   # the first held-out clip
    torch.manual_seed(args.seed or 0)   # Langevin noise (--langevin) draws from the global generator
    gen = torch.Generator().manual_seed(args.seed or 0)
    latents = model.encode_clips(clip[None])
    out_roll = rollout(model, latents[:, :context], frames, options, gen, use_cache=not args.no_cache)
    pred = model.encoder.decode(out_roll.latents[0])
    truth = clip[context:context + frames]
    energies = None if out_roll.energies is None else [float(e) for e in out_roll.energies[0]]
    save_rollout((clip[:context] + 1) / 2, (truth + 1) / 2 if len(truth) == frames else None, (pred + 1) / 2,
                 energies, out, strip)
    pixel_mse = [float(((p - t) ** 2).mean()) for p, t in zip(pred, truth)]
    print(json.dumps({"gif": str(out), "strip": str(strip), "context": context, "frames": frames,
                      "energies": energies, "pixel_mse": pixel_mse, "nfe": out_roll.nfe}))
    return 0
