"""The README's examples stay true: the Python API block runs, CI runs the README's test command."""
import re

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = blocks("python")[0]
    code = code.replace('"train.steps": 20', '"train.steps": 4, "train.progress": False, "data.max_chars": 50000')
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("And God said")
    assert (tmp_path / "runs" / "readme" / "checkpoint" / "model.safetensors").is_file()


def test_ci_runs_the_readme_test_command():
    setup = blocks("bash")[:2]
    assert len(setup) == 2 and "ebt train --preset lm-tiny" in setup[0] and "ebt generate" in setup[0]
    test_cmd = setup[1].strip()
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_cli_examples_parse():
    """Every `ebt ...` line of the CLI block names a real subcommand."""
    from ebt.cli import command_names

    for line in blocks("bash")[2].splitlines():
        if line.startswith("ebt "):
            assert line.split()[1] in command_names(), line


@pytest.mark.parametrize("marker", ["ebt data prepare", "ebt eval downstream", "ebt explore", "ebt eval video"])
def test_readme_corpus_and_downstream_examples_parse(marker):
    """The corpus and downstream blocks parse as real commands (the flows themselves run in test_cli_data.py and
    test_cli_downstream.py)."""
    import shlex

    from ebt.cli import build_parser, normalise_argv

    corpus = next(b for b in blocks("bash") if marker in b)
    for line in corpus.splitlines():
        argv = normalise_argv(shlex.split(line.split("  #")[0])[1:])
        args, extra = build_parser().parse_known_args(argv)
        assert args.func is not None and all(e.startswith("--") and "." in e for e in extra), line
