"""Tokenizers (ebt/text/tokenizers.py), raw sources (corpus.py), token shards (shards.py), windows over several parts
(data.py), bits per byte (evaluate.py) and the memory-free epoch order (training/sharding.py)."""
import json
import math

import numpy as np
import pytest
import torch

from ebt.errors import UserError
from ebt.text.corpus import embedded_corpus
from ebt.text.data import PackedWindows
from ebt.text.evaluate import evaluate_text
from ebt.text.shards import open_shards, prepare_shards
from ebt.text.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, split_long, train_bpe
from ebt.training.sharding import EpochStream, feistel_permute

TEXT = "Ünïcode — ok 🙂. " + embedded_corpus()[:20000]


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok = HFTokenizer(train_bpe(TEXT.split("\n"), 400, progress=False), "test")
    (folder / "tokenizer.json").write_bytes(tok.raw)
    return folder / "tokenizer.json"


def corpus(folder):
    """The same documents as text files, JSONL, Parquet and a dataset folder saved to disk (Arrow stream files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [l for l in TEXT.split("\n") if l]
    docs = {"txt": lines[:40], "jsonl": lines[40:80], "parquet": lines[80:120], "arrow": lines[120:160]}
    (folder / "books").mkdir(parents=True)
    for k, d in enumerate(docs["txt"][:4]):
        (folder / "books" / f"{k}.txt").write_text("\n".join(docs["txt"][k * 3:(k + 1) * 3]), encoding="utf-8")
    with open(folder / "r.jsonl", "w", encoding="utf-8") as f:
        for d in docs["jsonl"]:
            f.write(json.dumps({"text": d, "n": 1}) + "\n\n")          # blank lines are skipped
    pq.write_table(pa.table({"text": docs["parquet"]}), folder / "p.parquet", row_group_size=7)
    ds = folder / "ds"
    ds.mkdir()
    table = pa.table({"text": docs["arrow"]})
    with pa.OSFile(str(ds / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    expected = ["\n".join(docs["txt"][k * 3:(k + 1) * 3]) for k in range(4)]
    return [str(folder / "books"), str(folder / "r.jsonl"), str(folder / "p.parquet"), str(ds)], \
        expected + docs["jsonl"] + docs["parquet"] + docs["arrow"]


def test_bpe_round_trips_and_counts_every_byte(bpe_file):
    tok = load_tokenizer(str(bpe_file))
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and tok.eos_id == 0 and tok.vocab_size == 400
    assert int(tok.token_bytes()[ids].sum()) == len(TEXT.encode("utf-8"))   # exact bytes per token, for bpb
    assert load_tokenizer(str(bpe_file.parent)).fingerprint == tok.fingerprint
    assert "".join(split_long(TEXT, 500)) == TEXT and len(split_long(TEXT, 500)) > 10
    assert [i for p in split_long(TEXT, 500) for i in tok.encode(p)] == tok.tok.encode(TEXT).ids
    assert ByteTokenizer().token_bytes().sum() == 256


def test_not_a_tokenizer_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match="is not a Hugging Face tokenizer file"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_windows_over_parts_equal_windows_over_one_stream():
    stream = torch.arange(1000) % 97
    parts = [stream[:3].numpy().astype(np.uint16), stream[3:500].numpy().astype(np.uint16),
             stream[500:].numpy().astype(np.uint16)]
    one, many = PackedWindows(stream, 33), PackedWindows(parts, 33)
    assert len(one) == len(many) == 30
    assert torch.equal(one.batch(range(30)), many.batch(range(30)))


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_prepare_shards_keeps_every_document_once_in_parallel_and_resumes(tmp_path, bpe_file, tokenizer):
    inputs, docs = corpus(tmp_path / "in")
    spec = "bytes" if tokenizer == "bytes" else str(bpe_file)
    tok = load_tokenizer(spec)
    one = prepare_shards(inputs, spec, tmp_path / "one", val_fraction=0.1, workers=1, unit_bytes=600, progress=False)
    two = prepare_shards(inputs, spec, tmp_path / "two", val_fraction=0.1, workers=2, unit_bytes=600, progress=False)
    assert one == two and len(one["splits"]["train"]["shards"]) > 4
    shards = open_shards(tmp_path / "two", tok)
    stream = []
    for shard in one["splits"]["train"]["shards"] + one["splits"]["val"]["shards"]:
        stream.append((shard["file"], np.fromfile(tmp_path / "two" / shard["file"], dtype=one["dtype"])))
    # every unit's train part followed by its val part is that unit's documents, each with its separator
    by_unit = {}
    for file, tokens in stream:
        by_unit.setdefault(file.split("/")[1].split(".")[0], []).append((file.endswith("val.bin"), tokens))
    ids = [t for unit in sorted(by_unit) for _, part in sorted(by_unit[unit], key=lambda p: p[0]) for t in part]
    separator = [tok.eos_id] if tok.eos_id is not None else tok.encode("\n\n")
    assert ids == [i for d in docs for i in tok.encode(d) + separator]
    assert shards.index["splits"]["val"]["tokens"] > 0 and shards.tokenizer.fingerprint == tok.fingerprint
    # an interrupted preparation resumes: the unit without its done file is made again, the result is the same
    (tmp_path / "two" / "shards" / "000001.json").unlink()
    (tmp_path / "two" / "index.json").unlink()
    assert prepare_shards(inputs, spec, tmp_path / "two", val_fraction=0.1, workers=1, unit_bytes=600,
                          progress=False) == one
    other = "bytes" if tokenizer == "bpe" else str(bpe_file)
    with pytest.raises(UserError, match="shards of another tokenizer"):
        prepare_shards(inputs, other, tmp_path / "two", val_fraction=0.1, unit_bytes=600, progress=False)
    with pytest.raises(UserError, match="other inputs or settings"):
        prepare_shards(inputs[:2], spec, tmp_path / "two", val_fraction=0.1, unit_bytes=600, progress=False)
    with pytest.raises(UserError, match="were made with the tokenizer"):
        open_shards(tmp_path / "two", load_tokenizer(other))


def test_a_large_text_file_is_cut_into_line_ranges(tmp_path):
    from ebt.text.corpus import plan_units

    (tmp_path / "big.txt").write_text(TEXT)
    units = plan_units([str(tmp_path / "big.txt")], unit_bytes=4000)
    docs = [d for u in units for d in u.documents("text")]
    assert len(units) > 4 and "".join(docs) == TEXT and all(d.endswith("\n") for d in docs[:-1])


def test_damaged_shards_and_records_are_one_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r"line at byte 17\) has no field 'text'"):
        prepare_shards([str(tmp_path / "a.jsonl")], "bytes", tmp_path / "out", workers=1, progress=False)
    (tmp_path / "b.txt").write_text("some text " * 50)
    prepare_shards([str(tmp_path / "b.txt")], "bytes", tmp_path / "ok", workers=1, progress=False)
    with open(tmp_path / "ok" / "shards" / "000000.train.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(UserError, match="is damaged .*wrong size"):
        open_shards(tmp_path / "ok")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="hold no text"):
        prepare_shards([str(tmp_path / "empty.txt")], "bytes", tmp_path / "none", workers=1, progress=False)


def test_bits_per_byte_of_bytes_is_cross_entropy_over_ln2():
    from ebt.text.models import build_lm
    from ebt.config import ModelConfig, RunConfig

    torch.manual_seed(0)
    model = build_lm(RunConfig(model=ModelConfig(kind="transformer", dim=16, layers=1, heads=2, context=8)))
    windows = PackedWindows(torch.tensor(ByteTokenizer().encode(TEXT[:2000])), 9, ByteTokenizer().token_bytes())
    res = evaluate_text(model, windows, max_windows=8, batch_size=4)
    assert res["bpb"] == pytest.approx(res["ce"] / math.log(2), rel=1e-9)


def test_large_epochs_use_a_memory_free_permutation_that_is_a_bijection():
    for n in (1, 2, 3, 1000, 4097, 70001):
        assert torch.equal(feistel_permute(torch.arange(n), n, 5).sort().values, torch.arange(n))
    assert not torch.equal(feistel_permute(torch.arange(1000), 1000, 5), feistel_permute(torch.arange(1000), 1000, 6))
    n = 3 * 10**9                           # 3 billion windows: nothing of size n is allocated
    items = EpochStream(n, seed=0).items(torch.arange(n - 8, n + 8))
    assert ((items >= 0) & (items < n)).all() and len(set(items[:8].tolist())) == 8


def test_tokenizers_whose_id_0_is_a_token_are_shifted_and_sentencepiece_bytes_are_counted(tmp_path):
    """GPT-2 / Llama 3 style (id 0 an ordinary token): ids shift by one, id 0 stays padding. SentencePiece style
    (Metaspace, byte fallback): "▁" counts as a space, <0xNN> as one byte, nothing is encoded in pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.decoder = decoders.ByteLevel()
    plain.train_from_iterator(TEXT.split("\n"), trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = HFTokenizer(plain, "plain")
    ids = tok.encode(TEXT)
    assert tok.offset == 1 and min(ids) >= 1 and tok.vocab_size == plain.get_vocab_size() + 1
    assert tok.decode(ids) == TEXT and int(tok.token_bytes()[ids].sum()) == len(TEXT.encode("utf-8"))

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    sp.train_from_iterator(TEXT.split("\n"), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"],
                                                                  show_progress=False))
    tok = HFTokenizer(sp, "sp")
    text = "plain words and more words " * 3
    ids = tok.encode(text)
    assert tok.offset == 0 and tok.eos_id == 1 and not tok.byte_level
    assert ids == sp.encode(text, add_special_tokens=False).ids
    assert int(tok.token_bytes()[ids].sum()) == len(" " + text)       # Metaspace prepends "▁" to the text
    words = Tokenizer(models.WordLevel({"<unk>": 0, "<0x0A>": 1, "\u2581the": 2, "é": 3}, unk_token="<unk>"))
    words.add_special_tokens(["<unk>"])
    assert HFTokenizer(words, "words").token_bytes().tolist() == [0, 1, 4, 2]


def test_preparing_again_with_another_tokenizer_never_reuses_the_first_one(tmp_path, bpe_file):
    (tmp_path / "a.txt").write_text(TEXT[:3000])
    out = tmp_path / "out"
    prepare_shards([str(tmp_path / "a.txt")], "bytes", out, workers=1, progress=False)
    import shutil
    shutil.rmtree(out)
    index = prepare_shards([str(tmp_path / "a.txt")], str(bpe_file), out, workers=1, progress=False)
    tokens = np.fromfile(out / index["splits"]["train"]["shards"][0]["file"], dtype=index["dtype"])
    assert load_tokenizer(str(bpe_file)).decode(tokens.tolist()).startswith(TEXT[:100])
