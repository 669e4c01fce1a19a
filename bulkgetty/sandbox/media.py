"""Real media around the pool's bytes: a baseline JPEG that decodes, an MP4 that parses.

A user's script (or an image library, or ffprobe) opening a sandbox file must see media of
the size it asked for, yet the sandbox must serve thousands of files at memory speed. So a
file is a small structure, built once per shape and cached, around padding cut from the
seeded pool:

- JPEG: SOI, JFIF APP0, then COM segments of pool bytes (a decoder skips them by their
  length), then the tables, a 1x1-sampled grayscale frame of WIDTHxHEIGHT and a scan of flat
  8x8 blocks (2 bits each), EOI. Every image is mid-grey; the padding makes each file unique.
  Width is 3/2 of the height. Without a `height` the image is the tallest of
  `IMAGE_HEIGHTS` whose structure fits the file's length.
- MP4: `ftyp`, a `moov` with `mvhd` and one video `trak` (its frame size from the video size
  name): one grey JPEG frame (QuickTime Photo-JPEG) held for ten seconds, stored first in the
  one `mdat` box, the pool bytes after it.

The padding fills the file to its length exactly; a length smaller than the structure grows to
the structure's size (`minimum_length`).
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Iterator

__all__ = (
    "IMAGE_HEIGHTS",
    "POOL_SIZE",
    "VIDEO_FRAMES",
    "image_dimensions",
    "jpeg_parts",
    "minimum_length",
    "mp4_parts",
    "pool",
    "pool_run",
)

POOL_SIZE = 4 * 2**20

#: The image heights the sandbox sells (Getty's own ladder is per asset and undocumented; a
#: real answer lists eleven sizes from 66 px to 5120 px): any other `height` is
#: FileDownloadSizeNotFound.
IMAGE_HEIGHTS = (66, 170, 300, 480, 500, 512, 592, 612, 1024, 2048, 3000, 5120)

#: Frame size per video size name (what `download_sizes` and the MP4's `tkhd` say).
VIDEO_FRAMES: dict[str, tuple[int, int]] = {
    "lwf": (480, 270),
    "ntsccm": (720, 486),
    "sd": (640, 360),
    "hd1": (1280, 720),
    "hd2": (1280, 720),
    "hd3": (1920, 1080),
    "hd4": (1920, 1080),
    "4k": (3840, 2160),
}
#: A video without a size is the largest.
DEFAULT_VIDEO_SIZE = "4k"
VIDEO_SECONDS = 10

#: One full COM segment: FF FE, length 0xFFFF (it counts itself), 65533 data bytes.
_SEGMENT = 2 + 0xFFFF
_SEGMENT_DATA = 0xFFFF - 2
_COM_HEADER = 4


def image_dimensions(height: int) -> tuple[int, int]:
    return height * 3 // 2, height


# --- the pool ---


@functools.cache
def pool(seed: int) -> bytes:
    """POOL_SIZE seeded random bytes twice over, so any run of up to POOL_SIZE is contiguous."""
    data = random.Random(seed).randbytes(POOL_SIZE)
    return data + data


def pool_run(seed: int, offset: int, n: int) -> Iterator[memoryview]:
    """`n` pool bytes from `offset`, wrapping around: views of at most POOL_SIZE bytes."""
    view = memoryview(pool(seed))
    pos = offset % POOL_SIZE
    while n > 0:
        take = min(n, POOL_SIZE)
        yield view[pos : pos + take]
        n -= take
        pos = (pos + take) % POOL_SIZE


@functools.cache
def _com_pool(seed: int) -> tuple[bytes, int]:
    """The pool cut into full COM segments, doubled so any run of segments is contiguous."""
    data = pool(seed)
    count = POOL_SIZE // _SEGMENT_DATA
    header = b"\xff\xfe\xff\xff"
    segments = b"".join(
        header + data[i * _SEGMENT_DATA : (i + 1) * _SEGMENT_DATA] for i in range(count)
    )
    return segments + segments, count


def _com_padding(seed: int, offset: int, n: int) -> Iterator[memoryview]:
    """Exactly `n` bytes (n == 0 or n >= 4) of COM segments holding pool bytes."""
    com, count = _com_pool(seed)
    view = memoryview(com)
    full, rest = divmod(n, _SEGMENT)
    if 0 < rest < _COM_HEADER:  # split one full segment and the rest into two
        full -= 1
        rest += _SEGMENT
    index = offset % count
    while full > 0:
        take = min(full, 2 * count - index)
        yield view[index * _SEGMENT : (index + take) * _SEGMENT]
        full -= take
        index = (index + take) % count
    for part in _split(rest):
        yield memoryview(b"\xff\xfe" + struct.pack(">H", part - 2))
        yield from pool_run(seed, offset, part - _COM_HEADER)


def _split(rest: int) -> tuple[int, ...]:
    if rest == 0:
        return ()
    if rest <= _SEGMENT:
        return (rest,)
    half = rest // 2
    return (half, rest - half)


# --- JPEG ---


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


_JFIF = _segment(0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
#: Quantisation table 0, all ones; DC and AC Huffman tables with one code each ("0"):
#: DC difference category 0 and AC end-of-block.
_TABLES = (
    _segment(0xFFDB, b"\x00" + b"\x01" * 64)
    + _segment(0xFFC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00")
    + _segment(0xFFC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00")
)
_SOS = _segment(0xFFDA, b"\x01\x01\x00\x00\x3f\x00")


@functools.lru_cache(maxsize=64)
def _jpeg_frame(width: int, height: int) -> bytes:
    """Everything after the padding: tables, frame header, the scan and EOI."""
    sof = _segment(0xFFC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    blocks = -(-width // 8) * -(-height // 8)
    whole, bits = divmod(2 * blocks, 8)  # two zero bits per block
    scan = bytes(whole) + (bytes([0xFF >> bits]) if bits else b"")  # padded with ones
    return _TABLES + sof + _SOS + scan + b"\xff\xd9"


_JPEG_HEAD = b"\xff\xd8" + _JFIF


def _jpeg_size(height: int) -> int:
    return len(_JPEG_HEAD) + len(_jpeg_frame(*image_dimensions(height)))


def _fitting_height(length: int) -> int:
    fits = [h for h in IMAGE_HEIGHTS if _jpeg_size(h) <= length]
    return fits[-1] if fits else IMAGE_HEIGHTS[0]


def jpeg_parts(height: int | None, length: int, seed: int, offset: int) -> list[memoryview]:
    """A JPEG of `height` (None: the tallest that fits) filled to `length` bytes."""
    height = height or _fitting_height(length)
    frame = _jpeg_frame(*image_dimensions(height))
    padding = max(0, length - len(_JPEG_HEAD) - len(frame))
    parts = [memoryview(_JPEG_HEAD)]
    if 0 < padding < _COM_HEADER:  # too short for a segment: fill bytes before a marker
        parts.append(memoryview(b"\xff" * padding))
    else:
        parts.extend(_com_padding(seed, offset, padding))
    parts.append(memoryview(frame))
    return parts


# --- MP4 ---


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", len(body) + 8) + kind + body


def _full_box(kind: bytes, version_flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version_flags), *payload)


_FTYP = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isom", b"iso2", b"mp41")
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_TIMESCALE = 1000


_MDAT_HEADER = 16  # 64-bit size: any file length fits


@functools.lru_cache(maxsize=16)
def _still(width: int, height: int) -> bytes:
    """The video's one frame: a grey JPEG of the frame size (QuickTime Photo-JPEG)."""
    return _JPEG_HEAD + _jpeg_frame(width, height)


