"""Custom autograd operators with hand-derived, tested first and second derivatives (EBT training differentiates
every layer twice): one file each, each with its derivation in the docstring.

    rms_norm.py              RMSNorm
    swiglu.py                the SwiGLU gate (used with compiled kernels)
    rope_heads.py            the q/k/v head split with RoPE, exact to any order
    prediction_attention.py  the candidate stream's attention over cached context keys plus its own key
    vocab.py                 the (B, L, V) candidate tensors: embedding, update, cross-entropy, padded logits
    common.py                precision (upcast) and optional torch.compile of the Functions' bodies
"""
