"""files.py: safe names, Content-Disposition, reservations, .part files, storage errors."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path

import pytest

from bulkgetty.errors import StorageError
from bulkgetty.stages.files import (
    HashFollower,
    NewPart,
    OutputDir,
    SequentialWriter,
    open_part,
    parse_content_disposition,
    safe_name,
    sha256_file,
    writes,
)

JPEG = "image/jpeg"


def name(raw: str | None, content_type: str | None = JPEG) -> str:
    return safe_name(raw, asset_id="123", content_type=content_type)


# ------------------------------------------------------------------- safe_name


def test_safe_getty_name_is_kept_exactly() -> None:
    assert name("GettyImages-1167612765.jpg") == "GettyImages-1167612765.jpg"
    assert name("GettyImages-690773579.mov") == "GettyImages-690773579.mov"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/x.jpg", "x.jpg"),
        ("a\\b.jpg", "b.jpg"),
        ("..\\..\\win.ini", "win.ini"),
        ("a\x00b\x1f\x7f.jpg", "ab.jpg"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        (".hidden", "hidden"),
        ("...jpg", "jpg"),
        ("name. . .", "name"),
        ("  spaced.jpg  ", "spaced.jpg"),
        ('a<b>c:d"e|f?g*.jpg', "a_b_c_d_e_f_g_.jpg"),
    ],
)
def test_safe_name_strips_paths_controls_and_dots(raw: str, expected: str) -> None:
    assert name(raw) == expected


@pytest.mark.parametrize("raw", ["CON.jpg", "con", "PRN.txt", "nul.tar.gz", "COM1.jpg", "LPT9"])
def test_windows_reserved_names_get_a_prefix(raw: str) -> None:
    result = name(raw)
    assert result == "_" + raw


def test_non_reserved_lookalikes_are_kept() -> None:
    assert name("CONSOLE.jpg") == "CONSOLE.jpg"
    assert name("COM10.jpg") == "COM10.jpg"


@pytest.mark.parametrize("raw", [None, "", ".", "..", "/", "\\", "../", "\x00\x01"])
def test_unusable_name_falls_back_to_asset_id_and_type(raw: str | None) -> None:
    assert name(raw) == "123.jpg"


@pytest.mark.parametrize(
    ("content_type", "ext"),
    [
        ("image/jpeg", ".jpg"),
        ("image/jpeg; charset=binary", ".jpg"),
        ("application/postscript", ".eps"),
        ("video/mp4", ".mp4"),
        ("video/quicktime", ".mov"),
        ("application/x-unknown", ".bin"),
        (None, ".bin"),
    ],
)
def test_fallback_extension_comes_from_content_type(content_type: str | None, ext: str) -> None:
    assert name(None, content_type) == "123" + ext


def test_long_name_is_cut_to_255_bytes_keeping_the_extension() -> None:
    result = name("x" * 400 + ".jpg")
    assert len(result.encode()) <= 255
    assert len((result + ".part").encode()) <= 255
    assert result.endswith(".jpg")


def test_long_multibyte_name_is_cut_on_a_character_boundary() -> None:
    result = name("€" * 200 + ".jpeg")
    encoded = result.encode("utf-8")  # would raise on a broken character
    assert len(encoded) <= 255
    assert result.endswith(".jpeg")
    assert set(result[: -len(".jpeg")]) == {"€"}


def test_unicode_name_survives() -> None:
    assert name("Zürich €.jpg") == "Zürich €.jpg"


# ------------------------------------------------------- parse_content_disposition


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("attachment; filename=GettyImages-1167612765.jpg", "GettyImages-1167612765.jpg"),
        ("attachment;filename=GettyImages-1.jpg", "GettyImages-1.jpg"),
        ('attachment; filename="quoted name.jpg"', "quoted name.jpg"),
        ('attachment; filename="with \\"escapes\\".jpg"', 'with "escapes".jpg'),
        ('attachment; filename="semi;colon.jpg"; size=3', "semi;colon.jpg"),
        ("attachment; filename*=UTF-8''%E2%82%AC.jpg", "€.jpg"),
        ("attachment; filename*=utf-8'en'caf%C3%A9.jpg", "café.jpg"),
        ("attachment; filename*=iso-8859-1''caf%E9.jpg", "café.jpg"),
        ("attachment; filename=plain.jpg; filename*=UTF-8''fancy%20%E2%82%AC.jpg", "fancy €.jpg"),
        ("attachment; filename*=UTF-8''fancy.jpg; filename=plain.jpg", "fancy.jpg"),
        ("attachment; FILENAME=upper.jpg", "upper.jpg"),
        ("filename=no-type.jpg", "no-type.jpg"),
        ("inline; junk; =; filename=ok.jpg", "ok.jpg"),
        ('attachment; filename="unterminated.jpg', "unterminated.jpg"),
    ],
)
def test_content_disposition_variants(header: str, expected: str) -> None:
    assert parse_content_disposition(header) == expected


@pytest.mark.parametrize(
    "header",
    ["attachment", "", ";;;", "attachment; filename=", 'attachment; filename=""', "inline; x=y"],
)
def test_content_disposition_without_a_name(header: str) -> None:
    assert parse_content_disposition(header) is None


def test_broken_extended_name_falls_back_to_plain_filename() -> None:
    header = "attachment; filename*=UTF-8''%FF%FE.jpg; filename=plain.jpg"
    assert parse_content_disposition(header) == "plain.jpg"
    assert parse_content_disposition("attachment; filename*=koi8-r''x.jpg") is None


# ---------------------------------------------------------------------- OutputDir


def test_output_dir_creates_folder_and_state_dir(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / ".bulkgetty").is_dir()
    assert out.state_dir == tmp_path / "a" / "b" / ".bulkgetty"


def test_two_owners_reserving_one_name_get_different_names(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    assert out.reserve("x.jpg", "a") == "x.jpg"
    assert out.reserve("x.jpg", "b") == "x (2).jpg"
    assert out.reserve("X.JPG", "c") == "X (3).JPG"  # case-insensitive filesystems too


def test_reserve_skips_existing_files_and_other_parts(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"old")
    (tmp_path / "x (2).jpg.part").write_bytes(b"someone else's")
    out = OutputDir(tmp_path)
    assert out.reserve("x.jpg", "a") == "x (3).jpg"
    assert (tmp_path / "x.jpg").read_bytes() == b"old"


def test_same_owner_gets_its_earlier_name_back_with_its_part(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    (tmp_path / "x.jpg.part").write_bytes(b"half")
    first = out.reserve("x.jpg", "a", prefer="x.jpg")
    assert first == "x.jpg"
    assert out.reserve("x.jpg", "a", prefer="x.jpg") == "x.jpg"
    out2 = OutputDir(tmp_path)  # a new run: the journal's name comes back
    assert out2.reserve("x.jpg", "a", prefer="x.jpg") == "x.jpg"


def test_prefer_is_not_granted_over_another_owner_or_a_final_file(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    assert out.reserve("x.jpg", "a") == "x.jpg"
    assert out.reserve("x.jpg", "b", prefer="x.jpg") == "x (2).jpg"
    (tmp_path / "done.jpg").write_bytes(b"finished")
    assert out.reserve("done.jpg", "c", prefer="done.jpg") == "done (2).jpg"
    assert out.reserve("x.jpg", "d", prefer="../evil.jpg") == "x (3).jpg"


def test_release_frees_the_name(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.reserve("x.jpg", "a")
    out.release("a")
    assert out.reserve("x.jpg", "b") == "x.jpg"


def test_reserve_cleans_unsafe_names(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    assert out.reserve("../../x.jpg", "a") == "x.jpg"


def test_collision_suffix_keeps_long_names_within_limit(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    long = "y" * 300 + ".jpg"
    first = out.reserve(long, "a")
    second = out.reserve(long, "b")
    assert first != second
    assert second.endswith(" (2).jpg")
    assert len((second + ".part").encode()) <= 255


def test_symlink_in_the_folder_is_never_used(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "x.jpg"
    target.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out = OutputDir(out_dir)
    (out_dir / "x.jpg").symlink_to(target)
    assert out.reserve("x.jpg", "a") == "x (2).jpg"
    assert out.reserve("x.jpg", "b", prefer="x.jpg") == "x (3).jpg"


async def test_symlinked_part_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    out = OutputDir(tmp_path / "out")
    (tmp_path / "out" / "x.jpg.part").symlink_to(outside)
    with pytest.raises(StorageError, match="symlink"):
        await open_part(out, "x.jpg", size=None, resume=True)
    assert outside.read_bytes() == b"precious"


def test_final_path_refuses_unsafe_names(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    for bad in ("../x", "a/b", "..", ".", "", "x\x00"):
        with pytest.raises(StorageError):
            out.final_path(bad)


# ---------------------------------------------------------------------- PartFile


async def test_part_write_finish_renames_into_place(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    async with await open_part(out, "a.jpg", size=None, resume=False) as part:
        await part.write_at(0, b"hello ")
        await part.write_at(6, b"world")
        assert (tmp_path / "a.jpg.part").exists()
        assert not (tmp_path / "a.jpg").exists()
        path = await part.finish("a.jpg")
    assert path == tmp_path / "a.jpg"
    assert path.read_bytes() == b"hello world"
    assert not (tmp_path / "a.jpg.part").exists()


async def test_finish_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    part = await open_part(out, "a.jpg", size=None, resume=False)
    await part.write_at(0, b"new")
    (tmp_path / "a.jpg").write_bytes(b"someone else's")
    with pytest.raises(StorageError, match="will not overwrite"):
        await part.finish("a.jpg")
    assert (tmp_path / "a.jpg").read_bytes() == b"someone else's"
    assert (tmp_path / "a.jpg.part").read_bytes() == b"new"
    await part.close()  # already closed by finish: harmless


async def test_finish_without_renameat2_uses_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writes, "_renameat2", None)
    out = OutputDir(tmp_path)
    part = await open_part(out, "a.jpg", size=None, resume=False)
    await part.write_at(0, b"data")
    (tmp_path / "b.jpg").write_bytes(b"keep")
    await part.finish("a.jpg", durable=False)
    assert (tmp_path / "a.jpg").read_bytes() == b"data"
    part2 = await open_part(out, "c.jpg", size=None, resume=False)
    with pytest.raises(StorageError):
        await part2.finish("b.jpg")
    assert (tmp_path / "b.jpg").read_bytes() == b"keep"


async def test_resume_keeps_existing_bytes_and_fresh_open_truncates(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    (tmp_path / "a.jpg.part").write_bytes(b"12345")
    part = await open_part(out, "a.jpg", size=None, resume=True)
    assert part.size_on_disk == 5
    await part.close()
    part = await open_part(out, "a.jpg", size=None, resume=False)
    assert part.size_on_disk == 0
    await part.close()


async def test_preallocation_sets_the_size(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    part = await open_part(out, "a.jpg", size=3 * 2**20, resume=False)
    assert await part.size() == 3 * 2**20
    await part.write_at(2**20, b"x")
    await part.truncate(10)
    assert await part.size() == 10
    await part.close()


async def test_sequential_writer_batches_small_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real, realv = os.pwrite, os.pwritev

    def counting(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        return real(fd, data, offset)

    def counting_v(fd: int, bufs: list[bytes], offset: int) -> int:
        calls.append(sum(map(len, bufs)))
        return realv(fd, bufs, offset)

    monkeypatch.setattr(os, "pwrite", counting)
    monkeypatch.setattr(os, "pwritev", counting_v)
    out = OutputDir(tmp_path)
    part = await open_part(out, "a.bin", size=None, resume=False)
    hasher = hashlib.sha256()
    writer = SequentialWriter(part, 0, hasher)
    payload = os.urandom(3 * 2**20 + 100)
    for i in range(0, len(payload), 64 * 1024):
        await writer.write(payload[i : i + 64 * 1024])
    await writer.flush()
    await part.close()
    assert len(calls) == 4  # three full MiB batches and the tail, one syscall each
    assert writer.position == len(payload)
    assert hasher.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "a.bin.part").read_bytes() == payload


async def test_enospc_becomes_storage_error_and_part_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = OutputDir(tmp_path)
    part = await open_part(out, "a.jpg", size=None, resume=False)
    await part.write_at(0, b"first")
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError, match="disk full") as caught:
        await part.write_at(5, b"more")
    assert "a.jpg.part" in str(caught.value)
    await part.close()
    assert (tmp_path / "a.jpg.part").read_bytes() == b"first"


async def test_read_only_folder_is_a_storage_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    out = OutputDir(tmp_path / "ro")
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(StorageError, match="permission denied"):
            await open_part(out, "a.jpg", size=None, resume=False)
    finally:
        (tmp_path / "ro").chmod(0o700)


async def test_sha256_file_whole_and_prefix(tmp_path: Path) -> None:
    data = os.urandom(2**20 * 2 + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert (await sha256_file(path)).hexdigest() == hashlib.sha256(data).hexdigest()
    prefix = await sha256_file(path, upto=2**20 + 5)
    assert prefix.hexdigest() == hashlib.sha256(data[: 2**20 + 5]).hexdigest()
    prefix.update(data[2**20 + 5 :])
    assert prefix.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(StorageError):
        await sha256_file(path, upto=len(data) + 1)


def test_remove_stale_parts_keeps_resumable_and_reserved_parts_only(tmp_path: Path) -> None:
    """A `.part` nobody can resume into is removed; held or reserved ones and other files stay."""
    out = OutputDir(tmp_path)
    assert out.reserve("held.jpg", "image/1") == "held.jpg"
    for name in ("orphan.jpg.part", "kept.jpg.part", "held.jpg.part", "photo.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert out.remove_stale_parts({"kept.jpg"}) == 1
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert left == ["held.jpg.part", "kept.jpg.part", "notes.txt", "photo.jpg"]


# ---------------------------------------------------------------------- HashFollower


async def test_hash_follower_hashes_segments_written_out_of_order(tmp_path: Path) -> None:
    """The follower reads only bytes its `available` says are final, in file order."""
    data = os.urandom(5 * 2**20 + 7)
    path = tmp_path / "f.part"
    path.write_bytes(b"\0" * len(data))
    half = len(data) // 2
    positions = {0: 0, 1: half}  # segment start -> bytes written up to (absolute)

    def available(pos: int) -> int:
        return positions[0] if pos < half else positions[1]

    follower = HashFollower(path, len(data), available)
    task = asyncio.create_task(follower.run())
    with open(path, "r+b") as fh:
        fh.seek(half)
        fh.write(data[half:])  # the second segment finishes first
    positions[1] = len(data)
    follower.poke()
    await asyncio.sleep(0.05)
    assert not task.done()  # nothing of segment 0 is final yet: it must wait
    with open(path, "r+b") as fh:
        fh.write(data[:half])
    positions[0] = half
    follower.poke()
    hasher = await asyncio.wait_for(task, 10)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_hash_follower_cancel_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"x" * 10)
    before = len(os.listdir("/proc/self/fd"))
    task = asyncio.create_task(HashFollower(path, 10, lambda pos: 0).run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("raw", ["report.jsonl.part", "x.PART", ".part"])
def test_a_finished_name_never_ends_in_part(raw: str) -> None:
    """Else the end-of-run sweep of orphan `.part` files would delete a finished, paid file."""
    name = safe_name(raw, asset_id="1", content_type="image/jpeg")
    assert not name.lower().endswith(".part")


def test_sweep_keeps_a_finished_file_named_from_a_part_suffixed_disposition(
    tmp_path: Path,
) -> None:
    out = OutputDir(tmp_path)
    name = out.reserve(safe_name("report.jsonl.part", asset_id="1", content_type=None), "a")
    (tmp_path / name).write_bytes(b"finished")
    out.release("a")
    out.remove_stale_parts(keep=set())
    assert (tmp_path / name).read_bytes() == b"finished"


async def test_new_part_finish_looks_past_the_first_batch_of_taken_names(tmp_path: Path) -> None:
    """A small file is created and renamed in one hop from a batch of candidate names; when
    every name of that batch is taken on disk, the next batch is tried, not an error."""
    out = OutputDir(tmp_path)
    first = out.candidates("x.jpg", "someone else")
    second = out.candidates("x.jpg", "someone else", after=first[-1])
    taken = [*first, *second]  # two whole batches taken on disk
    for name in taken:
        (tmp_path / name).write_bytes(b"not ours")
    part = NewPart(out, "x.jpg", "a")
    tail = writes._Batch(0, [b"ours"], 4)
    path = await part.finish(durable=False, tail=tail)
    assert path.name not in taken
    assert path.name == f"x ({len(taken) + 1}).jpg"
    assert path.read_bytes() == b"ours"
    assert not list(tmp_path.glob("*.part"))


async def test_on_a_memory_filesystem_a_small_file_is_finished_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inline`: create, write, fsync and rename run on the loop's thread, with no hop to a
    worker thread (there a hop costs more CPU than the syscalls); the file is the same."""
    out = OutputDir(tmp_path, inline=True)

    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a thread hop on a memory filesystem")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    (tmp_path / "x.jpg").write_bytes(b"not ours")  # the next name of the series is taken
    hasher = hashlib.sha256()
    part = NewPart(out, "x.jpg", "a")
    tail = writes._Batch(0, [b"our", b"s"], 4)
    path = await part.finish(durable=True, tail=tail, hasher=hasher)
    assert path.name == "x (2).jpg"
    assert path.read_bytes() == b"ours"
    assert hasher.hexdigest() == hashlib.sha256(b"ours").hexdigest()
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    "raw",
    [
        "GettyImages-1167612765.jpg",
        "GettyImages-1.jpg (2).jpg",
        "photo (3).jpg",
        "CON.jpg",
        "con .txt",
        "Aux",
        "lpt1.tar.gz",
        "x.part",
        "X.PART",
        "a.part.jpg",
        "a" * 300 + ".jpg",
        "a" * 246 + ".jpg",
        "trailing.",
        "-dash_start-",
        "in side.jpg",
        "a..b",
        "(1)",
        "a",
        ".",
        " ",
    ],
)
def test_plain_names_take_the_fast_path_only_when_the_full_rules_keep_them(raw: str) -> None:
    import bulkgetty.stages.files.names as files

    full = files._clean_component("/" + raw)  # a slash first: never the fast path
    assert files._clean_component(raw) == full
    if files._is_plain_name(raw):
        assert full == raw


def test_large_batches_start_their_writeback_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final fsync of a big file then finds little left to write (about 7% off a durable
    4 x 256 MiB run here); small batches are left to the kernel."""
    import bulkgetty.stages.files.writes as files

    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(files, "_sync_file_range", lambda *args: calls.append(args) or 0)
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
    try:
        big = [b"a" * 2**19, b"b" * 2**19]
        assert files._write_chunks(fd, big, 4096, None) == 2**20
        assert files._write_chunks(fd, [b"c" * 1000], 0, None) == 1000
    finally:
        os.close(fd)
    assert calls == [(fd, 4096, 2**20, files._SYNC_FILE_RANGE_WRITE)]
    data = (tmp_path / "f").read_bytes()
    assert data[4096:] == b"a" * 2**19 + b"b" * 2**19 and data[:1000] == b"c" * 1000
