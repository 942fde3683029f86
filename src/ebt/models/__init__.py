"""Pure energy functions and baselines (no optimisation loops): the Llama-style backbone and its layers, the
autoregressive text EBT's energy (`ar_ebt`) and the Transformer++ (`transformer_pp`). The custom autograd
operators they use are in `ebt.ops`."""
from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.backbone import Backbone, Observed
from ebt.models.transformer_pp import TransformerPP

__all__ = ["AREnergyModel", "ContextEnergy", "Backbone", "Observed", "TransformerPP"]
