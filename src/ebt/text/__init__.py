"""Text: autoregressive language modelling with an EBT or the Transformer++ baseline.

    models.py          TextEBT / TextTransformer: losses and the shared inference interface (predict, next_logits)
    stepwise.py        System 1's stepwise gradients (one thinking step's graph held at a time)
    replay.py          System 2's replay buffer
    inference.py       `think`: System 2 thinking over contexts, best-of-N, the KV cache
    generation.py      sampling and KV-cached decoding for both models
    evaluate.py        the one held-out evaluator (validation, `ebt eval`, sweeps)
    thinking_sweep.py  perplexity vs forward passes;  energies.py: per-token energies as uncertainty
    data.py            byte tokenizer, embedded corpus, user files, packed windows;  ood.py: embedded OOD sets
    task.py            the trainer task (registered as "text") and `load_model`
    convert.py         checkpoints written by the reference implementation
"""
