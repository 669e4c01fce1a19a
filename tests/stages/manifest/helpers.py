"""What the manifest tests share: writing a manifest file, reading back its rows or problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkgetty.errors import ManifestError
from bulkgetty.stages.manifest import ManifestDefaults, ManifestRow, read_manifest
from tests.harness import REPO

SAMPLES = REPO / "manifests"
DEFAULTS = ManifestDefaults()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rows(path: Path | str, defaults: ManifestDefaults = DEFAULTS) -> list[ManifestRow]:
    return list(read_manifest(path, defaults))


def problems(path: Path | str, defaults: ManifestDefaults = DEFAULTS) -> list[str]:
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path, defaults))
    return [str(p) for p in info.value.problems]
