"""Training: one loop for every task (`loop`), the task registry (`registry`), the optimizer (`optim`), checkpoints,
devices and precision, metrics, the data-stream layout across processes (`sharding`) and torchrun (`distributed`).

Imports point down only: this package knows configs, models' interfaces and `ebt.noise`, never a modality.
"""
