"""`ebt bench` and the scripts in bench/: they run, report ratios, and measure what they claim."""
import json
import os
import runpy
import subprocess
import sys

import pytest
import torch

from ebt.benchmarks.memory import measure_memory
from ebt.benchmarks.train_step import TrainSpec, load_reference_style
from ebt.cli import main
from ebt.config import ModelConfig, ThinkConfig
from ebt.text.models import TextEBT
from ebt.text.thinking_sweep import SWEEP

from conftest import ROOT


TINY = ["--size", "tiny", "--ctx", "8", "--batch", "2", "--vocab", "32", "--steps", "1", "--warmup", "1",
        "--threads", "1"]


def test_bench_train_pair_reports_ratios(capsys):
    assert main(["bench", "train", "--pair", "--reference", "--no-memory", "--json",
                 "--variant", "math:model.attn_impl=math", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"ebt", "math", "ebt-ref", "transformer"}
    assert rows["transformer"]["time_ratio"] == 1.0                  # the baseline
    assert rows["ebt"]["time_ratio"] > 1.5   # two thinking steps with their second-order graph cost more than one pass
    assert all(r["step_ms"] > 0 and r["time_ratio"] > 0 for r in rows.values())


def test_peak_memory_is_measured_in_a_subprocess():
    """The growth counts what a training step keeps (weights, gradients and AdamW's two moments: 4x the weights, 16
    MiB of them here in the two vocabulary-sized matrices) and not the ~300 MiB of the Python and torch runtime."""
    spec = TrainSpec(model="ebt", dim=64, layers=1, heads=2, ctx=8, batch=2, vocab=32768, threads=1)
    weights_mib = sum(p.numel() * p.element_size() for p in TextEBT(
        ModelConfig(vocab_size=32768, dim=64, layers=1, heads=2, context=8), ThinkConfig()).parameters()) / 2**20
    mem = measure_memory(spec, 1)
    assert "error" not in mem, mem
    assert 4 * weights_mib <= mem["mem_mib"] < 4 * weights_mib + 200 < mem["peak_rss_mib"]


@pytest.mark.parametrize("model", ["ebt", "transformer"])
def test_bench_generate(capsys, model):
    """Both inference paths and the uncached mode run side by side, with identical greedy tokens and an operator
    count per token that shows what the explicit passes save."""
    assert main(["bench", "generate", "--model", model, "--size", "tiny", "--ctx", "16", "--prompt", "4", "--new", "3",
                 "--steps", "1", "--threads", "1", "--uncached", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["tokens_per_s"]) == {"autograd", "explicit", "autograd_uncached"}
    assert all(v > 0 for v in res["tokens_per_s"].values()) and res["identical_tokens"]
    assert res["max_logit_relative_difference"] < 1e-5   # float32 round-off between the paths
    assert set(res["decode_tokens_per_s"]) == set(res["tokens_per_s"])   # the tokens after the first, per mode
    assert all(v > 0 for v in res["decode_tokens_per_s"].values())
    ops = res["ops_per_token"]
    assert 0 < ops["explicit"] < ops["autograd"]


def test_bench_rejects_bad_override(capsys):
    assert main(["bench", "train", "--set", "model.attn_impl=flash", "--no-memory", *TINY]) == 2
    assert "attn_impl" in capsys.readouterr().err


@pytest.mark.parametrize("conditioning", ["time_embed", "pred_embed", "none", "adaln"])
def test_reference_style_baseline_matches_ours(conditioning):
    ReferenceStyleEBT = load_reference_style().ReferenceStyleEBT
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=13, dim=16, layers=2, heads=2, context=6, conditioning=conditioning)
    ours = TextEBT(mc, ThinkConfig(landscapes=2, alpha=2.0)).double()
    ref = ReferenceStyleEBT(mc, ThinkConfig(landscapes=2, alpha=2.0)).double()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(1, 13, (2, 7))
    z0 = torch.randn(2, 6, 13, dtype=torch.float64)
    losses = []
    for m in (ours, ref):
        out = m(ids, z0=z0.clone(), training=True)
        out.loss.backward()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_gpu_suite_tiny_smoke(capsys, monkeypatch):
    suite = runpy.run_path(str(ROOT / "bench" / "gpu_suite.py"))
    monkeypatch.setitem(suite["main"].__globals__, "MODELS", suite["MODELS"][::3])  # Transformer++ and ours
    assert suite["main"](["--tiny", "--no-memory"]) == 0
    table = capsys.readouterr().out
    assert "| tiny | fp32 | Transformer++ |" in table and "EBT ours (pred_embed)" in table
    assert "error" not in table.lower()


def test_train_pair_script(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_pair.py", *TINY, "--no-memory"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "bench" / "train_pair.py"), run_name="__main__")
    assert exc.value.code == 0
    assert "| transformer |" in capsys.readouterr().out


def test_attention_blocks_experiment_keeps_gradients(capsys, monkeypatch):
    """bench/attention_blocks.py: query blocks give the one-call gradients (the experiment's exactness claim)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    tool = runpy.run_path(str(ROOT / "bench" / "attention_blocks.py"))
    assert tool["main"](["--batch", "1", "--heads", "2", "--ctx", "9", "--head-dim", "4", "--blocks", "1,2,4",
                         "--rounds", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["time_vs_one_block"]) == {"1", "2", "4"}
    assert max(res["max_rel_grad_diff"].values()) < 1e-5


def test_page_faults_script_smoke(capsys, monkeypatch):
    """Smoke test: runs and reports per-setting counts (tiny tensors stay under the 2 MB huge-page threshold)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    tool = runpy.run_path(str(ROOT / "bench" / "page_faults.py"))
    assert tool["main"](["--tiny", "--vocab", "64", "--steps", "1", "--models", "ebt", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["huge_pages"], r["freed_memory_kept"]) for r in rows] == [(True, True), (True, False), (False, False)]
    assert all(r["user_ms"] > 0 and r["peak_rss_mib"] > 0 for r in rows)


def test_thinking_sweep_floor_counts_every_row():
    """bench/thinking_sweep.py --floor (a subprocess: it sets the process's malloc thresholds): both paths give the
    same cross-entropies to float32 round-off (1.1e-5 relative measured), every row is counted, one descent step
    counts the FLOPs of its matrix products worked out by hand, and best-of-N rows cost N times one candidate."""
    windows, ctx, dim = 2, 16, 16
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "thinking_sweep.py"), "--windows", str(windows),
                          "--ctx", str(ctx), "--dim", str(dim), "--layers", "1", "--heads", "2", "--floor", "--json"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["max_ce_relative_difference"] < 1e-4
    rows = res["matmul_gflop_by_row"]
    assert list(rows) == [label for label, _ in SWEEP]
    assert sum(rows.values()) == pytest.approx(res["matmul_gflop"], rel=1e-4)
    # best-of-N: the context passes once, then N candidates of 3 steps and a final energy each
    per_candidate = (rows["best-of-10"] - rows["best-of-5"]) / 5
    assert rows["best-of-5"] - rows["best-of-2"] == pytest.approx(3 * per_candidate, rel=1e-3)
    step = (rows["think longer (+3 steps)"] - rows["think longer (+1 step)"]) / 2 * 1e9   # two more steps
    assert rows["think longer (+1 step)"] - rows["trained steps"] == pytest.approx(step / 1e9, rel=1e-3)
    model = TextEBT(ModelConfig(dim=dim, layers=1, heads=2, context=ctx, conditioning="time_embed"), ThinkConfig())
    keys = ctx + model.energy.prefix      # one query block at this length: every candidate row sees every key
    V, D = model.cfg.vocab_size, dim      # the feed-forward width is dim here
    linear = 2 * 7 * D * D                # q, k, v, o, gate, up, down: forward and input gradient
    attention = 4 * keys * D              # scores, weighted values, and their two input gradients
    vocab = 2 * V * D                     # candidates into the embedding, and the update back
    assert step == pytest.approx(2 * windows * ctx * (linear + attention + vocab), rel=1e-3)   # 2 FLOPs per MAC
    final_energy = 2 * windows * ctx * (linear + attention + vocab) / 2                        # the forward half
    assert per_candidate * 1e9 == pytest.approx(3 * step + final_energy, rel=1e-3)
    assert 0 < res["matmul_floor_s"] < res["seconds"]["explicit"]


def test_alloc_peak_extrapolates_the_batch_exactly(capsys, monkeypatch):
    """bench/alloc_peak.py: the peak predicted for batch 4 from batches 2 and 3 is the peak measured at batch 4."""
    monkeypatch.setattr(sys, "path", list(sys.path))   # the script puts src/ on sys.path
    tool = runpy.run_path(str(ROOT / "bench" / "alloc_peak.py"))
    args = ["--size", "tiny", "--ctx", "8", "--vocab", "50", "--threads", "1"]
    assert tool["main"]([*args, "--batch", "2", "--predict-batch", "4"]) == 0
    predicted = json.loads(capsys.readouterr().out)["predicted_peak_mib"]
    assert tool["main"]([*args, "--batch", "4"]) == 0
    measured = json.loads(capsys.readouterr().out)["peak_mib"]
    assert predicted == pytest.approx(measured, rel=0.02)
    from ebt.ops import vocab                            # the tool's kernel patches do not outlive it
    assert vocab._row_chunks.__module__ == "ebt.ops.vocab" and vocab.padded_vocab(7, torch.device("cpu")) == 7


def test_s1_training_keeps_one_step_of_candidate_tensors():
    """With stepwise gradients, the training step frees each step's (B, L, V) logits, probabilities and the scratch
    start as soon as they are used: its peak is lower than when every step's logits are kept, by about 3 (B, L, V)
    float32 tensors (the start, an earlier step's logits and the stale update result)."""
    tool = runpy.run_path(str(ROOT / "bench" / "alloc_peak.py"))
    spec = TrainSpec(model="ebt", dim=16, layers=1, heads=2, ctx=32, batch=4, vocab=4096, device="cpu",
                     think_steps=3)
    one = 4 * 32 * 4096 * 4
    _, lean, _ = tool["measure"](spec, False)
    _, kept, _ = tool["measure"](TrainSpec(**{**spec.__dict__, "overrides": {"think.keep_logits": "true"}}), False)
    assert max(kept) - max(lean) > 2.5 * one


def test_generate_cache_benchmark_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["generate_cache.py", "--ctx", "16", "--new", "2", "--dim", "16", "--layers", "1",
                                      "--heads", "2", "--reps", "1", "--json"])
    runpy.run_path(str(ROOT / "bench" / "generate_cache.py"), run_name="__main__")
    result = json.loads(capsys.readouterr().out)
    assert set(result["tokens_per_s"]) == {"cached", "uncached", "reference"}
    assert all(v > 0 for v in result["tokens_per_s"].values())


@pytest.mark.skipif(not os.environ.get("EBT_SLOW_TESTS"), reason="compiles with inductor (~30 s): set EBT_SLOW_TESTS=1")
def test_decode_options_script_compares_wrappers_side_by_side(capsys, monkeypatch):
    """bench/decode_options.py: two compiled copies of the token function (Python and C++ wrapper) decode the same
    tokens with the same logits, each timed."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    tool = runpy.run_path(str(ROOT / "bench" / "decode_options.py"))
    args = ["--dim", "16", "--layers", "1", "--heads", "2", "--vocab", "32", "--ctx", "12", "--prompt", "6",
            "--rounds", "1", "--variants", "python:;cpp:cpp_wrapper=1", "--json"]
    assert tool["main"](args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["identical_logits"] and res["tokens_timed_per_variant"] == 5
    assert set(res["ms_per_token"]) == {"python", "cpp"} and min(res["ms_per_token"].values()) > 0
