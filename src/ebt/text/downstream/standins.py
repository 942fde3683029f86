"""Embedded stand-ins for downstream tasks, generated offline in the real tasks' own formats and read by the same
readers, so `ebt eval downstream` runs with no files:

- `arithmetic`: arithmetic word problems with worked answers ending "#### N" (GSM8K JSONL records);
- `dyck`: Dyck-language prefixes over four bracket pairs, to be closed; multiple choice between the right closing
  sequence and three wrong ones (BigBench task.json, like `dyck_languages`);
- `cloze`: the last word of a passage of held-out corpus text (LAMBADA JSONL records): passages of two verses
  from the last 1% of the embedded corpus, inside the 2% every preset holds out (data.val_fraction).
All are deterministic given the seed.
"""
from __future__ import annotations

import random

from ebt.text.corpus import embedded_corpus
from ebt.text.downstream.items import bigbench_items, gsm8k_items, lambada_items

PAIRS = ("()", "[]", "{}", "<>")
NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "June")
THINGS = ("apples", "books", "coins", "shells", "stamps", "marbles", "pencils", "cards")


def arithmetic_records(n: int = 200, seed: int = 0) -> list[dict]:
    """GSM8K-style {question, answer} records: two or three steps of + - x on small numbers."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        who, thing = rng.choice(NAMES), rng.choice(THINGS)
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        kind = rng.randrange(3)
        if kind == 0:
            q = f"{who} has {a} {thing}. {who} gets {b} more and then gives away {c}. How many {thing} are left?"
            steps, value = [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], a + b - c
        elif kind == 1:
            q = f"{who} buys {c} boxes with {b} {thing} in each box. How many {thing} does {who} buy?"
            steps, value = [f"{c} * {b} = {c * b}"], c * b
        else:
            q = (f"{who} has {a} {thing} and shares them with {c} friends. Each friend gets {a // c}. "
                 f"How many {thing} does {who} keep?")
            steps, value = [f"{c} * {a // c} = {c * (a // c)}", f"{a} - {c * (a // c)} = {a - c * (a // c)}"], a % c
        answer = "\n".join(f"{who} works out {s}." for s in steps) + f"\n#### {value}"
        out.append({"question": q, "answer": answer})
    return out


def _closing(prefix: list[str]) -> list[str]:
    stack = []
    for ch in prefix:
        for o, c in PAIRS:
            if ch == o:
                stack.append(c)
            elif ch == c:
                stack.pop()
    return stack[::-1]


def dyck_task(n: int = 200, seed: int = 0) -> dict:
    """A BigBench task.json dict: prefixes of balanced strings (space separated, as BigBench writes them), whose
    closing sequence is chosen among four: the right one and three others of the same length."""
    rng = random.Random(seed)
    examples = []
    while len(examples) < n:
        prefix, stack = [], []
        for _ in range(rng.randint(4, 14)):
            if stack and rng.random() < 0.4:
                prefix.append(stack.pop())
            else:
                o, c = rng.choice(PAIRS)
                prefix.append(o)
                stack.append(c)
        right = _closing(prefix)
        if not right:
            continue
        choices = {" ".join(right): 1}
        while len(choices) < 4:
            choices.setdefault(" ".join(rng.choice(PAIRS)[1] for _ in right), 0)
        order = list(choices)
        rng.shuffle(order)
        examples.append({"input": " ".join(prefix), "target_scores": {k: choices[k] for k in order}})
    return {"name": "dyck", "examples": examples}


def cloze_records(n: int = 150, verses: int = 2) -> list[dict]:
    """LAMBADA-style {text} records from the held-out tail of the embedded corpus, trailing punctuation removed
    so that the last word is a word."""
    text = embedded_corpus()
    lines = [line for line in text[int(len(text) * 0.99):].splitlines()[1:] if line.strip()]   # whole verses only
    out = []
    for i in range(0, len(lines) - verses + 1, verses):
        passage = " ".join(lines[i:i + verses]).rstrip(" .,;:!?'\"")
        if " " in passage:
            out.append({"text": passage})
    return out[:n]


EMBEDDED = {   # name -> its items, generated on demand
    "arithmetic": lambda: gsm8k_items((f"embedded arithmetic item {i}", r) for i, r in enumerate(arithmetic_records())),
    "dyck": lambda: bigbench_items([("embedded dyck", dyck_task())]),
    "cloze": lambda: lambada_items((f"embedded cloze item {i}", r) for i, r in enumerate(cloze_records())),
}
