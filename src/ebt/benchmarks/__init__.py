"""Benchmarks that print JSON and ratios taken side by side in one process (`ebt bench ...`, scripts in bench/):
train_step.py (build and time training steps), memory.py (peak memory in a subprocess), compare.py (`ebt bench
train`), generation.py (`ebt bench generate`)."""
