"""EBT vs Transformer++ training step, side by side in one process: `ebt bench train --pair` with the CPU setting
of docs/performance.md as defaults (dim 256, 4 layers, 4 heads, context 128, batch 8, one thread).

    python bench/train_pair.py --vocab 256                      # ours vs Transformer++
    python bench/train_pair.py --vocab 8192 --reference         # ... and the reference-style EBT
    python bench/train_pair.py --vocab 256 --set think.stepwise_grad=true --variant math:model.attn_impl=math

Any other `ebt bench train` option passes through (see `ebt bench --help`).
"""
import sys

from ebt.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = {"--size": "cpu", "--ctx": "128", "--batch": "8", "--threads": "1", "--steps": "9"}
    for flag, value in defaults.items():
        if flag not in args and not any(a.startswith(flag + "=") for a in args):
            args += [flag, value]
    sys.exit(main(["bench", "train", "--pair", *args]))
