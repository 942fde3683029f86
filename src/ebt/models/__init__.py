"""Pure energy functions and baselines (no optimisation loops): the Llama-style backbone and its layers and attention
patterns, the autoregressive text EBT's energy (`ar_ebt`), the Transformer++ (`transformer_pp`), the video models
over continuous frames (`frames`), and the inference passes without autograd (`explicit`) on weights as `packing`
folds them. The custom autograd operators they use are in `ebt.ops`."""
from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.backbone import Backbone, Observed
from ebt.models.transformer_pp import TransformerPP

__all__ = ["AREnergyModel", "ContextEnergy", "Backbone", "Observed", "TransformerPP"]
