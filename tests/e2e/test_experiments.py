"""`ebt experiment s2-ablation` end to end (quick budget)."""


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
