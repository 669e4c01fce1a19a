"""The sandbox serves real media: JPEGs that decode to the asked height, MP4s that parse.

Checked with small pure-Python readers written here (no image library is a dependency):
the JPEG reader walks every marker segment, builds the Huffman tables and decodes every
block of the entropy-coded scan; the MP4 reader walks the box tree to the file's last byte
and decodes the one frame its sample table points at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from bulkgetty.sandbox import SandboxConfig
from bulkgetty.sandbox.content import FileSpec, Variant, file_spec
from bulkgetty.sandbox.media import IMAGE_HEIGHTS, VIDEO_FRAMES, jpeg_parts, minimum_length


def body(spec: FileSpec) -> bytes:
    return b"".join(bytes(chunk) for chunk in spec.slices())


# --- a baseline JPEG reader ---


@dataclass
class Jpeg:
    width: int
    height: int
    blocks: int


class _Bits:
    """Entropy-coded bits, with 0xFF00 stuffing undone; stops at a marker."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos, self.acc, self.n = data, pos, 0, 0

    def bit(self) -> int:
        if self.n == 0:
            byte = self.data[self.pos]
            if byte == 0xFF:
                assert self.data[self.pos + 1] == 0x00, "marker inside the scan"
                self.pos += 1
            self.pos += 1
            self.acc, self.n = byte, 8
        self.n -= 1
        return (self.acc >> self.n) & 1

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value


