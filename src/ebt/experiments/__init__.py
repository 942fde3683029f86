"""The paper's studies at a small budget, run by `ebt experiment NAME`: s2_ablation.py (Table 2: which System 2
training component makes thinking pay off); scaling.py, scaling_report.py and fitting.py (the scaling study and its
fitted rates); downstream.py (Table 3 and Fig. 7: downstream tasks with thinking curves)."""
