"""Low-level writes in worker threads: pwrite/pwritev, fsync, writeback, the no-replace rename.

Every blocking call that may take a millisecond (open with O_CREAT, pwrite, fsync, rename,
hashing) runs in a worker thread, so one slow disk operation does not stall every transfer
on the event loop (baseline.md: open(O_CREAT) costs ~1 ms on ext4). The one exception is a
small file's finish on a memory filesystem (`OutputDir.inline`): there every call here takes
microseconds and the thread hop cost more than all of them. The rename never
replaces an existing file (renameat2 RENAME_NOREPLACE). OS errors become `StorageError`
naming the path and the cause; the `.part` stays for resume.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bulkgetty.errors import DiskFullError, StorageError
from bulkgetty.stages.files.names import PART_SUFFIX

WRITE_BATCH: Final = 2**20
_READ_CHUNK: Final = 2**20
_IOV_MAX: Final = 1024
#: Batches up to this size are joined into one buffer before their write (see _write_chunks).
_JOIN_MAX: Final = 512 * 2**10
_PART_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
StrPath = str | os.PathLike[str]


class _DirSync:
    """fsync of the output folder after renames, shared by the threads that renamed.

    Each finished file needs its rename made durable; one folder fsync covers every rename
    done before it started, so a thread whose rename is already covered by a running or
    finished fsync waits for it instead of issuing its own (group commit, as in a journal).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._renamed = 0  # renames reported so far
        self._synced = 0  # renames known durable
        self._running = False
        #: The folder, opened by the first sync and kept: one syscall per sync instead of
        #: three (each a GIL hand-off between the loop and the file threads).
        self._fd: int | None = None

    def after_rename(self) -> None:
        """Call in a worker thread after a rename; returns when that rename is durable."""
        with self._cond:
            self._renamed += 1
            mine = self._renamed
            while self._synced < mine:
                if not self._running:
                    break
                self._cond.wait()
            else:
                return
            self._running = True
            target = self._renamed
        ok = False
        try:
            os.fsync(self._folder())
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:
                    self._synced = max(self._synced, target)
                self._cond.notify_all()

    def _folder(self) -> int:
        """The folder's descriptor (only the thread running a sync calls this)."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._fd = fd
            weakref.finalize(self, os.close, fd)
        return self._fd


@dataclass(slots=True)
class _Batch:
    """Bytes waiting to be written at `offset` in one pwrite."""

    offset: int
    chunks: list[bytes]
    size: int = 0


def _open_regular(path: Path, flags: int) -> tuple[int, int]:
    fd = os.open(path, flags, 0o644)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd, st.st_size


def _pwrite_all(
    fd: int, data: bytes | bytearray | memoryview, offset: int, hasher: Any | None
) -> int:
    view = memoryview(data)
    total = len(view)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    if hasher is not None:
        hasher.update(data)
    return total


def _write_chunks(fd: int, chunks: list[bytes], offset: int, hasher: Any | None) -> int:
    """One pwritev for the whole batch (no join copy); a short write finishes with pwrite.

    A small batch (a small file's body) is joined first: copying it costs less than the GIL
    hand-offs of one hash update per chunk (each update of 2 KiB or more lets the GIL go).
    """
    if len(chunks) == 1 or len(chunks) > _IOV_MAX:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        total = _pwrite_all(fd, data, offset, hasher)
    elif sum(map(len, chunks)) <= _JOIN_MAX:
        total = _pwrite_all(fd, b"".join(chunks), offset, hasher)
    else:
        total = sum(map(len, chunks))
        done = os.pwritev(fd, chunks, offset)
        if done < total:
            _pwrite_all(fd, memoryview(b"".join(chunks))[done:], offset + done, None)
        if hasher is not None:
            for chunk in chunks:
                hasher.update(chunk)
    _start_writeback(fd, offset, total)
    return total


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _create_exclusive(
    directory: StrPath, names: Sequence[str], first: _Batch | None, hasher: Any | None
) -> tuple[str, int, int] | None:
    """Create `NAME.part` for the first NAME whose final file and `.part` are both absent.

    O_EXCL makes the `.part` itself the reservation on disk, atomic against other threads
    and processes. Writes `first` into it. None when every name is taken.
    """
    folder = os.fspath(directory)  # plain strings: pathlib costs ~3 us an operation
    for name in names:
        if os.path.lexists(os.path.join(folder, name)):
            continue
        try:
            path = os.path.join(folder, name + PART_SUFFIX)
            fd = os.open(path, _PART_FLAGS | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        written = 0
        if first is not None:
            try:
                written = _write_chunks(fd, first.chunks, first.offset, hasher)
            except BaseException:
                os.close(fd)
                raise
        return name, fd, written
    return None


@dataclass(slots=True)
class _Finish:
    """Everything that ends a file, run in one worker thread: tail, fsync, rename, dir fsync."""

    fd: int | None
    part: StrPath | None
    tail: _Batch | None
    hasher: Any | None
    durable: bool
    dir_sync: _DirSync

    def run(self, names: Sequence[str]) -> str:
        """Finish an open `.part`; returns the final name it got (the first free of `names`)."""
        assert self.fd is not None and self.part is not None
        fd, self.fd = self.fd, None
        try:
            if self.tail is not None and self.tail.size:
                _write_chunks(fd, self.tail.chunks, self.tail.offset, self.hasher)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        directory = os.path.dirname(self.part)
        for name in names:
            try:
                _rename_noreplace(self.part, os.path.join(directory, name))
            except FileExistsError:
                continue
            if self.durable:
                self.dir_sync.after_rename()
            return name
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), os.path.join(directory, names[0]))

    def create_and_run(self, directory: StrPath, names: Sequence[str]) -> tuple[str | None, str]:
        """A file that was never written before its end: create, write, finish, in one go."""
        got = _create_exclusive(directory, names, None, None)
        if got is None:
            return None, ""
        name, fd, _ = got
        self.fd, self.part = fd, os.path.join(directory, name + PART_SUFFIX)
        later = names[names.index(name) :]
        return name, self.run(later)


_RENAME_NOREPLACE: Final = 1
_AT_FDCWD: Final = -100


def _libc_function(symbol: str, argtypes: tuple[Any, ...]) -> Any | None:
    """A libc call Python's os module lacks; None where this libc has no such symbol."""
    try:
        func = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), symbol)
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


