"""Downstream evaluations (`ebt eval downstream`): task items in their published formats (items.py), embedded
stand-ins (standins.py), the BigBench / SQuAD files from the package index (bigbench.py), items as model windows
(windows.py), per-task metrics (scoring.py) and task names (tasks.py). The study across checkpoints and thinking
settings is `ebt.experiments.downstream`."""
