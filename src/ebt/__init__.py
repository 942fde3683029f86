"""Energy-Based Transformers: models that predict by gradient descent on a learned energy (arXiv 2507.02092)."""
from ebt.checkpoint import load_model, save_checkpoint
from ebt.config import DataConfig, ModelConfig, OptimConfig, RunConfig, ThinkConfig, TrainConfig, apply_overrides
from ebt.convert import load_reference
from ebt.data.text import ByteTokenizer
from ebt.errors import UserError
from ebt.generate import SampleOptions, generate
from ebt.inference import ThinkOptions, think
from ebt.lm import TextEBT, TextTransformer, build_lm
from ebt.presets import PRESETS, get_preset
from ebt.thinking import Thinker, Thought
from ebt.train import train as fit

__version__ = "0.1.0"
__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "ThinkConfig", "TrainConfig", "apply_overrides",
    "TextEBT", "TextTransformer", "build_lm", "Thinker", "Thought", "ThinkOptions", "think", "SampleOptions",
    "generate", "fit", "load_model", "save_checkpoint", "load_reference", "PRESETS", "get_preset", "UserError", "ByteTokenizer",
]