def _huffman(counts: bytes, symbols: bytes) -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, by the canonical rule of T.81 Annex C."""
    table, code, k = {}, 0, 0
    for length, count in enumerate(counts, start=1):
        for _ in range(count):
            table[(length, code)] = symbols[k]
            code, k = code + 1, k + 1
        code <<= 1
    return table


def _decode(bits: _Bits, table: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 17):
        code = code << 1 | bits.bit()
        if (length, code) in table:
            return table[(length, code)]
    raise AssertionError("no Huffman code matches")


def _scan(bits: _Bits, dc: dict[tuple[int, int], int], ac: dict[tuple[int, int], int]) -> None:
    """One 8x8 block: a DC difference, then AC run/size pairs up to end-of-block or 63."""
    bits.bits(_decode(bits, dc))
    k = 1
    while k < 64:
        symbol = _decode(bits, ac)
        run, size = symbol >> 4, symbol & 15
        if size == 0 and run != 15:
            return
        bits.bits(size)
        k += run + 1
    assert k == 64


def read_jpeg(data: bytes) -> Jpeg:
    assert data[:2] == b"\xff\xd8", "no SOI"
    pos, tables, frame = 2, {}, None
    while True:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        payload = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker == 0xC4:
            at = 0
            while at < len(payload):
                counts = payload[at + 1 : at + 17]
                symbols = payload[at + 17 : at + 17 + sum(counts)]
                tables[payload[at]] = _huffman(counts, symbols)
                at += 17 + sum(counts)
        elif marker == 0xC0:
            precision, height, width, ncomp = struct.unpack(">BHHB", payload[:6])
            assert precision == 8 and ncomp == 1
            frame = (width, height)
        elif marker == 0xDA:
            assert frame is not None, "scan before frame"
            table_ids = payload[2]
            dc, ac = tables[table_ids >> 4], tables[0x10 | (table_ids & 15)]
            width, height = frame
            blocks = -(-width // 8) * -(-height // 8)
            bits = _Bits(data, pos)
            for _ in range(blocks):
                _scan(bits, dc, ac)
            assert data[bits.pos : bits.pos + 2] == b"\xff\xd9", "no EOI after the scan"
            assert bits.pos + 2 == len(data), "bytes after EOI"
            return Jpeg(width, height, blocks)
        else:
            assert marker in (0xE0, 0xFE, 0xDB), f"unexpected marker {marker:#x}"


# --- an MP4 box reader ---

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf"}


def read_boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, object]:
    """Box type -> payload (or nested dict for containers); boxes must tile [start, end)."""
    end = len(data) if end is None else end
    boxes: dict[bytes, object] = {}
    pos = start
    while pos < end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        assert size >= header and pos + size <= end, f"{kind!r} overruns its parent"
        inner = (pos + header, pos + size)
        boxes[kind] = read_boxes(data, *inner) if kind in _CONTAINERS else data[slice(*inner)]
        pos += size
    assert pos == end
    return boxes


# --- tests ---


@pytest.mark.parametrize("height", [h for h in IMAGE_HEIGHTS if h <= 1024])
def test_image_is_a_jpeg_of_the_asked_height_that_decodes(height: int) -> None:
    spec = file_spec(SandboxConfig(sizes={"1": 150_000}), "image", "1", Variant(height=height))
    data = body(spec)
    assert len(data) == spec.length == 150_000
    jpeg = read_jpeg(data)
    assert (jpeg.width, jpeg.height) == (height * 3 // 2, height)


def test_image_without_height_is_the_tallest_that_fits_its_length() -> None:
    spec = file_spec(SandboxConfig(sizes={"1": 40_000}), "image", "1", Variant())
    jpeg = read_jpeg(body(spec))
    assert jpeg.height == 2048 and spec.length == 40_000  # 3000 px would need 53 kB


def test_a_length_too_small_for_the_height_grows_to_the_jpeg() -> None:
    spec = file_spec(SandboxConfig(sizes={"1": 1000}), "image", "1", Variant(height=3000))
    assert spec.length == minimum_length("jpg", 3000, None) > 1000
    assert read_jpeg(body(spec)).height == 3000


@pytest.mark.parametrize("padding", [1, 2, 3, 4, 65_537, 65_538, 65_540, 65_541, 3 * 65_537 + 2])
def test_every_padding_length_still_decodes(padding: int) -> None:
    """COM segments hold at most 65533 bytes, and need 4: every remainder is covered."""
    length = minimum_length("jpg", 300, None) + padding
    data = b"".join(bytes(p) for p in jpeg_parts(300, length, 0, 777))
    assert len(data) == length
    assert read_jpeg(data).height == 300


def test_files_are_deterministic_and_differ_per_asset() -> None:
    config = SandboxConfig()
    one = body(file_spec(config, "image", "1", Variant(height=612)))
    assert one == body(file_spec(config, "image", "1", Variant(height=612)))
    assert one != body(file_spec(config, "image", "2", Variant(height=612)))


@pytest.mark.parametrize("size", sorted(VIDEO_FRAMES))
def test_video_is_an_mp4_with_ftyp_moov_and_mdat_filling_the_file(size: str) -> None:
    spec = file_spec(SandboxConfig(sizes={"7": 300_000}), "video", "7", Variant(size=size))
    data = body(spec)
    assert len(data) == spec.length == 300_000
    boxes = read_boxes(data)
    assert list(boxes) == [b"ftyp", b"moov", b"mdat"]
    ftyp = boxes[b"ftyp"]
    assert isinstance(ftyp, bytes) and ftyp[:4] == b"isom"
    moov = boxes[b"moov"]
    assert isinstance(moov, dict) and b"mvhd" in moov
    trak = moov[b"trak"]
    assert isinstance(trak, dict)
    tkhd = trak[b"tkhd"]
    assert isinstance(tkhd, bytes)
    width, height = struct.unpack(">II", tkhd[-8:])
    assert (width >> 16, height >> 16) == VIDEO_FRAMES[size]
    mdia = trak[b"mdia"]
    assert isinstance(mdia, dict)
    hdlr = mdia[b"hdlr"]
    assert isinstance(hdlr, bytes) and hdlr[8:12] == b"vide"
    # The one sample the tables point at is a JPEG frame of the track's size.
    stbl = mdia[b"minf"][b"stbl"]  # type: ignore[index]
    (sample_size,) = struct.unpack(">I", stbl[b"stsz"][12:16])
    (chunk_offset,) = struct.unpack(">I", stbl[b"stco"][8:12])
    assert stbl[b"stsd"][12:16] == b"jpeg"
    frame = read_jpeg(data[chunk_offset : chunk_offset + sample_size])
    assert (frame.width, frame.height) == VIDEO_FRAMES[size]
