"""Text data (ebt/text/data.py): strict UTF-8 by default with the file and byte offset, or counted replacements."""
import pytest
import torch

from ebt.errors import Note, UserError
from ebt.text.data import ByteTokenizer, load_text


def test_invalid_utf8_is_refused_with_the_offset_or_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine text \xff\xfe then more")
    with pytest.raises(UserError, match=r"is not valid utf-8 \(byte 10: b'\\xff'\).*data.errors=replace"):
        load_text(str(tmp_path / "a.txt"))
    with pytest.warns(Note, match="2 invalid utf-8 byte sequence"):
        text = load_text(str(tmp_path / "a.txt"), errors="replace")
    assert text == "fine text \ufffd\ufffd then more"


def test_text_that_is_not_utf8_cannot_be_encoded():
    with pytest.raises(UserError, match="not valid UTF-8"):
        ByteTokenizer().encode("caf\udce9")          # a byte that was not UTF-8 on the command line
    assert ByteTokenizer().decode(ByteTokenizer().encode("café")) == "café"


def test_windows_split_into_tuning_and_report_halves():
    from ebt.errors import UserError
    from ebt.text.data import PackedWindows

    w = PackedWindows(torch.arange(1, 1 + 7 * 5), 5, token_bytes=torch.ones(64, dtype=torch.long))
    tune, report = w.half("tune"), w.half("report")
    assert len(tune) == 3 and len(report) == 4 and tune.token_bytes is w.token_bytes
    assert torch.equal(torch.cat([tune.batch(range(3)), report.batch(range(4))]), w.batch(range(7)))
    assert len(w.half("report", limit=2)) == 2 and torch.equal(w.half("report", 2).window(0), w.window(3))
    with pytest.raises(UserError, match="cannot be split"):
        PackedWindows(torch.arange(1, 6), 5).half("tune")
