from ebt.models.ar_ebt import AREnergyModel, ContextEnergy
from ebt.models.backbone import Backbone, Observed
from ebt.models.transformer_pp import TransformerPP

__all__ = ["AREnergyModel", "ContextEnergy", "Backbone", "Observed", "TransformerPP"]
