"""The asset record every stage passes along, and its identity.

Identity is what one licensed download buys: asset type, id, the size asked for (image
`height` or video `size`), `file_type` and the product it is charged to. Two manifest rows with
the same identity are one download; the journal is keyed by it, never by URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

__all__ = ("PRODUCT_TYPES", "Asset", "AssetType")

AssetType = Literal["image", "video"]

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
