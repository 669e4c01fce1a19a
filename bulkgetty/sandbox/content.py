"""Deterministic file content, generated on the fly by slicing one random pool.

A file is real media (`bulkgetty.sandbox.media`: a JPEG of the asked height, an MP4 with a
`moov`) padded with bytes of a seeded 4 MiB pool, starting at an offset derived from (seed,
asset type, id, variant, generation) and wrapping around; an EPS is its magic line then pool
bytes. No file is ever stored and serving costs one memoryview slice per chunk, so the sandbox
can feed a benchmark at memory speed.

Delivery paths (also the file layout `write_corpus` produces, for nginx and friends):

    /{asset_type}/{quoted id}[,h{height}][,s{size}].{ext}

`ext` is `jpg` or `eps` for images (from `file_type`) and `mp4` for videos. The id is
percent-quoted with only `-._~` kept, so `,` never appears inside it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from .media import POOL_SIZE, jpeg_parts, minimum_length, mp4_parts, pool_run

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .config import SandboxConfig

__all__ = (
    "Expected",
    "FileSpec",
    "Variant",
    "content",
    "file_path",
    "parse_file_path",
    "write_corpus",
)

CHUNK = 2**20
_LAST_MODIFIED_BASE = 1_767_225_600  # 2026-01-01T00:00:00Z

_EPS_MAGIC = b"%!PS-Adobe-3.0 EPSF-3.0\n"
CONTENT_TYPES = {"jpg": "image/jpeg", "eps": "application/postscript", "mp4": "video/mp4"}


@dataclass(frozen=True, slots=True)
class Variant:
    """What was asked for besides the asset: it picks a different file."""

    height: int | None = None
    size: str | None = None
    file_type: str | None = None


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct download of one asset must equal."""

    sha256: str
    length: int
    filename: str
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One concrete file: enough to produce its bytes and headers."""

    asset_type: str
    id: str
    variant: Variant
    length: int
    offset: int
    generation: int
    seed: int

    @property
    def ext(self) -> str:
        return extension(self.asset_type, self.variant)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.ext]

    @property
    def filename(self) -> str:
        return f"GettyImages-{self.id}.{self.ext}"

    @property
    def etag(self) -> str:
        tag = hashlib.blake2b(
            f"{self.seed}|{self.offset}|{self.length}|{self.generation}".encode(), digest_size=8
        ).hexdigest()
        return f'"{tag}"'

    @property
    def last_modified(self) -> float:
        return float(_LAST_MODIFIED_BASE + 3600 * self.generation)

    def slices(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Bytes [start, end) as zero-copy views of at most `CHUNK` bytes."""
        parts = _parts(self.variant, self.ext, self.seed, self.offset, self.length)
        return _slices(parts, start, self.length if end is None else end)


def extension(asset_type: str, variant: Variant) -> str:
    if asset_type == "video":
        return "mp4"
    return "eps" if variant.file_type == "eps" else "jpg"


def _parts(variant: Variant, ext: str, seed: int, offset: int, length: int) -> list[memoryview]:
    """The file as consecutive views: media structure and pool padding."""
    if ext == "jpg":
        return jpeg_parts(variant.height, length, seed, offset)
    if ext == "mp4":
        return mp4_parts(variant.size, length, seed, offset)
    head = memoryview(_EPS_MAGIC)[:length]
    return [head, *pool_run(seed, offset + len(head), length - len(head))]


def _slices(parts: list[memoryview], start: int, end: int) -> Iterator[memoryview]:
    """Bytes [start, end) of the concatenated parts, in views of at most CHUNK bytes."""
    pos = 0
    for part in parts:
        stop = pos + len(part)
        if stop > start and pos < end:
            lo, hi = max(start, pos) - pos, min(end, stop) - pos
            for at in range(lo, hi, CHUNK):
                yield part[at : min(hi, at + CHUNK)]
        pos = stop
        if pos >= end:
            return


def normalized(asset_type: str, variant: Variant) -> Variant:
    """One canonical Variant per distinct file: jpg is the default, videos have no height."""
    if asset_type == "video":
        return Variant(size=variant.size)
    return Variant(height=variant.height, file_type="eps" if variant.file_type == "eps" else None)