_renameat2: Any | None = _libc_function(
    "renameat2", (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
)
_sync_file_range: Any | None = _libc_function(
    "sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
)
_SYNC_FILE_RANGE_WRITE: Final = 2
#: Batches at least this large start their writeback at once (see `_start_writeback`).
_WRITEBACK_MIN: Final = 2**20


def _start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing these bytes to disk now, without waiting for them.

    A large file is made durable by one fsync before its rename; with writeback started
    batch by batch while it streams, that fsync finds little left to write instead of the
    whole file (the cost curl and peers push into a later `sync`). Best effort: where the
    call does not exist or the filesystem refuses it, the final fsync still does it all.
    """
    if _sync_file_range is not None and size >= _WRITEBACK_MIN:
        _sync_file_range(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


def _rename_noreplace(src: StrPath, dst: StrPath) -> None:
    """Rename that fails with EEXIST instead of replacing `dst`.

    renameat2(RENAME_NOREPLACE) where the kernel and filesystem have it; else link + unlink
    (link never replaces); on filesystems without hard links, check-then-rename, which is
    still safe here because `dst` is reserved for this asset in this process.
    """
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
            raise
        if os.path.lexists(dst):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from exc
        os.rename(src, dst)
        return
    os.unlink(src)


def _hash_range(fd: int, offset: int, length: int, hasher: Any) -> None:
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
        if not data:
            raise OSError(errno.EIO, f"file ended at byte {offset}, expected {end}")
        hasher.update(data)
        offset += len(data)


def _hash_file(path: str, upto: int | None) -> Any:
    hasher = hashlib.sha256()
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    left = upto
    with open(path, "rb", buffering=0) as fh:
        while left is None or left > 0:
            want = _READ_CHUNK if left is None else min(_READ_CHUNK, left)
            n = fh.readinto(view[:want])
            if not n:
                break
            hasher.update(view[:n])
            if left is not None:
                left -= n
    if left:
        raise OSError(errno.EIO, f"file is {left} bytes shorter than expected", path)
    return hasher


_CAUSES: Final = {
    errno.ENOSPC: "disk full (ENOSPC); the .part is kept for resume",
    errno.EDQUOT: "disk quota exceeded (EDQUOT); the .part is kept for resume",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
    errno.EROFS: "read-only filesystem (EROFS)",
    errno.ELOOP: "is a symlink, refused (ELOOP)",
    errno.EEXIST: "already exists, will not overwrite it (EEXIST)",
    errno.ENAMETOOLONG: "file name too long (ENAMETOOLONG)",
}


def _storage_error(exc: OSError, path: Path, what: str) -> StorageError:
    cause = _CAUSES.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    kind = DiskFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    return kind(f"cannot {what} {path}: {cause}")
