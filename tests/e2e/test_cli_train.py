"""End-to-end: training, resume, checkpoints, generation, evaluation, conversion and bad input via the CLI."""
import json
import math

import pytest
import torch

from ebt.cli import main
from ebt.tasks import fit as train

from conftest import FIXTURES

TINY = ["--preset", "lm-tiny", "--model.dim=32", "--model.layers=2", "--model.heads=2", "--model.context=16",
        "--train.steps=3", "--train.batch_size=4", "--train.eval_every=3", "--train.eval_batches=1",
        "--data.max_chars=20000", "--data.val_fraction=0.1", "--train.progress=false", "--think.alpha=20"]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("model", ["ebt", "transformer"])
def test_train_generate_eval(tmp_path, capsys, model):
    out = tmp_path / model
    code, stdout, _ = run(capsys, "train", *TINY, "--model", model, "--out", str(out))
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["step"] == 3 and math.isfinite(result["val"]["ce"])
    assert (out / "checkpoint" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {r["split"] for r in records}
    assert list((out / "tb").iterdir()), "TensorBoard events missing"

    code, stdout, _ = run(capsys, "generate", str(out), "--prompt", "And God", "--max-new", "5", "--seed", "1")
    assert code == 0 and stdout.startswith("And God")
    code, stdout, _ = run(capsys, "eval", str(out), "--json", "--windows", "4")
    assert code == 0
    res = json.loads(stdout)
    assert set(res) >= {"ce", "ppl", "tokens"} and abs(res["ppl"] - math.exp(res["ce"])) < 1e-6 * res["ppl"]
    # one evaluator: `ebt eval` on the training's validation windows (eval_batches x batch_size = 4) with the same
    # seed reproduces the training's final validation, whatever the batch size
    assert res["ce"] == pytest.approx(result["val"]["ce"], rel=1e-6) and res["tokens"] == result["val"]["tokens"]
    code, stdout, _ = run(capsys, "eval", "text", str(out), "--json", "--windows", "4", "--batch-size", "3")
    assert code == 0 and json.loads(stdout)["ce"] == pytest.approx(res["ce"], rel=1e-6)


def test_resume_continues_exactly(tmp_path, tiny_cfg):
    """A 6-step run stopped after 3 steps and resumed ends with the same weights as 6 steps straight."""
    from ebt.text.task import load_model
    from ebt.config import apply_overrides

    straight = apply_overrides(tiny_cfg, {"train.steps": 6, "train.out_dir": str(tmp_path / "a")})
    train(straight)
    interrupted = apply_overrides(straight, {"train.out_dir": str(tmp_path / "b")})
    assert train(interrupted, stop_at=3).step == 3
    assert train(interrupted, resume=True).step == 6
    a, _ = load_model(tmp_path / "a" / "checkpoint")
    b, _ = load_model(tmp_path / "b" / "checkpoint")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name   # resume is exact, not merely close


def test_refuses_to_clobber_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "train", *TINY, "--out", str(out))
    assert code == 2 and "already exists" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv, words", [
    (["train", "--train.steps=-1"], "train.steps must be >= 1"),
    (["train", "--think.alpha=0"], "think.alpha must be a finite number > 0"),
    (["train", "--model.heads=3"], "does not divide"),
    (["train", "--optim.lrr=1"], "did you mean"),
    (["train", "--data", "/nonexistent/file.txt"], "does not exist"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["generate", "/nonexistent", "--prompt", "x"], "does not exist"),
    (["eval", "/tmp", "--json"], "not an ebt checkpoint"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, words):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path / "r")] if argv[0] == "train" else []))
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1


def test_empty_data_and_wrong_checkpoint_type(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    code, _, err = run(capsys, "train", *TINY, "--data", str(empty), "--out", str(tmp_path / "r"))
    assert code == 2 and "empty" in err
    garbage = tmp_path / "bad.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "convert", str(garbage), str(tmp_path / "conv"))
    assert code == 2 and "cannot read" in err


def test_thinking_options_refused_for_transformer(tmp_path, capsys):
    out = tmp_path / "tpp"
    assert run(capsys, "train", *TINY, "--model", "transformer", "--out", str(out))[0] == 0
    code, _, err = run(capsys, "generate", str(out), "--prompt", "a", "--steps", "3")
    assert code == 2 and "EBT" in err
    code, _, err = run(capsys, "generate", str(out), "--prompt", "a" * 100)
    assert code == 2 and "context" in err


@pytest.mark.skipif(not (FIXTURES / "tiny_time_embed.ckpt").is_file(), reason="no reference fixture")
def test_convert_reference_checkpoint(tmp_path, capsys):
    out = tmp_path / "converted"
    code, stdout, _ = run(capsys, "convert", str(FIXTURES / "tiny_time_embed.ckpt"), str(out))
    assert code == 0 and json.loads(stdout)["conditioning"] == "time_embed"
    code, _, err = run(capsys, "convert", str(FIXTURES / "tiny_time_embed.ckpt"), str(out))
    assert code == 2 and "already exists" in err


def test_help_reads_as_grouped_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for group in ("train and use models:", "evaluate:", "studies and speed:", "checkpoints and presets:"):
        assert group in out
    assert "eval text" in out and "eval thinking" in out and "eval denoise" in out and "eval-" not in out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "text" in out and "thinking" in out and "denoise" in out and "`ebt eval ARGS` means `ebt eval text" in out


def test_older_spellings_still_work():
    from ebt.cli import normalise_argv

    assert normalise_argv(["eval-thinking", "--ebt", "r"]) == ["eval", "thinking", "--ebt", "r"]
    assert normalise_argv(["eval-denoise", "--ebt", "a"]) == ["eval", "denoise", "--ebt", "a"]
    assert normalise_argv(["eval", "runs/x", "--json"]) == ["eval", "text", "runs/x", "--json"]
    assert normalise_argv(["eval", "thinking", "--ebt", "r"]) == ["eval", "thinking", "--ebt", "r"]
    assert normalise_argv(["eval", "--help"]) == ["eval", "--help"]


def test_renamed_key_is_one_note_line(tmp_path, capsys):
    code, stdout, err = run(capsys, "train", *TINY, "--think.steps=2", "--print-config")
    assert code == 0 and "landscapes: 2" in stdout
    assert err.strip() == "ebt: note: config key 'think.steps' is now 'think.landscapes'; the old name still works"


def test_parity_fixtures_from_another_folder(tmp_path):
    """EBT_PARITY_FIXTURES points the parity tests at another folder of fixtures (here a copy of one of ours)."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    for f in FIXTURES.glob("tiny_time_embed.*"):
        shutil.copy(f, tmp_path / f.name)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "unit" / "test_parity.py")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "EBT_PARITY_FIXTURES": str(tmp_path)}, timeout=300)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-2000:]


def test_debug_shows_the_traceback_of_a_user_mistake(tmp_path):
    from ebt.errors import UserError

    with pytest.raises(UserError, match="train.steps must be >= 1"):
        main(["train", *TINY, "--train.steps=0", "--out", str(tmp_path / "r"), "--debug"])
