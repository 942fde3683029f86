"""Rewrite the bad-input table of docs/errors.md from real runs of tests/e2e/test_bad_input.py's rows:
`python docs/errors_table.py` (a few seconds; trains the tiny runs the rows use in a temporary folder)."""
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "e2e"), str(ROOT / "tests"), str(ROOT / "src")]

import torch  # noqa: E402

import test_bad_input as table  # noqa: E402


class TempFactory:
    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name))


def shown(argv: list[str]) -> str:
    argv = list(argv)
    for block in (table.TEXT, table.IMAGE):
        if argv[1:1 + len(block)] == block:
            argv = argv[:1] + ["(tiny)"] + argv[1 + len(block):]
    text = "ebt " + " ".join(repr(a) if (" " in a or a == "" or "\udce9" in a) else a for a in argv)
    text = text.replace("\udce9", "\\xe9").replace("|", "\\|")
    return text if len(text) <= 95 else text[:65] + " ... " + text[-25:]


def main() -> None:
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()):
        ws = table.ws._fixture_function(TempFactory(), None)
    os.chdir(ws)
    rows = ["| # | command | exit | message |", "|---|---|---|---|"]
    for i, (argv, _, _) in enumerate(table.ROWS):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = table.main(list(argv))
        line = next(x for x in err.getvalue().splitlines() if x.strip() and not x.startswith("ebt: note"))
        line = line.replace(f"{os.path.realpath(ws)}/", "").replace(f"{ws}/", "")   # the same table on every run
        rows.append(f"| {i + 1} | `{shown(argv)}` | {code} | {line.replace('|', chr(92) + '|')} |")
    doc = ROOT / "docs" / "errors.md"
    text = doc.read_text()
    head = text[:text.index("| # | command | exit | message |")]
    doc.write_text(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
