"""Names for files in the output folder: a server header's name made safe to create.

Names come from a server header (Content-Disposition), so they are hostile until cleaned
(`safe_name`); `parse_content_disposition` reads the header (RFC 6266, `filename*` first).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote_to_bytes

PART_SUFFIX: Final = ".part"
#: Longest final name in UTF-8 bytes. 255 is NAME_MAX on every common filesystem; the final
#: name is capped lower so that `NAME.part` still fits in 255 bytes.
MAX_NAME_BYTES: Final = 255 - len(PART_SUFFIX)
#: Small writes are gathered until at least this many bytes, then written with one pwrite.
_MAX_EXT_BYTES: Final = 32
_MAX_COLLISIONS: Final = 10_000

_RESERVED_WINDOWS: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_WINDOWS_BAD_CHARS: Final = re.compile(r'[<>:"|?*]')
#: Names `_clean_component` keeps unchanged without looking at each character: ASCII
#: letters, digits and `_-.() ` only, neither starting with `.` or ` ` nor ending in them.
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9_()-](?:[A-Za-z0-9_.() -]*[A-Za-z0-9_()-])?")

_EXT_BY_TYPE: Final = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/tiff": ".tif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "image/x-eps": ".eps",
    "application/postscript": ".eps",
    "application/eps": ".eps",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpg",
    "video/webm": ".webm",
    "video/x-m4v": ".m4v",
    "video/mxf": ".mxf",
    "application/mxf": ".mxf",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
}

# --------------------------------------------------------------------------- names


def safe_name(raw: str | None, *, asset_id: str, content_type: str | None) -> str:
    """A file name that is safe to create directly in the output folder.

    A safe Getty name (`GettyImages-1167612765.jpg`) comes back exactly as sent. Anything
    else is reduced to one harmless path component; with nothing usable left, the name is
    the asset id plus an extension from `content_type`.
    """
    name = _clean_component(raw) if raw else ""
    if not name:
        name = _clean_component(asset_id + extension_for(content_type)) or "asset.bin"
    return name


def extension_for(content_type: str | None) -> str:
    """`.jpg` for image/jpeg and so on; `.bin` when the type is missing or unknown."""
    if not content_type:
        return ".bin"
    mime = content_type.split(";", 1)[0].strip().lower()
    return _EXT_BY_TYPE.get(mime, ".bin")


def _clean_component(raw: str) -> str:
    """Keep the last path component; drop what a filesystem or a shell would misread."""
    if _is_plain_name(raw):
        return raw  # every rule below would keep it as it is (checked three times a file)
    last = raw.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in last if not _is_unsafe_char(ch))
    text = _WINDOWS_BAD_CHARS.sub("_", text)
    text = text.strip().rstrip(". ").lstrip(". ")
    if not text:
        return ""
    stem, ext = _split_ext(text)
    if stem.split(".", 1)[0].rstrip(" ").upper() in _RESERVED_WINDOWS:
        stem = "_" + stem
    if ext.lower() == PART_SUFFIX:  # a finished file must never pass for a partial one
        ext = "_part"
    return _fit(stem, ext, MAX_NAME_BYTES)


def _is_plain_name(raw: str) -> bool:
    """A short ASCII name with no character, edge, suffix or device name to clean."""
    return (
        len(raw) <= MAX_NAME_BYTES
        and _PLAIN_NAME.fullmatch(raw) is not None
        and not raw.lower().endswith(PART_SUFFIX)
        and raw.split(".", 1)[0].rstrip(" ").upper() not in _RESERVED_WINDOWS
    )


def _is_unsafe_char(ch: str) -> bool:
    """Control and format characters (NUL, newline, bidi overrides) and lone surrogates."""
    category = unicodedata.category(ch)
    return category in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _split_ext(name: str) -> tuple[str, str]:
    """Split off a short extension; a 'extension' longer than 32 bytes is part of the stem."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) + 1 > _MAX_EXT_BYTES or " " in ext:
        return name, ""
    return stem, "." + ext


def _fit(stem: str, ext: str, limit: int) -> str:
    """`stem + ext` in at most `limit` UTF-8 bytes, cutting the stem on a character boundary."""
    budget = limit - len(ext.encode())
    raw = stem.encode()
    if len(raw) > budget:
        stem = raw[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return stem + ext


def _is_single_safe_component(name: str) -> bool:
    """True when `name` is exactly what `safe_name` would keep (used on journal input)."""
    return bool(name) and _clean_component(name) == name


# ------------------------------------------------------------- Content-Disposition


def parse_content_disposition(value: str) -> str | None:
    """The file name in a Content-Disposition header, or None.

    Accepts Getty's unquoted form (`attachment; filename=GettyImages-1.jpg`), quoted strings
    with backslash escapes, and RFC 5987/6266 `filename*=UTF-8''%E2%82%AC.jpg`, which wins
    over `filename`. Junk parameters are skipped rather than failing the download.
    """
    params = _parse_params(value)
    extended = params.get("filename*")
    if extended is not None:
        decoded = _decode_ext_value(extended)
        if decoded:
            return decoded
    plain = params.get("filename")
    return plain or None


def _parse_params(value: str) -> dict[str, str]:
    """`name=value` pairs after the disposition type; the first occurrence of a name wins."""
    params: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in "=;":
            j += 1
        key = value[i:j].strip().lower()
        if j >= n or value[j] == ";":
            i = j + 1
            continue
        raw, i = _read_value(value, j + 1)
        if key and key not in params:
            params[key] = raw
    return params


def _read_value(value: str, i: int) -> tuple[str, int]:
    """Read a quoted-string (with escapes) or a token up to `;`; return it and the next index."""
    n = len(value)
    while i < n and value[i] in " \t":
        i += 1
    if i < n and value[i] == '"':
        out: list[str] = []
        i += 1
        while i < n and value[i] != '"':
            if value[i] == "\\" and i + 1 < n:
                i += 1
            out.append(value[i])
            i += 1
        end = value.find(";", i)
        return "".join(out), (n if end < 0 else end + 1)
    end = value.find(";", i)
    end = n if end < 0 else end
    return value[i:end].strip(), end + 1


def _decode_ext_value(raw: str) -> str | None:
    """Decode RFC 5987 `charset'lang'pct-encoded`; None if malformed or an unknown charset."""
    parts = raw.strip().strip('"').split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0].strip().lower()
    if charset not in ("utf-8", "iso-8859-1", "latin-1", "us-ascii"):
        return None
    data = unquote_to_bytes(parts[2])
    try:
        return data.decode("utf-8" if charset == "utf-8" else "latin-1")
    except UnicodeDecodeError:
        return None


def _series(clean: str) -> Iterator[str]:
    """`name`, `stem (2).ext`, `stem (3).ext` ... up to the collision limit."""
    stem, ext = _split_ext(clean)
    yield clean
    for n in range(2, _MAX_COLLISIONS + 1):
        yield _fit(stem, f" ({n}){ext}", MAX_NAME_BYTES)
