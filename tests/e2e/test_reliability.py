"""What training never does: lose a checkpoint (kill -9 at any time, an interrupted checkpoint swap, a full disk),
continue on NaN (divergence stops with exit code 3), let two writers share a run folder, or delete a folder that is
not a run. Read-only and full-disk cases run in a private mount namespace where the machine allows it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ebt.cli import main
from ebt.training.rundir import RunLock

TEXT = ["--preset", "lm-tiny", "--model.dim=32", "--model.layers=2", "--model.heads=2", "--model.context=16",
        "--train.batch_size=4", "--train.eval_batches=1", "--data.max_chars=20000", "--data.val_fraction=0.1",
        "--train.progress=false", "--train.threads=1"]
IMAGE = ["--data.embedded=digits", "--data.image_size=0", "--data.max_images=48", "--model.patch=2", "--model.dim=16",
         "--model.layers=1", "--model.heads=2", "--train.batch_size=8", "--train.eval_batches=1",
         "--train.progress=false", "--train.threads=1"]
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("argv, first", [
    (["--model", "transformer", "--optim.lr=1e9", "--optim.warmup_steps=0"], False),   # Transformer++: NaN loss
    (["--optim.lr=1e9", "--optim.warmup_steps=0"], False),                             # EBT: non-finite thinking
    (["--think.alpha=1e30"], True),                                                    # EBT: the step size itself
    (["--preset", "denoise-tiny", *IMAGE, "--optim.lr=1e12", "--optim.warmup_steps=0"], False),   # image EBT
    (["--preset", "dit-tiny", *IMAGE, "--optim.lr=1e12", "--optim.warmup_steps=0"], False),       # DiT
])
def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys, argv, first):
    """Every model: a huge learning rate (or step size) stops the run with exit code 3 and one line at the first
    non-finite step; the checkpoint of the step before it is kept, finite."""
    base = TEXT if "--preset" not in argv else []
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *base, *argv, "--train.steps=6", "--train.save_every=1", "--out", str(out))
    assert code == 3, err
    assert len(err.strip().splitlines()) == 1 and "training diverged at step " in err
    at_step = int(err.split("training diverged at step ")[1].split(":")[0])
    assert (at_step == 1) == first
    if at_step > 1:
        assert f"the last good checkpoint (step {at_step - 1}) is kept" in err
        assert all(torch.isfinite(t).all() for t in weights(out).values())
        assert json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["step"] == at_step - 1
    else:
        assert "no checkpoint was written" in err and not (out / "checkpoint").exists()


def test_skip_nonfinite_skips_the_updates_of_bad_steps(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *TEXT, "--model", "transformer", "--optim.lr=1e9", "--optim.warmup_steps=0",
                       "--train.steps=4", "--train.skip_nonfinite=5", "--train.log_every=1", "--out", str(out))
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows if r["split"] == "train"] == [0, 1, 2, 3]
    assert all(torch.isfinite(t).all() for t in weights(out).values())


def test_skip_nonfinite_also_skips_non_finite_thinking(tmp_path, capsys):
    """Non-finite thinking gradients in a training step count as skipped steps: the run goes on to its last step
    (whose validation, on the diverged weights, then stops it with exit code 3)."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *TEXT, "--optim.lr=1e10", "--optim.warmup_steps=0", "--train.steps=4",
                       "--train.skip_nonfinite=5", "--train.log_every=1", "--train.eval_every=1000", "--out", str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert code == 3 and "training diverged at step 4" in err, err
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["skipped"] >= 2


