"""`ebt experiment s2-ablation` (quick budget) and `ebt experiment scaling` (trivial budget) end to end."""
import json

from ebt.cli import main


def test_s2_ablation_cli(tmp_path, capsys):
    from ebt.cli import main

    out = tmp_path / "abl"
    argv = ["experiment", "s2-ablation", "--quick", "--steps", "2", "--windows", "1", "--samples", "2",
            "--variants", "full", "--out", str(out)]
    assert main(argv) == 0
    assert "| Full S2 config |" in (out / "table.md").read_text()
    assert (out / "s2_ablation.png").stat().st_size > 0 and (out / "results.json").is_file()
    assert main(argv) == 2                                                     # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_scaling_study_runs_reports_and_resumes(tmp_path, capsys):
    """The trivial budget on two axes (and flops): every configuration one run folder with its measures (points of
    several axes with the same configuration share it), a report with fits and plots; a killed study (one run's
    result lost, another run interrupted before its first checkpoint) finishes only what is missing."""
    out = tmp_path / "study"
    argv = ["experiment", "scaling", "--budget", "trivial", "--axes", "data,width,flops", "--jobs", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    points = sorted((out / "runs").glob("*/point.json"))
    # per model: data 0.5 and 1.0 (the largest, evaluated along the way), width 16 (= params (1, 2, 16), the base)
    # and 32 (= params (1, 2, 32))
    assert len(points) == 8
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["axis"], r["model"]) for r in results["points"]).count(("width", "ebt")) == 2
    assert len(results["points"]) == 12
    report = (out / "report.md").read_text()
    assert "| data | tokens | ebt |" in report and "**EBT vs T++**" in report and "| flops | train_flops |" in report
    assert all((out / f"scaling_{a}.png").is_file() for a in ("data", "width", "flops"))
    record = json.loads(points[0].read_text())
    assert record["train_flops"] == record["flops_per_step"] * record["steps"] > 0
    assert 0 < record["params_non_embedding"] < record["params"]
    untouched = {p: p.stat().st_mtime_ns for p in points}
    lost, interrupted = points[0], points[1]
    lost.unlink()
    interrupted.unlink()
    (interrupted.parent / "checkpoint" / "config.json").unlink()     # as if killed before its first checkpoint
    assert main(argv) == 0
    redone = {p for p in points if not p.is_file() or p.stat().st_mtime_ns != untouched.get(p)}
    assert redone == {lost, interrupted} and all(p.is_file() for p in points)


def test_scaling_points_as_torchrun_jobs(tmp_path):
    """--procs 2: each point trained by 2 gloo processes under torchrun, then measured as usual."""
    out = tmp_path / "study"
    assert main(["experiment", "scaling", "--budget", "trivial", "--axes", "width", "--models", "transformer",
                 "--procs", "2", "--jobs", "1", "--no-progress", "--out", str(out)]) == 0
    points = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/point.json"))]
    assert len(points) == 2 and all(p["ppl"] > 1 for p in points)
    saved = json.loads((out / "runs" / points[0]["run"] / "checkpoint" / "trainer.json").read_text())
    assert saved["world"] == 2


def test_video_scaling_points_train_and_fit_on_their_loss(tmp_path):
    """--task video: points are video-tiny runs at the budget's sizes, measured on the held-out latent loss."""
    out = tmp_path / "study"
    assert main(["experiment", "scaling", "--task", "video", "--budget", "trivial", "--axes", "width", "--jobs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    points = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/point.json"))]
    assert len(points) == 4 and all(p["task"] == "video" and 0 < p["loss"] and p["copy_last_loss"] > 0 for p in points)
    assert {p["dim"] for p in points} == {16, 32} and all(p["tokens"] == p["steps"] * p["batch"] * 15 for p in points)
    report = (out / "report.md").read_text()
    assert "rate on loss" in report and "rate on ppl" not in report and "**EBT vs T++**" in report
