"""Text: autoregressive language modelling with an EBT or the Transformer++ baseline.

    models.py          TextEBT / TextTransformer: losses and the shared inference interface (predict, next_logits)
    stepwise.py        System 1's stepwise gradients (one thinking step's graph held at a time)
    replay.py          System 2's replay buffer
    inference.py       `think`: System 2 thinking over contexts, best-of-N, the KV cache
    generation.py      sampling and KV-cached decoding for both models;  decoding.py: the per-token decoders
    diagnostics.py     whether best-of-N can help (candidate diversity, energy vs cross-entropy);  explore.py:
                       the thinking explorer;  verifier.py: the verifier loss of System 2 training
    evaluate.py        the one held-out evaluator (validation, `ebt eval`, sweeps)
    thinking_sweep.py  perplexity vs forward passes;  energies.py: per-token energies as uncertainty
    tokenizers.py      bytes, Hugging Face tokenizer.json, the embedded BPE; bytes per token (bits per byte)
    corpus.py          raw sources (embedded corpus, text, JSONL, Parquet, saved datasets) and units of work
    shards.py          `ebt data prepare` into memory-mapped token shards, and reading them
    data.py            text in memory and packed windows (over one stream or many shards);  ood.py: OOD sets
    splits.py          a run's tokenizer and training / held-out windows, from its data section
    task.py            the trainer task (registered as "text") and `load_model`
    convert.py         checkpoints written by the reference implementation
    downstream/        downstream tasks: readers, embedded stand-ins, item windows, scoring
"""
