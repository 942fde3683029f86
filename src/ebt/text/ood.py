"""Embedded out-of-distribution text sets for thinking evaluations, all available offline.

- `python_docs`: English technical prose from Python's own documentation (`pydoc_data.topics`, always installed);
- `dyck`: generated balanced-bracket (Dyck-language) strings, the paper's most OOD benchmark family;
- `arithmetic`: generated "a + b = c" style equations with their results.
Generated sets are deterministic given the seed. Users add their own files with `--ood NAME=PATH`.
"""
from __future__ import annotations

import random
from pathlib import Path

from ebt.text.data import load_text
from ebt.errors import UserError

PAIRS = ("()", "[]", "{}", "<>")


def python_docs(max_chars: int = 200_000) -> str:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    return text[:max_chars]


def dyck(n: int = 2000, max_depth: int = 6, seed: int = 0) -> str:
    """One balanced string over four bracket pairs per line."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        out, stack = [], []
        length = rng.randint(4, 40)
        while len(out) < length or stack:
            if stack and (len(stack) >= max_depth or len(out) >= length or rng.random() < 0.45):
                out.append(stack.pop())
            else:
                o, c = rng.choice(PAIRS)
                out.append(o)
                stack.append(c)
        lines.append("".join(out))
    return "\n".join(lines) + "\n"


def arithmetic(n: int = 3000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a} {op} {b} = {value}")
    return "\n".join(lines) + "\n"


def ood_sets(extra: dict[str, str] | None = None, embedded: bool = True) -> dict[str, str]:
    """name -> text of every embedded OOD set (unless embedded=False), plus user files given as {name: path}."""
    sets = {"python_docs": python_docs(), "dyck": dyck(), "arithmetic": arithmetic()} if embedded else {}
    for name, path in (extra or {}).items():
        if not Path(path).exists():
            raise UserError(f"OOD set {name!r}: {path!r} does not exist; pass NAME=PATH to a text file")
        sets[name] = load_text(path)
    return sets
