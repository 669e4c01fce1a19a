"""Manifest reader and writer: the list of assets a run should buy and download.

Formats, chosen by extension: ``.csv`` (header row with an ``id`` column), ``.jsonl`` (one JSON
object per line), ``.txt`` (one id per line, ``#`` comments); ``-`` is standard input as ``.txt``.

Decisions worth knowing:

* **One validation path.** Every format turns a row into a plain mapping and hands it to
  `parse_row`; the formats differ only in how they find rows.
* **Unknown CSV columns are ignored**, because spreadsheets carry titles and notes alongside the
  ids. A column whose name is a near miss of a known one (``heigth``) is a ``FILE:1`` problem,
  though: ignoring it would silently buy a different size.
* **Unknown JSONL keys are a bad row.** JSONL is written by programs, so an unknown key is a typo
  or a schema mismatch, and either way the row would not buy what its author meant.
* **Duplicates.** Rows with the same identity (`Asset.key`) are one download: the first is
  yielded, later ones are counted and dropped. If a later row agrees on identity but asks for a
  different ``use_team_credits``, ``project_code`` or ``download_notes``, there is no way to
  honour both, so it is a bad row naming the first one's line.
* **All bad rows, then fail.** Reading never stops at the first bad row; `read_manifest` raises
  `ManifestError` after the last good row. A caller that must not spend on a bad manifest runs
  `validate_manifest` (or drains `read_manifest`) before buying anything.
* **Flat memory.** Rows stream; the only state that grows is one 24-byte slot per unique row in
  `DigestTable` (about 50 MB for a million unique rows, against >100 MB for a `set` of digests).
* **Bytes are decoded per line**, so a stray non-UTF-8 byte is reported at its line and the rest
  of the file is still checked. A UTF-8 BOM and CRLF line endings are accepted.
* **Writing ``.txt``** can only carry ids. It is accepted when every asset has the same
  ``asset_type`` and ``product_type`` and no other option, and the file starts with a comment
  naming the ``--asset-type``/``--product-type`` that read it back; anything else is refused
  with `UsageError` (write ``.csv`` or ``.jsonl``). Writes go to a temporary file that replaces
  the target only when complete.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TextIO, cast, get_args

from .assets import PRODUCT_TYPES, Asset, AssetType, table_for
from .errors import ManifestError, ManifestProblem, UsageError

__all__ = (
    "FIELDS",
    "MAX_PROBLEMS",
    "ManifestDefaults",
    "ManifestRow",
    "ManifestSummary",
    "parse_row",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
)

#: Columns (CSV) and keys (JSONL) a manifest row may have, in the order `write_manifest` uses.
FIELDS: Final = (
    "id",
    "asset_type",
    "product_type",
    "product_id",
    "height",
    "size",
    "file_type",
    "use_team_credits",
    "project_code",
    "download_notes",
)
#: Bad rows kept in a `ManifestError`; the rest are only counted.
MAX_PROBLEMS: Final = 100

_FORMATS: Final = (".csv", ".jsonl", ".txt")
_ASSET_TYPES: Final[tuple[str, ...]] = get_args(AssetType)
_FILE_TYPES: Final = ("jpg", "eps")
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_SIZE_RE: Final = re.compile(r"[a-z0-9_]{1,32}")
_MAX_ID: Final = 64
_MAX_DIGITS: Final = 12
_MAX_LINE: Final = 1 << 20
_BLOCK: Final = 1 << 20
#: Passes over the digests when counting duplicates (the top 2 bits of the first 8 bytes).
_SORT_PASSES: Final = 4
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One unique, valid row; `line` is where it was first seen, for messages."""

    asset: Asset
    line: int


@dataclass(frozen=True, slots=True)
class ManifestDefaults:
    """What a row that names no ``asset_type``/``product_type`` gets (the CLI's options)."""

    asset_type: AssetType = "image"
    product_type: str | None = None


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    """Counts of a valid manifest: `rows` good rows, of which `unique` are downloads."""

    rows: int
    unique: int
    duplicates: int


