"""Task names of `ebt eval downstream --task NAME[=PATH]`:
    arithmetic, dyck, cloze                               embedded stand-ins (standins.py), the default
    dyck_languages, elementary_math_qa, matrixshapes,     BigBench / SQuAD dev files fetched once with
    squad                                                 `ebt data get bigbench` (bigbench.py)
    FORMAT=PATH                                           your own file in one of the formats of items.FORMATS
                                                          (gsm8k, squad, bigbench, arc, lambada, jsonl)
"""
from __future__ import annotations

import random
from pathlib import Path

from ebt.errors import UserError
from ebt.text.downstream import bigbench
from ebt.text.downstream.items import FORMATS, Item, read_items
from ebt.text.downstream.standins import EMBEDDED


def task_names() -> str:
    return (f"embedded {', '.join(EMBEDDED)}; fetched {', '.join(bigbench.FILES)}; "
            f"or FORMAT=PATH with FORMAT one of {', '.join(FORMATS)}")


def load_task(spec: str) -> tuple[str, list[Item]]:
    """(display name, items) of one --task value."""
    name, _, path = spec.partition("=")
    if path:
        if name not in FORMATS:
            raise UserError(f"--task {spec!r}: {name!r} is not a file format: use one of {', '.join(FORMATS)} "
                            "before =PATH")
        return name, read_items(name, path)
    if name in EMBEDDED:
        return name, EMBEDDED[name]()
    if name in bigbench.FILES:
        return name, read_items(*bigbench.task_file(name))
    if name in FORMATS:
        raise UserError(f"--task {name!r} needs a file: write {name}=PATH")
    raise UserError(f"--task {spec!r} is not a known task: use {task_names()}")


def load_tasks(specs: list[str], max_items: int, seed: int = 0) -> dict[str, list[Item]]:
    """name -> items of each --task (the embedded stand-ins when none is given); at most `max_items` per task, a
    seeded sample kept in file order when a task has more."""
    tasks: dict[str, list[Item]] = {}
    for spec in specs or list(EMBEDDED):
        name, items = load_task(spec)
        if name in tasks and "=" in spec:   # two files of one format: tell them apart by file name
            name = f"{name}:{Path(spec.partition('=')[2]).stem}"
        if name in tasks:
            raise UserError(f"--task {spec!r} is given twice: give each task once")
        if len(items) > max_items:
            keep = sorted(random.Random(seed).sample(range(len(items)), max_items))
            items = [items[i] for i in keep]
        tasks[name] = items
    return tasks
