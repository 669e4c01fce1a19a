"""A whole manifest: every row checked, duplicates merged, then the verdict.

`read_manifest` streams the unique valid rows; `validate_manifest` reads everything and keeps
only counts, so a caller can refuse a bad manifest before spending anything.

Decisions worth knowing:

* **Duplicates.** Rows with the same identity (`Asset.key`) are one download: the first is
  yielded, later ones are counted and dropped. If a later row agrees on identity but asks for a
  different ``use_team_credits``, ``project_code`` or ``download_notes``, there is no way to
  honour both, so it is a bad row naming the first one's line.
* **All bad rows, then fail.** Reading never stops at the first bad row; `read_manifest` raises
  `ManifestError` after the last good row. A caller that must not spend on a bad manifest runs
  `validate_manifest` (or drains `read_manifest`) before buying anything.
* **Flat memory.** Rows stream; the only state that grows is one 24-byte slot per unique row in
  `DigestTable` (about 50 MB for a million unique rows, against >100 MB for a `set` of digests).
* **Plain ``.txt`` is validated at C speed** (`_validate_plain_txt`): a million ids are checked
  before the first spend without building a row each; anything unusual falls back to the
  generic reader, which names the problem with its line.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TextIO, cast

from bulkgetty.assets import PRODUCT_TYPES, Asset, table_for
from bulkgetty.errors import ManifestError, ManifestProblem, UsageError
from bulkgetty.stages.manifest.fields import (
    _ASSET_TYPES,
    _ID_RE,
    _MAX_ID,
    ManifestDefaults,
    parse_row,
)
from bulkgetty.stages.manifest.formats import (
    _BLOCK,
    _MAX_LINE,
    _csv_records,
    _format_of,
    _jsonl_records,
    _Lines,
    _txt_records,
)

#: Bad rows kept in a `ManifestError`; the rest are only counted.
MAX_PROBLEMS: Final = 100
#: Passes over the digests when counting duplicates (the top 2 bits of the first 8 bytes).
_SORT_PASSES: Final = 4


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One unique, valid row; `line` is where it was first seen, for messages."""

    asset: Asset
    line: int


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    """Counts of a valid manifest: `rows` good rows, of which `unique` are downloads."""

    rows: int
    unique: int
    duplicates: int


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
    defaults: ManifestDefaults = ManifestDefaults(),  # noqa: B008 (frozen: safe to share)
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
    defaults: ManifestDefaults = ManifestDefaults(),  # noqa: B008 (frozen: safe to share)
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