# --------------------------------------------------------------------------- row validation


def _show(value: object) -> str:
    """Quote a user value in a message without letting a huge cell flood the terminal."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(fields: Mapping[str, object], key: str, *, strip: bool = True) -> str | None:
    """A text value; None, "" and blanks mean "not given", as an empty CSV cell does."""
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text, got {_show(value)}")
    if not value.strip():
        return None
    return value.strip() if strip else value


def _whole(fields: Mapping[str, object], key: str) -> int | None:
    """A positive whole number, from a JSON integer or the digits of a CSV cell."""
    value = fields.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{key} must be a whole number, got {_show(value)}")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{key} must be a whole number, got {_show(value)}")
    if len(text) > _MAX_DIGITS or int(text) == 0:
        raise ValueError(f"{key} must be between 1 and {10**_MAX_DIGITS - 1}, got {text}")
    return int(text)


def _notes(fields: Mapping[str, object]) -> str | None:
    """Notes are free text: kept verbatim (no stripping) so they round-trip exactly."""
    return _text(fields, "download_notes", strip=False)


def _boolean(fields: Mapping[str, object], key: str) -> bool | None:
    """A JSON bool or true/false/1/0/yes/no in any case: what spreadsheets tend to export."""
    value = fields.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            return None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{key} must be true or false (or yes/no, 1/0), got {_show(value)}")


def _choice(fields: Mapping[str, object], key: str, choices: Iterable[str]) -> str | None:
    """One of a fixed set, case-insensitively, so ``Video`` and ``video`` are one identity."""
    text = _text(fields, key)
    if text is None:
        return None
    options = sorted(choices)
    if text.lower() not in options:
        raise ValueError(f"{key} {_show(text)} is not one of: {', '.join(options)}")
    return text.lower()


def _asset_id(fields: Mapping[str, object]) -> str:
    """Getty ids are short ASCII tokens; anything else is a typo or a shifted column."""
    value = fields.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("id is missing")
    if not isinstance(value, str):
        raise ValueError(f"id must be text, got {_show(value)}")
    text = value.strip()
    if len(text) > _MAX_ID:
        raise ValueError(f"id {_show(text)} is longer than {_MAX_ID} characters")
    if not _ID_RE.fullmatch(text):
        raise ValueError(f"id {_show(text)} has characters other than letters, digits, '-' and '_'")
    return text


def _size(fields: Mapping[str, object]) -> str | None:
    """Video size names vary by asset (``hd1``, ``4k``...), so only their shape is checked."""
    text = _text(fields, "size")
    if text is None:
        return None
    if not _SIZE_RE.fullmatch(text.lower()):
        raise ValueError(f"size {_show(text)} is not a size name like hd1, hd2, 4k, sd or lwf")
    return text.lower()


_Parser = Callable[[Mapping[str, object]], object]

#: Per-field parsers, in `FIELDS` order so a row's problems are listed in a stable order.
_PARSERS: Final[dict[str, _Parser]] = {
    "id": _asset_id,
    "asset_type": lambda f: _choice(f, "asset_type", _ASSET_TYPES),
    "product_type": lambda f: _choice(f, "product_type", PRODUCT_TYPES),
    "product_id": lambda f: _whole(f, "product_id"),
    "height": lambda f: _whole(f, "height"),
    "size": _size,
    "file_type": lambda f: _choice(f, "file_type", _FILE_TYPES),
    "use_team_credits": lambda f: _boolean(f, "use_team_credits"),
    "project_code": lambda f: _text(f, "project_code"),
    "download_notes": _notes,
}


def parse_row(fields: Mapping[str, object], defaults: ManifestDefaults) -> Asset:
    """Turn one row of any format into an `Asset`, or raise `ValueError` naming its problems.

    Values may be text (CSV, TXT) or JSON values (JSONL): None and blank text mean "not given".
    Every key must be one of `FIELDS`; the CSV reader drops unknown columns before calling this.
    All of a row's problems are named at once, so one pass over the file fixes it.
    """
    if len(fields) == 1:  # the common row of a .txt manifest: an id, nothing else
        plain = fields.get("id")
        if isinstance(plain, str) and len(plain) <= _MAX_ID and _ID_RE.fullmatch(plain):
            return Asset(plain, defaults.asset_type, defaults.product_type)
    problems: list[str] = []
    if any(k not in _PARSERS for k in fields):
        unknown = ", ".join(_show(k) for k in sorted(map(str, fields)) if k not in _PARSERS)
        problems.append(f"unknown key {unknown} (known: {', '.join(FIELDS)})")
    values: dict[str, Any] = {}
    for key, parse in _PARSERS.items():
        if key == "id" or _given(fields, key):  # the common row names few options: skip fast
            try:
                values[key] = parse(fields)
            except ValueError as exc:
                problems.append(str(exc))
    kind = values.get("asset_type") or defaults.asset_type
    if kind == "video":
        problems.extend(
            f"{k} applies to images only" for k in ("height", "file_type") if _given(fields, k)
        )
    elif _given(fields, "size"):
        problems.append("size applies to videos only (images take height)")
    if problems:
        raise ValueError("; ".join(problems))
    values["asset_type"] = kind
    values["product_type"] = values.get("product_type") or defaults.product_type
    return Asset(**values)


def _given(fields: Mapping[str, object], key: str) -> bool:
    value = fields.get(key)
    return value is not None and not (isinstance(value, str) and not value.strip())


# --------------------------------------------------------------------------- reading lines


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


# --------------------------------------------------------------------------- duplicates


def _extras(asset: Asset) -> int:
    """Hash of what a duplicate must agree on although it is not part of identity."""
    if asset.use_team_credits is None and not asset.project_code and not asset.download_notes:
        return 0
    text = repr((asset.use_team_credits, asset.project_code, asset.download_notes))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


# --------------------------------------------------------------------------- reading


@dataclass(slots=True)
class _Scan:
    """Running counts and problems of one read, shared by read_manifest and validate_manifest."""

    name: str
    rows: int = 0
    unique: int = 0
    total_problems: int = 0
    problems: list[ManifestProblem] = field(default_factory=list)

    def problem(self, line: int, text: str) -> None:
        self.total_problems += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(ManifestProblem(self.name, line, text))


def _check_defaults(defaults: ManifestDefaults) -> None:
    if defaults.asset_type not in _ASSET_TYPES:
        raise UsageError(f"--asset-type must be one of: {', '.join(_ASSET_TYPES)}")
    if defaults.product_type is not None and defaults.product_type not in PRODUCT_TYPES:
        choices = ", ".join(sorted(PRODUCT_TYPES))
        raise UsageError(f"--product-type {defaults.product_type!r} is not one of: {choices}")


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


def _open(path: str | Path, stdin: TextIO | None) -> IO[bytes] | IO[str]:
    if str(path) == "-":
        stream = stdin if stdin is not None else sys.stdin
        return cast("IO[bytes]", getattr(stream, "buffer", None) or stream)
    try:
        return open(path, "rb")  # closed by _scan's finally
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a manifest file") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None


def _scan(
    path: str | Path,
    defaults: ManifestDefaults,
    stdin: TextIO | None,
    scan: _Scan,
    rows_hint: int = 0,
) -> Iterator[ManifestRow]:
    fmt = _format_of(path)
    stream = _open(path, stdin)
    seen = table_for(rows_hint)
    try:
        lines = _Lines(stream)
        if fmt == ".csv":
            records = _csv_records(lines, scan.name)
        elif fmt == ".jsonl":
            records = _jsonl_records(lines)
        else:
            records = _txt_records(lines)
        for line, row in records:
            if isinstance(row, str):
                scan.problem(line, row)
                continue
            try:
                asset = parse_row(row, defaults)
            except ValueError as exc:
                scan.problem(line, str(exc))
                continue
            scan.rows += 1
            extras = _extras(asset)
            first = seen.setdefault(asset.digest, (min(line, 0xFFFFFFFF) << 32) | extras)
            if not first:
                scan.unique += 1
                yield ManifestRow(asset, line)
            elif first & 0xFFFFFFFF != extras:
                scan.rows -= 1
                scan.problem(
                    line,
                    f"same asset as line {first >> 32} but with a different use_team_credits, "
                    "project_code or download_notes",
                )
    except OSError as exc:
        raise UsageError(f"{scan.name}: cannot read manifest: {exc.strerror or exc}") from None
    finally:
        if str(path) != "-":
            stream.close()
    if scan.total_problems:
        raise ManifestError(scan.problems, total=scan.total_problems)


def _validate_plain_txt(path: Path, defaults: ManifestDefaults) -> ManifestSummary | None:
    """Validate a `.txt` manifest of plain ids at C speed where possible; None: not plain.

    Most rows are an id and nothing else, so each 1 MiB block is split and checked with one
    regex per line, and the duplicate count comes from sorting the rows' 16-byte digests at
    the end (16 bytes a row, no hash table). Anything unusual (a bad id, a bad byte, an
    over-long line) returns None, and the generic reader names the problem with its line.
    """
    proto = Asset("0", defaults.asset_type, defaults.product_type).key
    cut = proto.index("/") + 1
    prefix, suffix = proto[:cut], proto[cut + 1 :]  # key(id) == prefix + id + suffix
    blake, match = hashlib.blake2b, _ID_RE.fullmatch
    digests = bytearray()
    rows = 0
    carry = b""
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            data = carry + block
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if len(carry) > _MAX_LINE:
                return None
            try:
                text = data[:end].decode("utf-8")
            except UnicodeDecodeError:
                return None
            if rows == 0 and not digests:
                text = text.removeprefix("\ufeff")
            for line in text.split("\n"):
                token = (line.split("#", 1)[0] if "#" in line else line).strip()
                if not token:
                    continue
                if len(token) > _MAX_ID or not match(token):
                    return None
                digests += blake(f"{prefix}{token}{suffix}".encode(), digest_size=16).digest()
                rows += 1
    if carry:
        return None  # a last line without a newline: rare, let the generic reader do it
    unique = _distinct(digests)
    return ManifestSummary(rows, unique, rows - unique)


def _distinct(digests: bytearray) -> int:
    """How many different 16-byte digests `digests` holds, without a table of them all.

    Sorting the first 8 bytes finds every candidate duplicate; only those few are compared
    whole, so a 64-bit collision is never taken for a duplicate.
    """
    prefixes = memoryview(digests).cast("Q")[0::2]
    shared: set[int] = set()
    for top in range(_SORT_PASSES):  # a quarter of the rows at a time: a quarter of the memory
        ordered = sorted(p for p in prefixes if p >> 62 == top)
        shared.update(a for a, b in itertools.pairwise(ordered) if a == b)
        del ordered
    if not shared:
        return len(prefixes)
    full = memoryview(digests)
    suspects = [full[16 * i : 16 * i + 16].tobytes() for i, p in enumerate(prefixes) if p in shared]
    return len(prefixes) - len(suspects) + len(set(suspects))


def _precheck(path: str | Path, defaults: ManifestDefaults) -> None:
    """Fail with `UsageError` at the call, not at the first `next()`, for what is not a row."""
    _format_of(path)
    _check_defaults(defaults)
    if str(path) != "-":
        _open(path, None).close()


def _name(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def read_manifest(
    path: str | Path,
    defaults: ManifestDefaults = ManifestDefaults(),
    *,
    stdin: TextIO | None = None,
    rows_hint: int = 0,
) -> Iterator[ManifestRow]:
    """Yields each unique valid row as it streams; after the last row, raises ManifestError
    naming every bad row if there were any.

    `UsageError` for an unknown extension, a missing or unreadable file, or bad `defaults`
    (raised when iteration starts). `-` reads `stdin` (default: `sys.stdin`) as ``.txt``.
    `rows_hint` (the unique count `validate_manifest` gave) sizes the duplicate table once,
    so its memory never doubles for a moment while it grows.
    """
    _precheck(path, defaults)
    return _scan(path, defaults, stdin, _Scan(_name(path)), rows_hint)


def validate_manifest(
    path: str | Path,
    defaults: ManifestDefaults = ManifestDefaults(),
    *,
    stdin: TextIO | None = None,
) -> ManifestSummary:
    """Read the whole manifest without keeping rows: counts, or `ManifestError` for bad rows.

    A `.txt` manifest without a single id is refused as an empty `.csv` is (it is far more
    often the wrong file than a request to do nothing).
    """
    _precheck(path, defaults)
    summary = _validate(path, defaults, stdin)
    if summary.rows == 0 and _format_of(path) == ".txt":
        problem = "no asset ids: expected one id a line (blank lines and # comments are skipped)"
        raise ManifestError([ManifestProblem(_name(path), 1, problem)])
    return summary


def _validate(
    path: str | Path, defaults: ManifestDefaults, stdin: TextIO | None
) -> ManifestSummary:
    if str(path) != "-" and _format_of(path) == ".txt":
        try:
            fast = _validate_plain_txt(Path(path), defaults)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
        if fast is not None:
            return fast
    scan = _Scan(_name(path))
    for _ in _scan(path, defaults, stdin, scan):
        pass
    return ManifestSummary(scan.rows, scan.unique, scan.rows - scan.unique)


# --------------------------------------------------------------------------- writing


def _cells(asset: Asset) -> dict[str, str]:
    values: dict[str, object] = {k: getattr(asset, k) for k in FIELDS}
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = "" if value is None else str(value)
    return out


def _write_csv(out: IO[str], assets: Iterable[Asset]) -> int:
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for asset in assets:
        writer.writerow(_cells(asset))
        count += 1
    return count


def _write_jsonl(out: IO[str], assets: Iterable[Asset]) -> int:
    count = 0
    for asset in assets:
        row = {k: v for k in FIELDS if (v := getattr(asset, k)) is not None}
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def _write_txt(out: IO[str], assets: Iterable[Asset], name: str) -> int:
    """Ids only: refuse anything that reading the ids back could not reproduce."""
    first: Asset | None = None
    count = 0
    for asset in assets:
        if first is None:
            first = asset
            options = f"--asset-type {asset.asset_type}"
            if asset.product_type:
                options += f" --product-type {asset.product_type}"
            out.write(f"# bulkgetty manifest: read back with {options}\n")
        bare = Asset(asset.id, first.asset_type, first.product_type)
        if asset != bare:
            raise UsageError(
                f"{name}: a .txt manifest holds only ids, but {asset.asset_type} {asset.id} has "
                "options or a different asset/product type; write .csv or .jsonl instead"
            )
        out.write(asset.id + "\n")
        count += 1
    return count


def write_manifest(path: str | Path, assets: Iterable[Asset]) -> int:
    """Write `assets` in the format of `path`'s extension; returns how many rows were written.

    The file is replaced only once complete, so a failed write leaves any old file intact.
    What is written reads back (`read_manifest`) as the same assets; for ``.txt`` that needs the
    ``--asset-type``/``--product-type`` named in its first-line comment.
    """
    fmt = _format_of(path)
    if str(path) == "-":
        raise UsageError("write a manifest to a file, not to '-'")
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write manifest: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            if fmt == ".csv":
                count = _write_csv(out, assets)
            elif fmt == ".jsonl":
                count = _write_jsonl(out, assets)
            else:
                count = _write_txt(out, assets, str(path))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