@functools.lru_cache(maxsize=16)
def _moov(width: int, height: int) -> bytes:
    """One video track of WIDTHxHEIGHT: a single JPEG frame held for VIDEO_SECONDS, stored
    first in `mdat` (so players and ffprobe decode a real frame; the padding follows it).

    The moov's length does not depend on the frame's offset, so it is built twice."""
    frame_at = len(_FTYP) + len(_build_moov(width, height, 0)) + _MDAT_HEADER
    return _build_moov(width, height, frame_at)


def _build_moov(width: int, height: int, frame_at: int) -> bytes:
    duration = VIDEO_SECONDS * _TIMESCALE
    mvhd = _full_box(
        b"mvhd",
        0,
        struct.pack(">IIII", 0, 0, _TIMESCALE, duration),
        struct.pack(">IH", 0x10000, 0x100) + bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, 1, 0, duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd", 0, struct.pack(">IIII", 0, 0, _TIMESCALE, duration), struct.pack(">HH", 0x55C4, 0)
    )
    hdlr = _full_box(b"hdlr", 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 1, bytes(8))
    dinf = _box(b"dinf", _full_box(b"dref", 0, struct.pack(">I", 1), _full_box(b"url ", 1)))
    entry = _box(
        b"jpeg",
        bytes(6),
        struct.pack(">H", 1),  # data reference index
        bytes(16),
        struct.pack(">HH", width, height),
        struct.pack(">II", 0x480000, 0x480000),
        bytes(4),
        struct.pack(">H", 1),
        bytes(32),
        struct.pack(">Hh", 0x18, -1),
    )
    one = struct.pack(">I", 1)
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, one, entry),
        _full_box(b"stts", 0, one, struct.pack(">II", 1, duration)),
        _full_box(b"stsc", 0, one, struct.pack(">III", 1, 1, 1)),
        _full_box(b"stsz", 0, struct.pack(">III", 0, 1, len(_still(width, height)))),
        _full_box(b"stco", 0, one, struct.pack(">I", frame_at)),
    )
    minf = _box(b"minf", vmhd, dinf, stbl)
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
    return _box(b"moov", mvhd, trak)


def _frame_of(size: str | None) -> tuple[int, int]:
    return VIDEO_FRAMES.get(size or DEFAULT_VIDEO_SIZE, VIDEO_FRAMES[DEFAULT_VIDEO_SIZE])


def mp4_parts(size: str | None, length: int, seed: int, offset: int) -> list[memoryview]:
    """An MP4 for the video size name (None: the largest), its `mdat` filling `length`."""
    frame = _frame_of(size)
    moov, still = _moov(*frame), _still(*frame)
    data = max(0, length - len(_FTYP) - len(moov) - _MDAT_HEADER - len(still))
    mdat = struct.pack(">I", 1) + b"mdat" + struct.pack(">Q", _MDAT_HEADER + len(still) + data)
    parts = [memoryview(_FTYP), memoryview(moov), memoryview(mdat), memoryview(still)]
    parts.extend(pool_run(seed, offset, data))
    return parts


def minimum_length(ext: str, height: int | None, size: str | None) -> int:
    """The smallest file of this shape: a shorter configured length grows to it."""
    if ext == "jpg":
        return _jpeg_size(height) if height else _jpeg_size(IMAGE_HEIGHTS[0])
    if ext == "mp4":
        frame = _frame_of(size)
        return len(_FTYP) + len(_moov(*frame)) + _MDAT_HEADER + len(_still(*frame))
    return 0
