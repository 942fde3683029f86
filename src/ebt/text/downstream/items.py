"""Downstream task items and the readers of each task's own published format.

Every reader turns records into `Item`s formatted as the reference formats them (docs/downstream.md):
    GSM8K JSONL {question, answer}            "Question: {question}\nAnswer:" + " {answer}"  (full worked answer)
    SQuAD v1.1 / v2 JSON (answerable only)    "Question: {context}\n{question}\nAnswer:" + " {first answer}"
    BigBench task.json                        "Question: {input}\nAnswer:" + " {target}"; multiple choice when
                                              the examples carry target_scores (every key is a choice)
    ARC JSONL (AI2's or Hugging Face's)       "Question: {stem}\nA: ..\nB: ..\nAnswer:" + " {answerKey}"; choices
                                              are the labels
    LAMBADA JSONL {text}                      the passage up to its last word + " {last word}"
    generic JSONL {prompt, answer[, choices]} prompt + answer as written
Errors name the file and the first bad line or field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ebt.errors import UserError


@dataclass(frozen=True)
class Item:
    """One formatted downstream example: the model reads `prompt` and is scored on `answer`."""
    prompt: str
    answer: str
    """The gold continuation, as formatted (usually starting with a space)."""
    choices: tuple[str, ...] = ()
    """Multiple choice: every candidate continuation (the answer among them); empty for generative items."""
    references: tuple[str, ...] = ()
    """Gold strings for exact match of a generation (GSM8K: the final number; SQuAD: every answer)."""
    accepted: tuple[str, ...] = ()
    """Multiple choice: the choices graded correct (BigBench may score several top); empty = the answer alone."""

    @property
    def correct(self) -> set[int]:
        """Indices of the choices graded correct."""
        ok = set(self.accepted or (self.answer,))
        return {i for i, c in enumerate(self.choices) if c in ok}


Records = Iterable[tuple[str, object]]   # (where, parsed record): where = "FILE line N" names it in errors


def qa(question: str, answer: str, **kw) -> Item:
    return Item(f"Question: {question}\nAnswer:", f" {answer}", **kw)


def _field(record: object, key: str, where: str, hint: str, kind=str):
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{where}: no {key!r} field: {hint}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{where}: field {key!r} is {type(value).__name__} {str(value)[:40]!r}, not a non-empty "
                        f"{getattr(kind, '__name__', 'value')}: {hint}")
    return value


def jsonl_records(path: Path) -> Records:
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):   # not splitlines: JSON strings
        if not line.strip():                                                      # may hold U+2028 and the like
            continue
        try:
            yield f"{path} line {n}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {n} is not JSON ({exc.msg}): give one JSON object per line") from None


def json_record(path: Path) -> Records:
    try:
        yield str(path), json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON (line {exc.lineno}: {exc.msg}): give the task's JSON file") from None


# ---- one parser per format (records -> items) --------------------------------------------------------------------
GSM8K_HINT = 'GSM8K lines are {"question": ..., "answer": "... #### 42"}'


def gsm8k_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        question, answer = _field(r, "question", where, GSM8K_HINT), _field(r, "answer", where, GSM8K_HINT)
        final = answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()
        items.append(qa(question, answer, references=(final,)))
    return items


SQUAD_HINT = "SQuAD files are {\"data\": [{\"paragraphs\": [{\"context\": ..., \"qas\": [...]}]}]}"


def squad_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        for a, article in enumerate(_field(r, "data", where, SQUAD_HINT, list)):
            for p, para in enumerate(_field(article, "paragraphs", f"{where} data[{a}]", SQUAD_HINT, list)):
                at = f"{where} data[{a}].paragraphs[{p}]"
                context = _field(para, "context", at, SQUAD_HINT)
                for q, qas in enumerate(_field(para, "qas", at, SQUAD_HINT, list)):
                    question = _field(qas, "question", f"{at}.qas[{q}]", SQUAD_HINT)
                    answers = [x.get("text") for x in qas.get("answers", []) if isinstance(x, dict)]
                    answers = [x for x in answers if isinstance(x, str) and x.strip()]
                    if qas.get("is_impossible") or not answers:   # SQuAD v2's unanswerable questions
                        continue
                    items.append(qa(f"{context}\n{question}", answers[0], references=tuple(dict.fromkeys(answers))))
    return items


BIGBENCH_HINT = "BigBench task.json files hold {\"examples\": [{\"input\": ..., \"target\" or \"target_scores\": ...}]}"


def bigbench_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        if isinstance(r, dict) and "subtasks" in r and "examples" not in r:
            raise UserError(f"{where} has subtasks and no examples: pass one subtask's task.json")
        for i, ex in enumerate(_field(r, "examples", where, BIGBENCH_HINT, list)):
            at = f"{where} examples[{i}]"
            question = _field(ex, "input", at, BIGBENCH_HINT)
            if isinstance(ex.get("target_scores"), dict) and ex["target_scores"]:
                scores = ex["target_scores"]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
                    raise UserError(f"{at}: target_scores values must be numbers: {BIGBENCH_HINT}")
                top = max(scores.values())
                best = [str(c) for c, v in scores.items() if v == top]   # BigBench grades every top choice correct
                items.append(qa(question, best[0], choices=tuple(f" {c}" for c in scores), references=tuple(best),
                                accepted=tuple(f" {c}" for c in best)))
            else:
                target = ex.get("target")
                targets = [target] if isinstance(target, str) else target
                if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
                    raise UserError(f"{at}: no 'target' string(s) or 'target_scores': {BIGBENCH_HINT}")
                items.append(qa(question, targets[0], references=tuple(targets)))
    return items


ARC_HINT = ('ARC lines are {"question": {"stem": ..., "choices": [{"text", "label"}]}, "answerKey": "A"} '
            '(or Hugging Face\'s {"question": ..., "choices": {"text": [...], "label": [...]}, "answerKey"})')


def arc_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        q, key = _field(r, "question", where, ARC_HINT, (str, dict)), _field(r, "answerKey", where, ARC_HINT)
        if isinstance(q, dict):     # AI2's own JSONL
            stem = _field(q, "stem", where, ARC_HINT)
            pairs = [(c.get("label"), c.get("text")) if isinstance(c, dict) else (None, None)
                     for c in _field(q, "choices", where, ARC_HINT, list)]
        else:                       # Hugging Face's datasets export
            ch = _field(r, "choices", where, ARC_HINT, dict)
            pairs = list(zip(ch.get("label", []), ch.get("text", [])))
        if not pairs or not all(isinstance(a, str) and isinstance(b, str) for a, b in pairs):
            raise UserError(f"{where}: the choices need a 'label' and a 'text' each: {ARC_HINT}")
        labels = [label for label, _ in pairs]
        if key not in labels:
            raise UserError(f"{where}: answerKey {key!r} is not one of the labels {labels}: {ARC_HINT}")
        question = stem + "".join(f"\n{label}: {text}" for label, text in pairs)
        items.append(qa(question, key, choices=tuple(f" {label}" for label in labels), references=(key,)))
    return items


LAMBADA_HINT = 'LAMBADA lines are {"text": "... passage whose last word is the target"}'


def lambada_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        text = _field(r, "text", where, LAMBADA_HINT).rstrip()
        if " " not in text:
            raise UserError(f"{where}: the text has one word; the last word is predicted from the ones before it")
        context, word = text.rsplit(" ", 1)
        items.append(Item(context, f" {word}", references=(word,)))
    return items


JSONL_HINT = 'generic lines are {"prompt": ..., "answer": ...} with an optional "choices": [non-blank answers]'


def jsonl_items(records: Records) -> list[Item]:
    items = []
    for where, r in records:
        prompt, answer = _field(r, "prompt", where, JSONL_HINT), _field(r, "answer", where, JSONL_HINT)
        choices = r.get("choices") or []
        if choices and (not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices)
                        or answer not in choices):
            raise UserError(f"{where}: 'choices' must be a list of strings that contains the answer: {JSONL_HINT}")
        items.append(Item(prompt, answer, choices=tuple(choices), references=(answer.strip(),)))
    return items


@dataclass(frozen=True)
class TaskFormat:
    parse: Callable[[Records], list[Item]]
    read: Callable[[Path], Records]


FORMATS: dict[str, TaskFormat] = {
    "gsm8k": TaskFormat(gsm8k_items, jsonl_records),
    "squad": TaskFormat(squad_items, json_record),
    "bigbench": TaskFormat(bigbench_items, json_record),
    "arc": TaskFormat(arc_items, jsonl_records),
    "lambada": TaskFormat(lambada_items, jsonl_records),
    "jsonl": TaskFormat(jsonl_items, jsonl_records),
}


def read_items(fmt: str, path: str | Path) -> list[Item]:
    """The items of a task file in format `fmt` (a key of FORMATS)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} does not exist: give the path to your {fmt} file")
    try:
        items = FORMATS[fmt].parse(FORMATS[fmt].read(path))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): convert it to UTF-8") from None
    if not items:
        raise UserError(f"{path} has no {fmt} items to score: check the file (SQuAD: answerable questions only)")
    return items
