"""Downstream evaluation: the readers of each published format, the embedded stand-ins, items as windows (every
target scored once, with the context the stride promises), the item evaluator against direct computation and
against `evaluate_text`, answer energies, multiple-choice scoring, and the BigBench extraction."""
import hashlib
import io
import json
import math
import random
import tarfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_text_ebt
from ebt.config import ModelConfig
from ebt.errors import UserError
from ebt.text.data import PackedWindows
from ebt.text.downstream import bigbench
from ebt.text.downstream.items import Item, read_items
from ebt.text.downstream.scoring import Scoring, generated_answer, normalise, score_task, sequences
from ebt.text.downstream.standins import PAIRS, arithmetic_records, cloze_records, dyck_task
from ebt.text.downstream.tasks import load_tasks
from ebt.text.downstream.windows import ANSWER, PROMPT, ItemWindows
from ebt.text.corpus import embedded_corpus
from ebt.text.evaluate import ITEM_COLUMNS, evaluate_items, evaluate_text
from ebt.text.models import Prediction, TextTransformer
from ebt.text.tokenizers import ByteTokenizer

COL = {c: i for i, c in enumerate(ITEM_COLUMNS)}


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---- readers --------------------------------------------------------------------------------------------------
def test_readers_format_items_as_the_reference(tmp_path):
    gsm = read_items("gsm8k", write_lines(tmp_path / "g.jsonl", [{"question": "2+3?", "answer": "2+3=5\n#### 5"}]))
    assert gsm == [Item("Question: 2+3?\nAnswer:", " 2+3=5\n#### 5", references=("5",))]
    squad = {"version": "v2.0", "data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"question": "Where is Paris?", "answers": [{"text": "France"}, {"text": "in France"}]},
        {"question": "Why?", "answers": [], "is_impossible": True}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    assert read_items("squad", tmp_path / "s.json") == [
        Item("Question: Paris is in France.\nWhere is Paris?\nAnswer:", " France", references=("France", "in France"))]
    bb = {"name": "t", "examples": [{"input": "( [", "target_scores": {"] )": 1, ") ]": 0}},
                                    {"input": "1+1", "target": ["2", "two"]},
                                    {"input": "2?", "target_scores": {"1": 0, "2": 1, "two": 1}}]}
    (tmp_path / "task.json").write_text(json.dumps(bb))
    mc, gen, tied = read_items("bigbench", tmp_path / "task.json")
    assert mc.choices == (" ] )", " ) ]") and mc.answer == " ] )" and mc.correct == {0}
    assert tied.correct == {1, 2}                           # BigBench grades every top-scoring choice correct
    assert gen == Item("Question: 1+1\nAnswer:", " 2", references=("2", "two"))
    arc_ai2 = {"question": {"stem": "Sky?", "choices": [{"label": "A", "text": "blue"}, {"label": "B", "text": "red"}]},
               "answerKey": "A"}
    arc_hf = {"question": "Sky?", "choices": {"label": ["A", "B"], "text": ["blue", "red"]}, "answerKey": "A"}
    a, b = read_items("arc", write_lines(tmp_path / "a.jsonl", [arc_ai2, arc_hf]))
    assert a == b and a.prompt == "Question: Sky?\nA: blue\nB: red\nAnswer:" and a.choices == (" A", " B")
    (lam,) = read_items("lambada", write_lines(tmp_path / "l.jsonl", [{"text": "the cat sat on the mat"}]))
    assert (lam.prompt, lam.answer) == ("the cat sat on the", " mat")
    (gen,) = read_items("jsonl", write_lines(tmp_path / "j.jsonl", [{"prompt": "x =\u2028", "answer": " 1",
                                                                      "choices": [" 2", " 1"]}]))
    assert gen.correct == {1} and gen.prompt == "x =\u2028"   # a raw U+2028 inside a JSON string is no line end


@pytest.mark.parametrize("fmt,rows,needle", [
    ("gsm8k", [{"question": "q", "answer": "a"}, {"question": "q"}], "line 2: no 'answer' field"),
    ("gsm8k", [{"question": "q", "answer": "a"}, "{not json"], "line 2 is not JSON"),
    ("arc", [{"question": "q", "choices": {"label": ["A"], "text": ["x"]}, "answerKey": "C"}], "answerKey 'C'"),
    ("lambada", [{"text": 3}], "field 'text' is int"),
    ("jsonl", [{"prompt": "p", "answer": "a", "choices": ["b"]}], "must be a list of strings that contains"),
    ("jsonl", [{"prompt": "p", "answer": "a", "choices": "abc"}], "must be a list of strings that contains"),
    ("jsonl", [{"prompt": "p", "answer": "a", "choices": ["a", " "]}], "must be a list of strings that contains"),
    ("arc", [{"question": {"stem": "q", "choices": ["A"]}, "answerKey": "A"}], "need a 'label' and a 'text'"),
    ("jsonl", [], "no jsonl items"),
])
def test_bad_task_files_name_the_line(tmp_path, fmt, rows, needle):
    path = write_lines(tmp_path / "t.jsonl", rows) if rows else tmp_path / "t.jsonl"
    path.touch()
    with pytest.raises(UserError, match=needle):
        read_items(fmt, path)


def test_bigbench_with_subtasks_and_task_names(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps({"name": "x", "subtasks": ["a"]}))
    with pytest.raises(UserError, match="subtasks"):
        read_items("bigbench", tmp_path / "task.json")
    for spec, needle in (("nope", "not a known task"), ("gsm8k", "needs a file"), ("csv=x", "not a file format"),
                         ("matrixshapes", "ebt data get bigbench")):
        with pytest.raises(UserError, match=needle):
            load_tasks([spec], 10)
    tasks = load_tasks(["arithmetic", "dyck"], 7)
    assert [len(v) for v in tasks.values()] == [7, 7]
    with pytest.raises(UserError, match="given twice"):
        load_tasks(["dyck", "dyck"], 7)
    (tmp_path / "bad.json").write_text(json.dumps({"examples": [{"input": "x", "target_scores": {"a": "high"}}]}))
    with pytest.raises(UserError, match="must be numbers"):
        read_items("bigbench", tmp_path / "bad.json")


# ---- stand-ins ------------------------------------------------------------------------------------------------
def test_standins_are_right_answers():
    for r in arithmetic_records(50, seed=3):
        final = int(r["answer"].rsplit("####", 1)[1])
        last = r["answer"].splitlines()[-2]                      # "X works out a op b = c."
        assert int(last.rsplit("=", 1)[1].strip(" .")) == final
        assert eval(last.split("works out ")[1].split("=")[0]) == final   # our own generated arithmetic
    opening = {o: c for o, c in PAIRS}
    for ex in dyck_task(50, seed=1)["examples"]:
        (right,) = [k for k, v in ex["target_scores"].items() if v == 1]
        stack = []
        for ch in (ex["input"] + " " + right).split():
            if ch in opening:
                stack.append(opening[ch])
            else:
                assert stack and stack.pop() == ch
        assert not stack and len(ex["target_scores"]) == 4
    text = embedded_corpus()
    held_out = text[int(len(text) * 0.98):]            # the presets hold out the last 2%
    for r in cloze_records():
        assert r["text"] in held_out.replace("\n", " ")


# ---- windows --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_item_windows_score_every_target_once(stride):
    rng = random.Random(stride)
    context = 8
    seqs = [([rng.randint(1, 9) for _ in range(n)], rng.randint(1, max(1, n - 1))) for n in (1, 2, 5, 9, 10, 23, 40)]
    w = ItemWindows(seqs, context, stride, torch.ones(10, dtype=torch.long))
    seen = {s: [] for s in range(len(seqs))}
    tokens, roles = w.batch(list(range(len(w)))), w.roles(list(range(len(w))))
    for i, (s, start, _) in enumerate(w.spans):
        ids, answer_start = seqs[s]
        assert tokens[i, :len(ids[start:start + context + 1])].tolist() == ids[start:start + context + 1]
        for j in range(context):
            t = start + 1 + j                                          # token index of target j
            if roles[i, j]:
                assert tokens[i, j + 1] == ids[t] and roles[i, j] == (ANSWER if t >= answer_start else PROMPT)
                assert t - start >= min(t, context + 1 - stride)      # the left context the stride promises
                seen[s].append(t)
    assert all(sorted(seen[s]) == list(range(1, len(ids))) for s, (ids, _) in enumerate(seqs))


def test_item_evaluator_matches_direct_sliding_computation():
    torch.manual_seed(0)
    context = 6
    model = TextTransformer(ModelConfig(vocab_size=12, dim=16, layers=2, heads=2, context=context,
                                        kind="transformer")).double().eval()
    rng = random.Random(0)
    seqs = [([rng.randint(1, 11) for _ in range(n)], n // 2) for n in (3, 7, 15)]
    res = evaluate_items(model, ItemWindows(seqs, context, 1, torch.arange(12)), batch_size=2)
    assert not res.has_energy
    for s, (ids, answer_start) in enumerate(seqs):
        ce = ans = nbytes = 0.0
        for t in range(1, len(ids)):                       # stride 1: target t sees tokens max(0, t - context) .. t-1
            logits = model.net(torch.tensor([ids[max(0, t - context):t]]))[0, -1]
            loss = F.cross_entropy(logits[None], torch.tensor([ids[t]])).item()
            ce += loss
            ans += loss if t >= answer_start else 0.0
            nbytes += ids[t] if t >= answer_start else 0.0   # token_bytes = arange: the id itself
        row = res.sums[s]
        assert row[COL["ce"]].item() == pytest.approx(ce, rel=1e-10)
        assert row[COL["answer_ce"]].item() == pytest.approx(ans, rel=1e-10, abs=1e-12)
        assert row[COL["tokens"]] == len(ids) - 1 and row[COL["answer_tokens"]] == len(ids) - answer_start
        assert row[COL["answer_bytes"]] == nbytes


def test_items_that_are_windows_give_evaluate_text_numbers():
    """One evaluator: packed windows scored as items (same window numbers, so the same initial noise) give
    evaluate_text's cross-entropy for an EBT."""
    model = tiny_text_ebt("time_embed", vocab=13, ctx=6)
    stream = torch.randint(1, 13, (7 * 5,), generator=torch.Generator().manual_seed(0))
    windows = PackedWindows(stream, 7, torch.ones(13, dtype=torch.long))
    text = evaluate_text(model, windows, max_windows=5, batch_size=2, seed=3)
    seqs = [(windows.window(i).tolist(), 1) for i in range(5)]
    res = evaluate_items(model, ItemWindows(seqs, 6, 3, torch.ones(13, dtype=torch.long)), batch_size=3, seed=3)
    assert res.sums[:, COL["ce"]].sum() / res.sums[:, COL["tokens"]].sum() == pytest.approx(text["ce"], rel=1e-12)


def test_target_energy_is_the_energy_of_one_hot_candidates():
    model = tiny_text_ebt("time_embed", vocab=13, ctx=6)
    x = torch.randint(1, 13, (2, 6), generator=torch.Generator().manual_seed(1))
    y = torch.randint(1, 13, (2, 6), generator=torch.Generator().manual_seed(2))
    k = model.think_cfg.landscapes - 1
    direct = model.context_energy(x)(F.one_hot(y, 13).double(), k)
    torch.testing.assert_close(model.target_energy(x, y), direct, rtol=1e-12, atol=1e-12)


# ---- multiple choice ------------------------------------------------------------------------------------------
class Counter(nn.Module):
    """A stand-in language model that is sure the next byte is the previous one + 1 (its energy: how far from it)."""
    can_think = False

    def __init__(self):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=256, dim=8, layers=1, heads=1, context=8)
        self.w = nn.Parameter(torch.zeros(1))

    def predict(self, x, options=None):
        return Prediction(F.one_hot((x + 1) % 256, 256).double() * 20.0)

    def target_energy(self, x, y):
        return ((y - x - 1) % 256).double()


def test_multiple_choice_by_perplexity_and_energy():
    items = [Item("abc", "d", choices=("x", "d", "q")), Item("mno", "p", choices=("p", "z")),
             Item("0123456789", "A", choices=("A", ":"))]        # the counting answer ':' is not the gold one
    res = score_task(Counter(), items, ByteTokenizer(), Scoring(stride=4))
    assert res["mc_items"] == 3 and res["mc_acc_ppl"] == pytest.approx(2 / 3)
    assert res["mc_acc_energy"] == pytest.approx(2 / 3) and res["mc_chance"] == pytest.approx((1 / 3 + 1) / 3)
    seqs, choice_seqs = sequences(items, ByteTokenizer())
    assert choice_seqs[0][1] == 0 and len(seqs) == 3 + 2 + 1 + 1     # the gold text is scored once
    assert math.isfinite(res["answer_ppl"]) and res["answer_ppl_ci"][0] <= res["answer_ppl"] <= res["answer_ppl_ci"][1]


def test_generated_answer_and_normalisation():
    assert generated_answer(" so 4 + 1 = 5\n#### 5\nQuestion: 9 + 1?\n#### 10") == "5"   # the first answer
    assert generated_answer(" Paris\nQuestion: x") == "Paris"
    assert normalise(" The  Eiffel tower.") == "the eiffel tower" and normalise("-5.") == "-5" != normalise("5")
    assert normalise(") ] }") == ") ] }" and normalise("3.5") == "3.5"


def test_an_answer_without_tokens_is_refused():
    with pytest.raises(UserError, match="has no tokens"):
        sequences([Item("q", " a", choices=(" a", ""))], ByteTokenizer())


# ---- bigbench -------------------------------------------------------------------------------------------------
def fake_archive(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(bigbench.ROOT + member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bigbench_extraction_checks_hashes(tmp_path):
    task = json.dumps({"name": "dyck_languages", "examples": [{"input": "( [", "target": "] )"}]}).encode()
    archive = fake_archive(tmp_path / "bb.tar.gz", {"dyck_languages/task.json": task})
    expected = {"dyck_languages": ("bigbench", "dyck_languages/task.json", hashlib.sha256(task).hexdigest())}
    manifest = bigbench.extract(archive, tmp_path / "out", expected)
    assert (tmp_path / "out" / "dyck_languages.json").read_bytes() == task
    assert manifest["tasks"]["dyck_languages"]["bytes"] == len(task)
    assert read_items("bigbench", tmp_path / "out" / "dyck_languages.json")[0].answer == " ] )"
    with pytest.raises(UserError, match="SHA-256 differs"):      # the pinned hashes of bigbench 1.0.0
        bigbench.extract(archive, tmp_path / "out2")
    with pytest.raises(UserError, match="has no"):
        bigbench.extract(fake_archive(tmp_path / "empty.tar.gz", {}), tmp_path / "out3", expected)
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable"):
        bigbench.extract(tmp_path / "junk.tar.gz", tmp_path / "out4", expected)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out4").exists()


def test_bpe_items_count_answer_bytes_exactly():
    """With a BPE the answer is encoded on its own, so its tokens are exactly its bytes: bits per byte stay
    comparable with the byte tokenizer's."""
    from ebt.text.tokenizers import load_tokenizer

    tok = load_tokenizer("embedded-bpe-300")
    items = [Item("Question: And God said\nAnswer:", " Let there be light"), Item("the end of", " days")]
    seqs, _ = sequences(items, tok)
    for (ids, start), item in zip(seqs, items):
        assert tok.decode(ids[start:]) == item.answer
    torch.manual_seed(0)
    model = TextTransformer(ModelConfig(vocab_size=tok.vocab_size, dim=16, layers=1, heads=2, context=8,
                                        kind="transformer")).eval()
    res = evaluate_items(model, ItemWindows(seqs, 8, 4, tok.token_bytes()))
    assert res.sums[:, COL["answer_bytes"]].tolist() == [len(i.answer.encode()) for i in items]
    assert res.sums[:, COL["bytes"]].tolist() == [len((i.prompt + i.answer).encode()) - len(tok.decode(ids[:1]).encode())
                                                   for (ids, _), i in zip(seqs, items)]
