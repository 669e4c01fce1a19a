"""Manifest reader and writer: the list of assets a run should buy and download.

Formats, chosen by extension: ``.csv`` (header row with an ``id`` column), ``.jsonl`` (one JSON
object per line), ``.txt`` (one id per line, ``#`` comments); ``-`` is standard input as ``.txt``.

One concept a module, each lower one knowing nothing of those above it:

* `fields` -- one row (a plain mapping, whatever its format) -> an `Asset`, or its problems.
* `formats` -- the three formats read line by line into such rows, bad lines as ``FILE:LINE``.
* `read` -- a whole manifest: duplicates, every bad row, flat memory, the fast ``.txt`` check.
* `write` -- assets -> a manifest file that reads back as the same assets.

Importers use this package
(``from bulkgetty.stages.manifest import read_manifest``), not its modules.
"""

from __future__ import annotations

from bulkgetty.stages.manifest.fields import FIELDS, ManifestDefaults, parse_row
from bulkgetty.stages.manifest.read import (
    MAX_PROBLEMS,
    ManifestRow,
    ManifestSummary,
    read_manifest,
    validate_manifest,
)
from bulkgetty.stages.manifest.write import write_manifest

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
