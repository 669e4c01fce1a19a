"""One manifest row -> an `Asset`: the field rules every format shares.

Decisions worth knowing:

* **One validation path.** Every format turns a row into a plain mapping and hands it to
  `parse_row`; the formats differ only in how they find rows (`formats`).
* **All of a row's problems at once**, in `FIELDS` order, so one pass over the file fixes it.
* **Loose where spreadsheets are loose**: blank cells mean "not given", booleans may be
  yes/no/1/0, choices are case-insensitive (``Video`` and ``video`` are one identity).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, get_args

from bulkgetty.assets import PRODUCT_TYPES, Asset, AssetType

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

_ASSET_TYPES: Final[tuple[str, ...]] = get_args(AssetType)
_FILE_TYPES: Final = ("jpg", "eps")
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_SIZE_RE: Final = re.compile(r"[a-z0-9_]{1,32}")
_MAX_ID: Final = 64
_MAX_DIGITS: Final = 12
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


@dataclass(frozen=True, slots=True)
class ManifestDefaults:
    """What a row that names no ``asset_type``/``product_type`` gets (the CLI's options)."""

    asset_type: AssetType = "image"
    product_type: str | None = None


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