def _hash_int(*parts: object) -> int:
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _variant_tag(variant: Variant) -> str:
    return f"{variant.height or ''},{variant.size or ''},{variant.file_type or ''}"


def file_spec(
    config: SandboxConfig, asset_type: str, asset_id: str, variant: Variant, generation: int = 0
) -> FileSpec:
    """The file the sandbox serves for this asset, variant and generation."""
    variant = normalized(asset_type, variant)
    tag = _variant_tag(variant)
    h = _hash_int(config.seed, asset_type, asset_id, tag, generation)
    if asset_id in config.sizes:
        length = config.sizes[asset_id]
    else:
        lo, hi = config.video_bytes if asset_type == "video" else config.image_bytes
        length = lo + (h >> 24) % max(1, hi - lo + 1)
    ext = extension(asset_type, variant)
    length = max(length, minimum_length(ext, variant.height, variant.size))
    return FileSpec(asset_type, asset_id, variant, length, h % POOL_SIZE, generation, config.seed)


def content(
    asset_type: str, asset_id: str, variant: Variant, length: int, seed: int, generation: int = 0
) -> Iterator[memoryview]:
    """The bytes of one file of the given length, as zero-copy chunks."""
    variant = normalized(asset_type, variant)
    offset = _hash_int(seed, asset_type, asset_id, _variant_tag(variant), generation) % POOL_SIZE
    ext = extension(asset_type, variant)
    return _slices(_parts(variant, ext, seed, offset, length), 0, length)


@functools.lru_cache(maxsize=4096)
def sha256_of(spec: FileSpec) -> str:
    digest = hashlib.sha256()
    for chunk in spec.slices():
        digest.update(chunk)
    return digest.hexdigest()


def expected_of(spec: FileSpec) -> Expected:
    return Expected(sha256_of(spec), spec.length, spec.filename, spec.content_type, spec.etag)


def file_path(asset_type: str, asset_id: str, variant: Variant) -> str:
    """The delivery path (and corpus-relative file name) of one file."""
    variant = normalized(asset_type, variant)
    name = quote(asset_id, safe="-")
    if variant.height is not None:
        name += f",h{variant.height}"
    if variant.size:
        name += f",s{quote(variant.size, safe='')}"
    return f"/{asset_type}/{name}.{extension(asset_type, variant)}"


def parse_file_path(path: str) -> tuple[str, str, Variant] | None:
    """Inverse of `file_path`; None for anything that is not one."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or parts[1] not in ("image", "video"):
        return None
    stem, dot, ext = parts[2].rpartition(".")
    if not dot or ext not in ("jpg", "eps", "mp4"):
        return None
    asset_id, *tokens = stem.split(",")
    height: int | None = None
    size: str | None = None
    for token in tokens:
        if token[:1] == "h" and token[1:].isdigit():
            height = int(token[1:])
        elif token[:1] == "s" and token[1:]:
            size = unquote(token[1:])
        else:
            return None
    variant = normalized(parts[1], Variant(height, size, "eps" if ext == "eps" else None))
    if not asset_id or extension(parts[1], variant) != ext:
        return None
    return parts[1], unquote(asset_id), variant


def write_corpus(
    directory: Path | str,
    assets: Iterable[tuple[str, str]],
    config: SandboxConfig,
    *,
    variant: Variant | None = None,
) -> list[Path]:
    """Write the files a sandbox with `config` would serve, laid out as its delivery paths.

    Point a static server at `directory` and set `SandboxConfig.delivery_base` to its URL:
    the signed URIs then resolve to these files (the query string is ignored by the server).
    `assets` are (asset_type, id) pairs; every file uses `variant` (default: no options).
    """
    root = Path(directory)
    written: list[Path] = []
    for asset_type, asset_id in assets:
        v = variant or Variant()
        spec = file_spec(config, asset_type, asset_id, v)
        target = root / file_path(asset_type, asset_id, v).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            for chunk in spec.slices():
                fh.write(chunk)
        written.append(target)
    return written
