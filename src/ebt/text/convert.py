"""Load checkpoints written by the reference implementation (alexiglad/EBT, Lightning `.ckpt`) into our models.

The reference saves `state_dict` (names prefixed by `model.`) and `hyper_parameters` (its argparse settings).
Settings we do not implement raise `UnsupportedReference` naming them, instead of loading a model that would
silently compute something else.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ebt.config import ModelConfig, RunConfig, ThinkConfig
from ebt.errors import UserError
from ebt.text.models import build_lm
from ebt.training.checkpoint import size_mismatch

EBT_TYPES = {"default": "none", "time_embed": "time_embed", "adaln": "adaln", "adaln_zero": "adaln_zero"}


class UnsupportedReference(UserError):
    """A reference checkpoint uses settings this library does not implement."""


# reference setting -> the value(s) we support
_SUPPORTED = {
    "modality": ("NLP",),
    "normalize_initial_condition": (True,),
    "normalize_initial_condition_only_first_step": (False,),
    "ebt_norm": ("rms",),
    "ebt_act_func": ("silu",),
    "num_modality_processing_mlp_layers": (1,),
    "learnable_process_memory": (False,),
    "clamp_futures_grad": (False,),
    "absolute_clamp": (0.0, 0),
    "sharpen_predicted_distribution": (0.0, 0),
    "soften_target_prob_dist": (0.0, 0),
    "contrastive_loss": (False,),
    "randomize_mcmc_num_steps_final_landscape": (False,),
    "langevin_dynamics_noise_learnable": (False,),
    "weight_initialization_method": ("xavier",),
}


def reference_config(hp: dict, state: dict) -> RunConfig:
    """Translate reference hyper-parameters into a RunConfig (raises UnsupportedReference)."""
    bad = [f"{k}={hp[k]!r}" for k, ok in _SUPPORTED.items() if k in hp and hp[k] not in ok]
    name = hp.get("model_name", "ebt")
    if name not in ("ebt", "baseline_transformer"):
        bad.append(f"model_name={name!r}")
    if hp.get("ebt_type", "default") not in EBT_TYPES and name == "ebt":
        bad.append(f"ebt_type={hp.get('ebt_type')!r}")
    if bad:
        raise UnsupportedReference(f"reference checkpoint uses settings not supported here: {', '.join(bad)}")
    dim = hp.get("override_embedding_dim") or hp["embedding_dim"]
    model = ModelConfig(
        kind="ebt" if name == "ebt" else "transformer",
        vocab_size=state["model.embeddings.weight"].shape[0], dim=dim,
        layers=hp.get("override_transformer_blocks") or hp["num_transformer_blocks"],
        heads=hp["multiheaded_attention_heads"], context=hp["context_length"],
        ffn_mult=float(hp.get("ffn_dim_multiplier") or 1.0),
        conditioning=EBT_TYPES.get(hp.get("ebt_type", "default"), "none"),
        prob_embed=bool(hp.get("vocab_to_embed_uses_prob_dist", False)))
    think = ThinkConfig(
        landscapes=hp.get("mcmc_num_steps", 2), alpha=float(hp.get("mcmc_step_size", 60.0)),
        learn_alpha=bool(hp.get("mcmc_step_size_learnable", False)),
        alpha_lr_mult=float(hp.get("mcmc_step_size_lr_multiplier", 5000.0)),
        init_std=float(hp.get("gaussian_random_noise_scaling", 1.0)),
        detach=not hp.get("no_mcmc_detach", False), truncate=bool(hp.get("truncate_mcmc", False)),
        langevin_std=float(hp.get("langevin_dynamics_noise", 0.0)),
        rand_alpha_scale=float(hp.get("randomize_mcmc_step_size_scale", 1)),
        rand_steps=int(hp.get("randomize_mcmc_num_steps", 0)),
        rand_steps_min=int(hp.get("randomize_mcmc_num_steps_min", 0)),
        replay_size=int(hp.get("mcmc_replay_buffer_size", 192)) if hp.get("mcmc_replay_buffer") else 0,
        replay_frac=float(hp.get("mcmc_replay_buffer_sample_bs_percent", 0.5)))
    return RunConfig(model=model, think=think)


def reference_state_dict(state: dict, kind: str) -> dict:
    """Rename reference parameters to ours (`model.X` -> `energy.X` / `net.X`; alpha -> thinker.alpha)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("model."):
            continue
        name = key[len("model."):]
        if name == "langevin_dynamics_noise_std":  # kept in the config (think.langevin_std)
            continue
        if name == "alpha":
            out["thinker.alpha"] = value.reshape(1)
        else:
            out[("energy." if kind == "ebt" else "net.") + name] = value
    return out


def load_reference(path: str | Path) -> tuple[nn.Module, RunConfig]:
    """Build our model from a reference `.ckpt` file; raises UserError for unreadable or unsupported files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"reference checkpoint {str(path)!r} is a folder: pass the .ckpt file itself")
    if not path.is_file():
        raise UserError(f"reference checkpoint {str(path)!r} does not exist: check the path")
    try:
        with warnings.catch_warnings():   # torch's notes on foreign pickles are not the user's concern
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp, state = dict(ckpt["hyper_parameters"]), ckpt["state_dict"]
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise UserError(f"cannot read {str(path)!r} as a reference checkpoint ({type(exc).__name__}): "
                        "pass a .ckpt saved by the reference trainer") from None
    try:
        cfg = reference_config(hp, state)
    except KeyError as exc:
        raise UnsupportedReference(f"reference checkpoint {str(path)!r} lacks the setting or weight {exc}: pass a "
                                   ".ckpt saved by the reference trainer") from None
    except (TypeError, ValueError) as exc:   # a setting of the wrong type, e.g. a string where a size belongs
        raise UnsupportedReference(f"reference checkpoint {str(path)!r} has a setting of the wrong type ({exc}): pass "
                                   "a .ckpt saved by the reference trainer") from None
    model = build_lm(cfg)
    ours = reference_state_dict(state, cfg.model.kind)
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as exc:   # weight shapes that differ from the settings'
        raise UnsupportedReference(f"reference weights do not match the model built from its settings "
                                   f"({size_mismatch(exc)})") from None
    if missing or unexpected:
        raise UnsupportedReference(f"reference weights do not match the model built from its settings "
                                   f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model, cfg
