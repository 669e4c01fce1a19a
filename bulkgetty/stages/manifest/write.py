"""Writing a manifest: assets -> a file that `read_manifest` reads back as the same assets.

* ``.csv`` and ``.jsonl`` carry every field (`FIELDS`, in that order).
* **Writing ``.txt``** can only carry ids. It is accepted when every asset has the same
  ``asset_type`` and ``product_type`` and no other option, and the file starts with a comment
  naming the ``--asset-type``/``--product-type`` that read it back; anything else is refused
  with `UsageError` (write ``.csv`` or ``.jsonl``).
* Writes go to a temporary file that replaces the target only when complete.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from bulkgetty.assets import Asset
from bulkgetty.errors import UsageError
from bulkgetty.stages.manifest.fields import FIELDS
from bulkgetty.stages.manifest.formats import _format_of


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
