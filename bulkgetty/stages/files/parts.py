"""The output folder and its `.part` files: reservations, resume, rename into place.

- A name is *reserved* in memory before any byte is written (`OutputDir.reserve`), so two
  assets that share a name never write to the same file, in this process or on disk.
- Bytes go to `NAME.part`; only a complete, verified file is renamed to `NAME`, and that
  rename never replaces an existing file (`PartFile.finish`).

The blocking calls are looked up on the `writes` module at call time (`writes._write_chunks`),
so that one patch there (tests/faults/crashpoint.py) reaches every write and rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from bulkgetty.errors import StorageError
from bulkgetty.stages.files import writes
from bulkgetty.stages.files.names import PART_SUFFIX, _is_single_safe_component, _series, safe_name
from bulkgetty.stages.files.writes import (
    _PART_FLAGS,
    WRITE_BATCH,
    _Batch,
    _DirSync,
    _storage_error,
)

#: Names handed to one hop that creates or renames a file (more only when all are taken):
#: few on the first hop, where the wanted name is nearly always free (each name costs a
#: few microseconds to build), more on the next ones, where a series of copies is likely.
_FIRST_CANDIDATES: Final = 2
_CANDIDATES: Final = 16
_STATE_DIR: Final = ".bulkgetty"
#: Most bytes a HashFollower hashes per thread hop.
_FOLLOW_STEP: Final = 16 * 2**20


# --------------------------------------------------------------------- output dir


class OutputDir:
    """The output folder of one run: creates it, hands out collision-free names.

    Reservations live in memory (one entry per asset in flight; `release` when done), so two
    concurrent assets never get the same name; the disk is checked too, so an existing file
    or another asset's `.part` is never reused. `reserve` checks the disk on the event loop
    (it is used for resumes only); new files get `candidates` instead, and the thread that
    creates the `.part` settles the name with O_EXCL (`NewPart`): a lookup in a folder that
    other threads are filling waits for the folder's lock, and must not stall the loop.
    """

    def __init__(self, path: str | os.PathLike[str], *, inline: bool = False) -> None:
        self.path = Path(path)
        #: On a memory filesystem (tmpfs) a small file is finished on the event loop: its
        #: syscalls take microseconds there, and a hop to a worker thread and back cost more
        #: CPU than all of them (the GIL handed back and forth; benchmarks README, issue 16).
        self.inline = inline
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / _STATE_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, self.path, "create the output folder") from exc
        self.real = self.path.resolve()
        self._owner_of: dict[str, str] = {}  # casefolded name -> owner
        self._name_of: dict[str, str] = {}  # owner -> name
        self.dir_sync = _DirSync(self.path)

    @property
    def state_dir(self) -> Path:
        """`DIR/.bulkgetty/`: journal, locks, logs; never a place for finished files."""
        return self.path / _STATE_DIR

    def reserve(self, name: str, owner: str, *, prefer: str | None = None) -> str:
        """A name for `owner` that no other owner holds and no other file occupies.

        `prefer` is the owner's own earlier name (from the journal): it is given back when
        nobody else holds it and no final file sits there, so a resume keeps its `.part`.
        Otherwise `name`, `stem (2).ext`, `stem (3).ext` ... is tried in that order.
        """
        if prefer is not None and self._prefer_ok(prefer, owner):
            return self._take(prefer, owner)
        clean = safe_name(name, asset_id=owner, content_type=None)
        for candidate in _series(clean):
            if self._free(candidate, owner, allow_own_part=False):
                return self._take(candidate, owner)
        raise StorageError(f"no free file name like {clean!r} in {self.path}")

    def candidates(self, name: str, owner: str, *, after: str | None = None) -> list[str]:
        """Names a new file of `owner` may take, best first, skipping other owners' names.

        Only memory is consulted; the thread that creates or renames the file checks the
        disk, atomically. `after`: continue the series past that name.
        """
        clean = safe_name(name, asset_id=owner, content_type=None)
        out: list[str] = []
        skipping = after is not None
        most = _FIRST_CANDIDATES if after is None else _CANDIDATES
        for candidate in _series(clean):
            if len(out) >= most:
                break
            if skipping:
                skipping = candidate != after
                continue
            holder = self._owner_of.get(candidate.casefold())
            if holder is None or holder == owner:
                out.append(candidate)
        if not out:
            raise StorageError(f"no free file name like {clean!r} in {self.path}")
        return out

    def claim(self, name: str, owner: str) -> None:
        """Record in memory that `owner` now holds `name` (its `.part` exists on disk)."""
        self._take(name, owner)

    def release(self, owner: str) -> None:
        """Forget `owner`'s reservation (its file is finished, or it failed for good)."""
        name = self._name_of.pop(owner, None)
        if name is not None:
            self._owner_of.pop(name.casefold(), None)

    def remove_stale_parts(self, keep: set[str]) -> int:
        """Delete `NAME.part` files directly in DIR whose NAME no unfinished asset holds.

        A kill can land after a `.part` was created and before the journal heard its name;
        the rerun then starts that asset afresh under a new name and the old `.part` belongs
        to nobody. Call it only when no transfer is running. Returns how many were removed.
        """
        removed = 0
        for part in Path(self.path).glob(f"*{PART_SUFFIX}"):
            name = part.name[: -len(PART_SUFFIX)]
            if name in keep or name.casefold() in self._owner_of or part.is_symlink():
                continue
            if part.is_file():
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    def renamed_stat(self, name: str) -> os.stat_result | None:
        """`lstat` of the regular file `DIR/name` when no `name.part` lies beside it, else None.

        That is what a kill between the final rename and the journal's `done` leaves behind.
        """
        try:
            if os.path.lexists(self.part_path(name)):
                return None
            st = os.lstat(self.final_path(name))
        except (OSError, StorageError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def remove_duplicate(self, name: str, *, original: str) -> None:
        """Delete the finished file `name`: the caller proved it is a byte-for-byte copy of
        `original`, which stays (a rerun after a kill fetched a file it already had)."""
        if name == original:
            raise StorageError(f"refusing to remove {name!r}: it is the original")
        path = self.final_path(name)
        try:
            path.unlink()
        except OSError as exc:
            raise _storage_error(exc, path, "remove a duplicate") from exc

    def final_path(self, name: str) -> Path:
        """`DIR/name`, after checking that `name` is one plain component inside DIR."""
        if not _is_single_safe_component(name):
            raise StorageError(f"unsafe file name {name!r} refused in {self.path}")
        path = self.path / name
        if (self.real / name).parent != self.real:
            raise StorageError(f"{path} would lie outside {self.path}")
        return path

    def part_path(self, name: str) -> Path:
        """`DIR/name.part`: where bytes go until the file is complete and verified."""
        return self.final_path(name).with_name(name + PART_SUFFIX)

    def _prefer_ok(self, name: str, owner: str) -> bool:
        if not _is_single_safe_component(name):
            return False
        return self._free(name, owner, allow_own_part=True)

    def _free(self, name: str, owner: str, *, allow_own_part: bool) -> bool:
        holder = self._owner_of.get(name.casefold())
        if holder is not None and holder != owner:
            return False
        if os.path.lexists(self.path / name):
            return False
        own = allow_own_part or holder == owner
        return own or not os.path.lexists(self.path / (name + PART_SUFFIX))

    def _take(self, name: str, owner: str) -> str:
        self.release(owner)
        self._owner_of[name.casefold()] = owner
        self._name_of[owner] = name
        return name


# ----------------------------------------------------------------------- part file


class PartFile:
    """An open `NAME.part`: positional writes, preallocation, fsync and the final rename.

    Create it with `open_part`. Positional writes (pwrite) let several segments share one
    file descriptor without seeking. Use as `async with` or call `close()`; closing keeps the
    `.part` (it is what a later attempt resumes from).
    """

    def __init__(
        self, out: OutputDir, name: str, fd: int, size_on_disk: int, *, owner: str | None = None
    ) -> None:
        self.out = out
        self.name = name
        #: With an owner, `finish` falls back to the owner's next free name when the final
        #: name was taken meanwhile; without one it refuses (StorageError).
        self.owner = owner
        self.path = out.part_path(name)
        #: Length of the `.part` when it was opened (what a resume can build on).
        self.size_on_disk = size_on_disk
        self._fd: int | None = fd

    async def __aenter__(self) -> PartFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise StorageError(f"{self.path} is already closed")
        return self._fd

    async def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data` at `offset` in a worker thread (one pwrite per call, usually)."""
        await self._run(writes._pwrite_all, self.fd, data, offset, None, what="write")

    async def write_hashed(self, offset: int, chunks: list[bytes], hasher: Any | None) -> int:
        """Write `chunks` back to back at `offset` and feed them to `hasher`, in one thread hop.

        Hashing next to the write keeps SHA-256 off the event loop too (hashlib releases the
        GIL on large buffers). Returns the number of bytes written.
        """
        written: int = await self._run(
            writes._write_chunks, self.fd, chunks, offset, hasher, what="write"
        )
        return written

    async def truncate(self, size: int) -> None:
        """Cut (or extend with zeros) the `.part` to `size` bytes."""
        await self._run(os.ftruncate, self.fd, size, what="truncate")

    async def preallocate(self, size: int) -> None:
        """Reserve `size` bytes on disk now, so ENOSPC comes before the download, not after."""
        await self._run(writes._preallocate, self.fd, size, what="preallocate")

    async def datasync(self) -> None:
        """fdatasync: what was written so far survives a power cut (say so only after it)."""
        await self._run(os.fdatasync, self.fd, what="sync")

    async def size(self) -> int:
        """Current length of the `.part` on disk."""
        result: int = await self._run(lambda fd: os.fstat(fd).st_size, self.fd, what="stat")
        return result

    async def finish(
        self,
        final_name: str | None = None,
        *,
        durable: bool = True,
        tail: _Batch | None = None,
        hasher: Any | None = None,
    ) -> Path:
        """Write `tail`, fsync, rename to `final_name` (never replacing a file), fsync the folder.

        One thread hop for all of it. `final_name` defaults to the part's own name; when it
        exists by now, an owned part takes the owner's next free name instead.
        """
        name = final_name or self.name
        names = [name]
        if self.owner is not None:
            names += self.out.candidates(name, self.owner, after=name)
        for candidate in names:
            self.out.final_path(candidate)  # refuse unsafe names before the hop
        fd, self._fd = self.fd, None  # _Finish closes it, whatever happens
        job = writes._Finish(fd, self.path, tail, hasher, durable, self.out.dir_sync)
        got: str = await self._run(job.run, names, what="finish")
        return self.out.final_path(got)

    async def close(self) -> None:
        """Close the descriptor; the `.part` stays for a later resume."""
        fd, self._fd = self._fd, None
        if fd is not None:
            await self._run(os.close, fd, what="close")

    async def _run(self, func: Any, *args: Any, what: str) -> Any:
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise _storage_error(exc, Path(exc.filename or self.path), what) from exc


class NewPart:
    """A `.part` not created yet: the first write (or the finish) creates it, in that hop.

    Its name is settled by the worker thread with O_EXCL among `candidates`, so a new file
    costs no thread hop and no disk lookup on the event loop before its bytes are ready; a
    small file is created, written, fsynced and renamed in a single hop (`finish`).
    """

    def __init__(self, out: OutputDir, wanted: str, owner: str) -> None:
        self.out = out
        self.wanted = wanted
        self.owner = owner
        self.part: PartFile | None = None

    @property
    def name(self) -> str | None:
        return None if self.part is None else self.part.name

    async def create(self) -> PartFile:
        """Create the `.part` now (segmented downloads need it before any byte arrives)."""
        if self.part is None:
            await self._create(None, None)
        assert self.part is not None
        return self.part

    async def write_hashed(self, offset: int, chunks: list[bytes], hasher: Any | None) -> int:
        if self.part is not None:
            return await self.part.write_hashed(offset, chunks, hasher)
        return await self._create(_Batch(offset, chunks, sum(map(len, chunks))), hasher)

    async def truncate(self, size: int) -> None:
        if self.part is not None:
            await self.part.truncate(size)

    async def datasync(self) -> None:
        if self.part is not None:
            await self.part.datasync()

    async def finish(
        self, *, durable: bool = True, tail: _Batch | None = None, hasher: Any | None = None
    ) -> Path:
        if self.part is not None:
            return await self.part.finish(durable=durable, tail=tail, hasher=hasher)
        after: str | None = None
        while True:  # candidates() raises StorageError once the series is used up
            names = self.out.candidates(self.wanted, self.owner, after=after)
            job = writes._Finish(None, None, tail, hasher, durable, self.out.dir_sync)
            try:
                if self.out.inline:
                    name, final = job.create_and_run(self.out.path, names)
                else:
                    name, final = await asyncio.to_thread(job.create_and_run, self.out.path, names)
            except OSError as exc:
                raise _storage_error(exc, Path(exc.filename or self.out.path), "finish") from exc
            if name is not None:
                self.out.claim(name, self.owner)
                return self.out.final_path(final)
            after = names[-1]

    async def close(self) -> None:
        if self.part is not None:
            await self.part.close()

    async def _create(self, first: _Batch | None, hasher: Any | None) -> int:
        after: str | None = None
        while True:
            names = self.out.candidates(self.wanted, self.owner, after=after)
            path = self.out.path
            try:
                got = await asyncio.to_thread(writes._create_exclusive, path, names, first, hasher)
            except OSError as exc:
                raise _storage_error(exc, Path(exc.filename or self.out.path), "create") from exc
            if got is not None:
                name, fd, written = got
                self.out.claim(name, self.owner)
                self.part = PartFile(self.out, name, fd, 0, owner=self.owner)
                return written
            after = names[-1]


class SequentialWriter:
    """Writes one stream's bytes in order from `offset`, in batches of at least 1 MiB.

    One pwrite per MiB instead of one per network read keeps the syscall count low (the
    write path is CPU-bound, baseline.md). `position` counts only bytes already on disk, so
    it is what may be recorded as done. Memory stays at about two batches per stream.
    """

    def __init__(self, part: PartFile | NewPart, offset: int, hasher: Any | None = None) -> None:
        self.part = part
        self.position = offset
        self.hasher = hasher
        self._batch = _Batch(offset, [])

    @property
    def pending(self) -> int:
        """Bytes received but not yet on disk."""
        return self._batch.size

    async def write(self, data: bytes) -> int:
        """Queue `data`; returns the bytes that reached the disk by this call (0 or a batch)."""
        if data:
            self._batch.chunks.append(data)
            self._batch.size += len(data)
        if self._batch.size >= WRITE_BATCH:
            return await self.flush()
        return 0

    async def flush(self) -> int:
        """Write everything queued; returns the number of bytes written."""
        batch = self._batch
        if not batch.size:
            return 0
        self._batch = _Batch(batch.offset + batch.size, [])
        written = await self.part.write_hashed(batch.offset, batch.chunks, self.hasher)
        self.position = batch.offset + written
        return written

    def take_pending(self) -> _Batch | None:
        """Hand the queued bytes to a `finish`, which writes them in its own hop."""
        batch = self._batch
        self._batch = _Batch(batch.offset + batch.size, [])
        self.position = batch.offset + batch.size
        return batch if batch.size else None


async def open_part(
    out: OutputDir, name: str, *, size: int | None, resume: bool, owner: str | None = None
) -> PartFile:
    """Create or reopen `DIR/NAME.part` in a worker thread.

    `resume=False` truncates whatever is there. `size` (known total, segmented downloads
    only) preallocates the file so segments can write at any offset and a full disk shows up
    at once. A symlink at `NAME.part` is refused (O_NOFOLLOW).
    """
    path = out.part_path(name)
    flags = _PART_FLAGS | (0 if resume else os.O_TRUNC)
    try:
        fd, on_disk = await asyncio.to_thread(writes._open_regular, path, flags)
    except OSError as exc:
        raise _storage_error(exc, path, "open") from exc
    part = PartFile(out, name, fd, on_disk, owner=owner)
    if size is not None and size > on_disk:
        try:
            await part.preallocate(size)
        except BaseException:
            await part.close()
            raise
    return part


async def sha256_file(path: str | os.PathLike[str], *, upto: int | None = None) -> Any:
    """SHA-256 of the first `upto` bytes (or all) of `path`, read in 1 MiB chunks off the loop.

    Returns the hashlib object so a resumed stream can go on feeding it.
    """
    try:
        return await asyncio.to_thread(writes._hash_file, os.fspath(path), upto)
    except OSError as exc:
        raise _storage_error(exc, Path(path), "read") from exc


class HashFollower:
    """SHA-256 of a file written out of order (segments), computed while it is written.

    `available(pos)` says up to where the bytes from `pos` on are final on disk (the position
    of the segment writer covering `pos`). The follower reads them back from the page cache
    right behind the writers and hashes them in order, so a segmented download does not end
    with a second full read of the file; `poke()` after each write wakes it.
    """

    def __init__(
        self,
        path: Path,
        total: int,
        available: Callable[[int], int],
        *,
        start: int = 0,
        hasher: Any | None = None,
    ) -> None:
        self.path, self.total, self.available = path, total, available
        #: Where to begin, with a `hasher` that holds every byte before it: a stream that
        #: hashed its own bytes until its file was split into segments goes on from there.
        self.start, self.hasher = start, hasher
        self._changed = asyncio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def run(self) -> Any:
        """The hasher of all `total` bytes; waits for the writers as needed (cancel to stop)."""
        hasher = self.hasher if self.hasher is not None else hashlib.sha256()
        try:
            fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error(exc, self.path, "read") from exc
        pos = self.start
        try:
            while pos < self.total:
                ready = min(self.available(pos), self.total)
                if ready <= pos:
                    self._changed.clear()
                    if min(self.available(pos), self.total) <= pos:
                        await self._changed.wait()
                    continue
                n = min(ready - pos, _FOLLOW_STEP)
                try:
                    await asyncio.to_thread(writes._hash_range, fd, pos, n, hasher)
                except OSError as exc:
                    raise _storage_error(exc, self.path, "read") from exc
                pos += n
        finally:
            os.close(fd)
        return hasher
