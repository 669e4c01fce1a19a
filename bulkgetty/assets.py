"""The asset record every stage passes along, and its identity.

Identity is what one licensed download buys: asset type, id, the size asked for (image
`height` or video `size`), `file_type` and the product it is charged to. Two manifest rows with
the same identity are one download; the journal is keyed by it, never by URL.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

__all__ = ("PRODUCT_TYPES", "Asset", "AssetType", "DigestTable", "table_for")

AssetType = Literal["image", "video"]

#: Text that `quote` would leave as it is (most ids and options): skip quoting it.
_PLAIN = re.compile(r"[A-Za-z0-9_.-]*")

#: Product types the download endpoints accept (getty-api.md §3.1).
PRODUCT_TYPES: frozenset[str] = frozenset(
    {
        "easyaccess",
        "editorialsubscription",
        "imagepack",
        "premiumaccess",
        "royaltyfreesubscription",
        "creditpack",
        "aigen",
    }
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One asset to download, with the options that decide what is bought."""

    id: str
    asset_type: AssetType = "image"
    product_type: str | None = None
    product_id: int | None = None
    #: Images: pixel height from `download_sizes`; None means the largest.
    height: int | None = None
    #: Videos: size name from `download_sizes` (e.g. "hd1"); None means the default.
    size: str | None = None
    #: Images: "jpg" or "eps".
    file_type: str | None = None
    use_team_credits: bool | None = None
    project_code: str | None = None
    download_notes: str | None = None

    @property
    def key(self) -> str:
        """Stable text identity: the journal's primary key and the shard hash input."""
        if (
            self.height is None
            and self.product_id is None
            and not (self.size or self.file_type)
            and _PLAIN.fullmatch(self.id)
            and _PLAIN.fullmatch(self.product_type or "")
        ):  # the common asset, without quote(): same text as below, a few times faster
            base = f"{self.asset_type}/{self.id}"
            return f"{base}?product_type={self.product_type}" if self.product_type else base
        parts = [
            ("height", "" if self.height is None else str(self.height)),
            ("size", self.size or ""),
            ("file_type", self.file_type or ""),
            ("product_type", self.product_type or ""),
            ("product_id", "" if self.product_id is None else str(self.product_id)),
        ]
        options = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts if v)
        base = f"{self.asset_type}/{quote(self.id, safe='-_.')}"
        return f"{base}?{options}" if options else base

    @property
    def digest(self) -> bytes:
        """16-byte digest of `key`: compact enough to keep one per row of a huge manifest."""
        return hashlib.blake2b(self.key.encode(), digest_size=16).digest()

    def query(self, *, auto_download: bool) -> dict[str, str]:
        """Query parameters of `POST /v3/downloads/{type}s/{id}` for this asset."""
        q: dict[str, str] = {"auto_download": "true" if auto_download else "false"}
        if self.product_type:
            q["product_type"] = self.product_type
        if self.product_id is not None:
            q["product_id"] = str(self.product_id)
        if self.asset_type == "image":
            if self.height is not None:
                q["height"] = str(self.height)
            if self.file_type:
                q["file_type"] = self.file_type
        elif self.size:
            q["size"] = self.size
        if self.use_team_credits is not None:
            q["use_team_credits"] = "true" if self.use_team_credits else "false"
        return q

    def body(self) -> dict[str, str] | None:
        """JSON body of the download POST, or None when there is nothing to send."""
        body = {
            k: v
            for k, v in (
                ("project_code", self.project_code),
                ("download_notes", self.download_notes),
            )
            if v
        }
        return body or None


def table_for(rows: int) -> DigestTable:
    """A table that holds `rows` digests without growing (no old+new copy at the end)."""
    return DigestTable(max(1 << 14, rows * 10 // 7 + 1))


class DigestTable:
    """Open-addressing hash set of 16-byte `Asset.digest` values with one 64-bit word each.

    Why not a `set[bytes]`: each bytes object costs ~56 bytes plus its set slot, over 100 MB at
    a million unique rows. Here a slot is 16 key bytes plus one non-zero word (the manifest
    keeps first line << 32 | hash of the non-identity options): 24 bytes a slot at most 70%
    full, about 34 MB for a million rows when sized up front (`table_for`). The digest is
    already uniform, so its first 8 bytes modulo the capacity pick the slot (any capacity,
    not only powers of two); a zero word marks an empty slot.
    """

    __slots__ = ("_count", "_keys", "_size", "_words")

    def __init__(self, capacity: int = 1 << 14) -> None:
        capacity = max(8, capacity)
        self._keys = bytearray(16 * capacity)
        self._words = array("Q", [0]) * capacity
        self._size = capacity
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def setdefault(self, digest: bytes, word: int) -> int:
        """The word stored for `digest`; if there was none, store `word` and return 0."""
        keys, words, size = self._keys, self._words, self._size
        slot = int.from_bytes(digest[:8], "little") % size
        while True:
            found = words[slot]
            if not found:
                keys[16 * slot : 16 * slot + 16] = digest
                words[slot] = word
                self._count += 1
                if 10 * self._count > 7 * size:
                    self._grow()
                return 0
            if keys[16 * slot : 16 * slot + 16] == digest:
                return found
            slot = slot + 1 if slot + 1 < size else 0

    def _grow(self) -> None:
        old_keys, old_words = memoryview(self._keys), self._words
        size = self._size = 2 * len(old_words)
        keys = self._keys = bytearray(16 * size)
        words = self._words = array("Q", [0]) * size
        for old, word in enumerate(old_words):
            if word:
                digest = old_keys[16 * old : 16 * old + 16]
                slot = int.from_bytes(digest[:8], "little") % size
                while words[slot]:
                    slot = slot + 1 if slot + 1 < size else 0
                keys[16 * slot : 16 * slot + 16] = digest
                words[slot] = word
