"""Video: next-frame prediction in a continuous latent with an autoregressive EBT or a Transformer++ regressor
(config, data, frame encoders, models, the trainer task, evaluation and rendering)."""
