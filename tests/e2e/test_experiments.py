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
    """The trivial budget on two axes: every point a run folder with its measures, a report with fits and plots; a
    killed study (one point's result lost, another point interrupted mid-run) finishes only what is missing."""
    out = tmp_path / "study"
    argv = ["experiment", "scaling", "--budget", "trivial", "--axes", "data,width,flops", "--jobs", "1",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    points = sorted((out / "runs").glob("*/point.json"))
    assert len(points) == 12          # data (2) + width (2) + params (2, for flops) x 2 models x 1 seed
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