def test_resume_after_a_cut_metrics_line_and_with_data_moved_away(tmp_path, capsys, monkeypatch):
    """A metrics line cut short by a kill is dropped on resume; a relative --data path is stored absolute, so the
    run resumes from another folder on the same data."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "corpus.txt").write_text("And it was so. " * 2000)
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", *TEXT, "--data", "corpus.txt", "--train.steps=2", "--train.log_every=1",
                 "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())["config"]
    assert saved["data"]["path"] == str(tmp_path / "a" / "corpus.txt")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code, _, err = run(capsys, "train", "--out", "run", "--resume", "--train.steps=4", "--train.log_every=1")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_kill_9_mid_run_then_resume_is_bit_exact(tmp_path, capsys):
    """A training process killed with SIGKILL after its first checkpoints resumes to the same final weights as a
    run that was never interrupted (and metrics.jsonl holds each step once)."""
    args = [*TEXT, "--train.steps=120", "--train.save_every=10", "--train.eval_every=1000", "--train.log_every=1"]
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0
    victim = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ebt", "train", *args, "--out", str(victim)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (victim / "checkpoint" / "trainer.json").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    capsys.readouterr()
    code, _, err = run(capsys, "train", "--out", str(victim), "--resume")
    assert code == 0, err
    assert_same_weights(tmp_path / "straight", victim)
    steps = [json.loads(line)["step"] for line in (victim / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, 121))


def test_kill_between_the_checkpoint_renames(tmp_path, capsys):
    """A kill between the swap's two renames leaves only `.checkpoint.old`: readers read it, and resuming renames
    it back and continues exactly (a constant learning rate after warm-up, so 3 + 3 steps = 6 steps)."""
    args = [*TEXT, "--optim.warmup_steps=2", "--optim.min_lr_ratio=1", "--optim.alpha_min_lr_ratio=1",
            "--train.eval_every=1000"]
    assert main(["train", *args, "--train.steps=6", "--out", str(tmp_path / "straight")]) == 0
    cut = tmp_path / "cut"
    assert main(["train", *args, "--train.steps=3", "--out", str(cut)]) == 0
    os.replace(cut / "checkpoint", cut / ".checkpoint.old")   # the first rename only
    capsys.readouterr()
    code, _, err = run(capsys, "eval", str(cut), "--json", "--windows", "2")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--out", str(cut), "--resume", "--train.steps=6")
    assert code == 0, err
    assert not (cut / ".checkpoint.old").exists()
    assert_same_weights(tmp_path / "straight", cut)


def test_two_writers_are_refused_and_readers_still_read(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TEXT, "--train.steps=2", "--out", str(out)]) == 0
    lock = RunLock(out).acquire()          # another writer holds the run
    try:
        for extra in (["--resume", "--train.steps=4"], ["--overwrite"]):
            code, _, err = run(capsys, "train", *TEXT, "--out", str(out), *extra)
            assert code == 2 and f"is in use by process {os.getpid()}" in err, err
        code, _, err = run(capsys, "eval", str(out), "--json", "--windows", "2")
        assert code == 0, err
    finally:
        lock.release()
    code, _, err = run(capsys, "train", *TEXT, "--out", str(out), "--resume", "--train.steps=4")
    assert code == 0, err


def test_overwrite_replaces_only_runs(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["train", *TEXT, "--train.steps=2", "--out", str(run_dir)]) == 0
    (run_dir / "stale.txt").write_text("from the old run")
    code, _, err = run(capsys, "train", *TEXT, "--train.steps=2", "--out", str(run_dir), "--overwrite")
    assert code == 0, err
    assert not (run_dir / "stale.txt").exists() and (run_dir / ".ebt-run").is_file()
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "notes.txt").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    for target in (home, home / "work"):
        (target / ".ebt-run").write_text("{}")   # even a marker does not make these deletable
    monkeypatch.chdir(home / "work")
    for target in (str(home), "."):
        code, _, err = run(capsys, "train", *TEXT, "--out", target, "--overwrite")
        assert code == 2 and "--overwrite refuses to delete" in err, err
    assert (home / "notes.txt").read_text() == "keep me"


NAMESPACE = shutil.which("unshare") is not None and os.geteuid() == 0 and \
    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not NAMESPACE, reason="needs root and `unshare -m` for a private tmpfs mount")
def test_full_disk_and_read_only_folders(tmp_path):
    """In a private mount namespace: a 600 kB tmpfs holds one checkpoint (~400 kB) but not a second beside it: the
    second save fails with one line and the first stays intact; remounted read-only, resuming and new runs are
    refused with one line."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ebt = f"{sys.executable} -m ebt"
    args = " ".join(TEXT)
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=600k tmpfs {mnt}
        cd {mnt}
        {ebt} train {args} --train.steps=4 --train.save_every=2 --out run 2> full.err; echo "full $?"
        cat full.err
        {ebt} eval run --json --windows 2 > eval.out 2>&1; echo "eval $?"
        cp full.err eval.out {tmp_path}/
        mount -o remount,ro {mnt}
        {ebt} train {args} --train.steps=6 --out run --resume 2> {tmp_path}/ro_resume.err; echo "ro_resume $?"
        {ebt} train {args} --train.steps=2 --out new 2> {tmp_path}/ro_new.err; echo "ro_new $?"
        """)
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    codes = dict(line.split() for line in res.stdout.splitlines() if line.split()[:1] and
                 line.split()[0] in ("full", "eval", "ro_resume", "ro_new"))
    full = (tmp_path / "full.err").read_text().strip()
    assert codes["full"] == "2" and len(full.splitlines()) == 1, res.stdout + res.stderr
    assert "No space left on device" in full and "the previous checkpoint is intact" in full
    assert codes["eval"] == "0", (tmp_path / "eval.out").read_text()          # the step-2 checkpoint still loads
    for name in ("ro_resume", "ro_new"):
        err = (tmp_path / f"{name}.err").read_text().strip()
        assert codes[name] == "2" and len(err.splitlines()) == 1 and "Read-only file system" in err, err
