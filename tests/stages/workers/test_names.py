"""names.py: a worker never takes a name another process may hand out (its rules 1-3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkgetty.errors import StorageError
from bulkgetty.getty.http import Timeouts
from bulkgetty.stages.files import NewPart, OutputDir
from bulkgetty.stages.transfer import TransferState
from bulkgetty.stages.workers.names import WorkerOutputDir
from bulkgetty.stages.workers.pool import WorkerPool


async def _none() -> set[str]:
    return set()


def test_a_new_file_skips_a_name_the_journal_holds_even_with_its_part_missing(
    tmp_path: Path,
) -> None:
    """Rule 3: the resume of `a.jpg` may be granted that name in another process at any
    moment, so a new file of another asset never takes it, .part or not."""
    out = WorkerOutputDir(tmp_path, held={"A.JPG"})
    assert out.candidates("a.jpg", "other")[0] == "a (2).jpg"
    out.grant("owner", "a.jpg")
    assert out.candidates("a.jpg", "owner")[0] == "a.jpg"


def test_the_series_goes_on_past_a_window_of_held_names(tmp_path: Path) -> None:
    held = {"a.jpg", *(f"a ({i}).jpg" for i in range(2, 40))}
    out = WorkerOutputDir(tmp_path, held=held)
    assert out.candidates("a.jpg", "k")[0] == "a (40).jpg"


def test_a_worker_reserves_only_the_name_it_was_granted(tmp_path: Path) -> None:
    """Rule 2: no fallback name picked from this process's memory alone."""
    out = WorkerOutputDir(tmp_path, held=())
    out.grant("k", "a.jpg")
    assert out.reserve("a.jpg", "k", prefer="a.jpg") == "a.jpg"
    with pytest.raises(StorageError, match="not granted"):
        out.reserve("b.jpg", "k", prefer="b.jpg")
    out.forget("k")
    with pytest.raises(StorageError):
        out.reserve("a.jpg", "k", prefer="a.jpg")


async def test_two_processes_creating_the_same_name_get_two_files(tmp_path: Path) -> None:
    """Rule 1: O_EXCL on the `.part` settles a new name across processes' memories."""
    first, second = WorkerOutputDir(tmp_path, held=()), WorkerOutputDir(tmp_path, held=())
    a = await NewPart(first, "x.jpg", "k1").create()
    b = await NewPart(second, "x.jpg", "k2").create()
    await a.close()
    await b.close()
    assert (a.name, b.name) == ("x.jpg", "x (2).jpg")


def test_the_main_process_grants_a_resume_only_its_own_free_name(tmp_path: Path) -> None:
    """Rule 2, main side: a name held by another asset, or taken by a finished file, is not
    granted; that asset starts afresh (no fallback name that a worker could also create)."""
    out = OutputDir(tmp_path)
    pool = WorkerPool(1, out=out, timeouts=Timeouts(), limit=1, held=_none)
    assert pool._grant(out, "k1", TransferState(name="a.jpg", done=5)) == "a.jpg"
    assert pool._grant(out, "k2", TransferState(name="a.jpg", done=5)) is None
    (tmp_path / "b.jpg").write_bytes(b"done")
    assert pool._grant(out, "k3", TransferState(name="b.jpg", done=5)) is None
    assert pool._grant(out, "k4", None) is None
