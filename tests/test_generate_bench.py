"""Smoke test of the KV-cache generation benchmark (the numbers themselves come from running the script)."""
import json
import runpy
import sys

from conftest import ROOT


def test_generate_cache_benchmark_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["generate_cache.py", "--ctx", "16", "--new", "2", "--dim", "16", "--layers", "1",
                                      "--heads", "2", "--reps", "1", "--json"])
    runpy.run_path(str(ROOT / "bench" / "generate_cache.py"), run_name="__main__")
    result = json.loads(capsys.readouterr().out)
    assert set(result["tokens_per_s"]) == {"cached", "uncached", "reference"}
    assert all(v > 0 for v in result["tokens_per_s"].values())
