"""The paper's studies at a small budget, one module each, run by `ebt experiment NAME`:
s2_ablation.py (Table 2: which System 2 training component makes thinking pay off)."""
