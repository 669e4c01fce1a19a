"""The three manifest formats, read line by line into rows for `parse_row`.

The format is chosen by extension: ``.csv`` (header row with an ``id`` column), ``.jsonl`` (one
JSON object per line), ``.txt`` (one id per line, ``#`` comments); ``-`` is standard input as
``.txt``. Each reader yields ``(line, row)`` or ``(line, problem)``, so bad lines are reported
as ``FILE:LINE`` by the caller and reading goes on.

Decisions worth knowing:

* **Unknown CSV columns are ignored**, because spreadsheets carry titles and notes alongside the
  ids. A column whose name is a near miss of a known one (``heigth``) is a ``FILE:1`` problem,
  though: ignoring it would silently buy a different size.
* **Unknown JSONL keys are a bad row** (the row goes to `parse_row` whole). JSONL is written by
  programs, so an unknown key is a typo or a schema mismatch, and either way the row would not
  buy what its author meant.
* **Bytes are decoded per line**, so a stray non-UTF-8 byte is reported at its line and the rest
  of the file is still checked. A UTF-8 BOM and CRLF line endings are accepted.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, cast

from bulkgetty.errors import ManifestError, ManifestProblem, UsageError
from bulkgetty.stages.manifest.fields import FIELDS, _show

_FORMATS: Final = (".csv", ".jsonl", ".txt")
_MAX_LINE: Final = 1 << 20
_BLOCK: Final = 1 << 20


def _format_of(path: str | Path) -> str:
    if str(path) == "-":
        return ".txt"
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        shown = suffix or "no extension"
        raise UsageError(
            f"{path}: cannot tell the manifest format from {shown!r}; use .csv, .jsonl or .txt"
        )
    return suffix


class _Lines:
    """Lines of a byte (or text) stream, decoded one at a time.

    Why per line: a bad byte must be reported at its physical line and must not stop the check
    of the rest of the file, which a decoding text wrapper would do. Over-long lines are cut off
    so a file without newlines cannot be pulled into memory whole.
    """

    def __init__(self, stream: IO[bytes] | IO[str]) -> None:
        self.stream = stream
        self.number = 0
        #: Physical line number -> why that line could not be read.
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        for text in self._decoded():
            if self.number == 1:
                text = text.removeprefix("\ufeff")
            yield text

    def _decoded(self) -> Iterator[str]:
        probe = self.stream.read(0)
        if isinstance(probe, str):
            yield from self._text_lines()
        else:
            yield from self._byte_lines()

    def _byte_lines(self) -> Iterator[str]:
        """Read 1 MiB blocks and split them: per-line reads cost more than checking a row."""
        read = self.stream.read
        carry = b""
        skipping = False  # inside an over-long line, already reported
        while block := cast("bytes", read(_BLOCK)):
            if skipping:
                newline = block.find(b"\n")
                if newline < 0:
                    continue
                block, skipping = block[newline + 1 :], False
            data = carry + block
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            yield from self._split(data[:end])
            if len(carry) > _MAX_LINE:
                self.number += 1
                self.bad[self.number] = f"line is longer than {_MAX_LINE} characters"
                yield "\n"
                carry, skipping = b"", True
        if carry:
            yield from self._split(carry + b"\n")

    def _split(self, data: bytes) -> Iterator[str]:
        """Complete lines of `data` (which ends with a newline), each with its newline."""
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for raw in data.split(b"\n")[:-1]:
                self.number += 1
                yield self._decode(raw + b"\n")
            return
        for line in lines[:-1]:
            self.number += 1
            yield line + "\n"

    def _text_lines(self) -> Iterator[str]:
        readline = self.stream.readline
        while True:
            try:
                chunk = cast("str", readline(_MAX_LINE + 1))
            except UnicodeDecodeError as exc:  # a text stream we could not get bytes from
                self.number += 1
                self.bad[self.number] = f"not valid UTF-8 ({exc.reason}); reading stopped here"
                return
            if not chunk:
                return
            self.number += 1
            if len(chunk) > _MAX_LINE and not chunk.endswith("\n"):
                self.bad[self.number] = f"line is longer than {_MAX_LINE} characters"
                while chunk and not chunk.endswith("\n"):
                    chunk = cast("str", readline(_MAX_LINE))
                yield "\n"
            else:
                yield chunk

    def _decode(self, chunk: bytes) -> str:
        try:
            return chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = chunk[exc.start]
            self.bad[self.number] = f"not valid UTF-8 (byte 0x{byte:02x} at column {exc.start + 1})"
            return chunk.decode("utf-8", "replace")

    def take_bad(self, upto: int) -> list[tuple[int, str]]:
        """Problems of lines up to `upto`, removed so each is reported once."""
        if not self.bad:
            return []
        found = sorted((n, p) for n, p in self.bad.items() if n <= upto)
        for n, _ in found:
            del self.bad[n]
        return found


#: What a format reader yields: (line, row) or (line, problem text).
_Record = tuple[int, Mapping[str, object] | str]


def _txt_records(lines: _Lines) -> Iterator[_Record]:
    for text in lines:
        bad = lines.take_bad(lines.number)
        if bad:
            yield bad[0]
            continue
        token = text.split("#", 1)[0].strip()
        if token:
            yield lines.number, {"id": token}


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json` silently keeps the last of two equal keys; a manifest row should not."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise ValueError(f"key {_show(key)} is given twice")
        row[key] = value
    return row


def _jsonl_records(lines: _Lines) -> Iterator[_Record]:
    for text in lines:
        bad = lines.take_bad(lines.number)
        if bad:
            yield bad[0]
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text, object_pairs_hook=_pairs)
        except json.JSONDecodeError as exc:
            yield lines.number, f"not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        except (ValueError, RecursionError) as exc:
            yield lines.number, str(exc) if isinstance(exc, ValueError) else "JSON nested too deep"
            continue
        if not isinstance(row, dict):
            yield lines.number, "not a JSON object"
            continue
        yield lines.number, row


def _csv_header(header: list[str] | None, name: str) -> dict[int, str]:
    """Which cell index holds which known column; header problems are fatal, at line 1."""

    def fail(problem: str) -> ManifestError:
        return ManifestError([ManifestProblem(name, 1, problem)])

    if header is None:
        raise fail("empty file: expected a header row with an 'id' column")
    names = [cell.strip().lower() for cell in header]
    if "id" not in names:
        hint = ""
        if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
            hint = "; cells must be separated by commas"
        shown = ", ".join(map(_show, names[:10]))
        raise fail(f"header has no 'id' column (columns: {shown}){hint}")
    problems: list[str] = []
    for col in sorted({n for n in names if n in FIELDS and names.count(n) > 1}):
        problems.append(f"column {_show(col)} appears more than once")
    for col in names:
        near = difflib.get_close_matches(col, FIELDS, n=1, cutoff=0.8)
        if col not in FIELDS and near:
            problems.append(f"column {_show(col)} is not known; did you mean {near[0]!r}?")
    if problems:
        raise ManifestError([ManifestProblem(name, 1, p) for p in problems])
    return {i: n for i, n in enumerate(names) if n in FIELDS}


def _csv_records(lines: _Lines, name: str) -> Iterator[_Record]:
    reader = csv.reader(lines, strict=True)
    bad_header = None
    try:
        header = next(reader, None)
    except csv.Error as exc:
        bad_header = str(exc)
    if bad_header or lines.bad:
        problem = bad_header or lines.take_bad(reader.line_num)[0][1]
        raise ManifestError([ManifestProblem(name, 1, f"header row: {problem}")])
    columns = _csv_header(header, name)
    width = len(header or ())
    last = reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            last = reader.line_num
            yield from lines.take_bad(last) or [(start, f"not valid CSV: {exc}")]
            continue
        last = reader.line_num
        bad = lines.take_bad(last)
        if bad:
            yield from bad
        elif len(cells) > width and any(c.strip() for c in cells[width:]):
            yield start, f"row has {len(cells)} cells but the header has {width}"
        elif any(c.strip() for c in cells):
            yield start, {columns[i]: c for i, c in enumerate(cells) if i in columns}
    yield from lines.take_bad(lines.number + 1)
