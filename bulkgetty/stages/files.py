"""The only module that creates, writes or renames files in the output folder.

Why one module: every rule that keeps the user's folder safe lives here and nowhere else.

- Names come from a server header, so they are hostile until cleaned (`safe_name`).
- A name is *reserved* in memory before any byte is written (`OutputDir.reserve`), so two
  assets that share a name never write to the same file, in this process or on disk.
- Bytes go to `NAME.part`; only a complete, verified file is renamed to `NAME`, and that
  rename never replaces an existing file (`PartFile.finish`).
- Every blocking call that may take a millisecond (open with O_CREAT, pwrite, fsync, rename,
  hashing) runs in a worker thread, so one slow disk operation does not stall every transfer
  on the event loop (baseline.md: open(O_CREAT) costs ~1 ms on ext4).
- OS errors become `StorageError` naming the path and the cause; the `.part` stays for resume.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import stat
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from bulkgetty.errors import DiskFullError, StorageError

__all__ = (
    "MAX_NAME_BYTES",
    "PART_SUFFIX",
    "HashFollower",
    "NewPart",
    "OutputDir",
    "PartFile",
    "SequentialWriter",
    "extension_for",
    "open_part",
    "parse_content_disposition",
    "safe_name",
    "sha256_file",
)

PART_SUFFIX: Final = ".part"
#: Longest final name in UTF-8 bytes. 255 is NAME_MAX on every common filesystem; the final
#: name is capped lower so that `NAME.part` still fits in 255 bytes.
MAX_NAME_BYTES: Final = 255 - len(PART_SUFFIX)
#: Small writes are gathered until at least this many bytes, then written with one pwrite.
WRITE_BATCH: Final = 2**20
_READ_CHUNK: Final = 2**20
_IOV_MAX: Final = 1024
#: Most bytes a HashFollower hashes per thread hop.
_FOLLOW_STEP: Final = 16 * 2**20
_MAX_EXT_BYTES: Final = 32
_MAX_COLLISIONS: Final = 10_000
#: Names handed to one thread hop that creates or renames a file (more only when all taken).
_CANDIDATES: Final = 16
_PART_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_STATE_DIR: Final = ".bulkgetty"

_RESERVED_WINDOWS: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_WINDOWS_BAD_CHARS: Final = re.compile(r'[<>:"|?*]')
#: Names `_clean_component` keeps unchanged without looking at each character: ASCII
#: letters, digits and `_-.() ` only, neither starting with `.` or ` ` nor ending in them.
_PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9_()-](?:[A-Za-z0-9_.() -]*[A-Za-z0-9_()-])?")

_EXT_BY_TYPE: Final = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/tiff": ".tif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "image/x-eps": ".eps",
    "application/postscript": ".eps",
    "application/eps": ".eps",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpg",
    "video/webm": ".webm",
    "video/x-m4v": ".m4v",
    "video/mxf": ".mxf",
    "application/mxf": ".mxf",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
}

# --------------------------------------------------------------------------- names


def safe_name(raw: str | None, *, asset_id: str, content_type: str | None) -> str:
    """A file name that is safe to create directly in the output folder.

    A safe Getty name (`GettyImages-1167612765.jpg`) comes back exactly as sent. Anything
    else is reduced to one harmless path component; with nothing usable left, the name is
    the asset id plus an extension from `content_type`.
    """
    name = _clean_component(raw) if raw else ""
    if not name:
        name = _clean_component(asset_id + extension_for(content_type)) or "asset.bin"
    return name


def extension_for(content_type: str | None) -> str:
    """`.jpg` for image/jpeg and so on; `.bin` when the type is missing or unknown."""
    if not content_type:
        return ".bin"
    mime = content_type.split(";", 1)[0].strip().lower()
    return _EXT_BY_TYPE.get(mime, ".bin")


def _clean_component(raw: str) -> str:
    """Keep the last path component; drop what a filesystem or a shell would misread."""
    if _is_plain_name(raw):
        return raw  # every rule below would keep it as it is (checked three times a file)
    last = raw.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in last if not _is_unsafe_char(ch))
    text = _WINDOWS_BAD_CHARS.sub("_", text)
    text = text.strip().rstrip(". ").lstrip(". ")
    if not text:
        return ""
    stem, ext = _split_ext(text)
    if stem.split(".", 1)[0].rstrip(" ").upper() in _RESERVED_WINDOWS:
        stem = "_" + stem
    if ext.lower() == PART_SUFFIX:  # a finished file must never pass for a partial one
        ext = "_part"
    return _fit(stem, ext, MAX_NAME_BYTES)


def _is_plain_name(raw: str) -> bool:
    """A short ASCII name with no character, edge, suffix or device name to clean."""
    return (
        len(raw) <= MAX_NAME_BYTES
        and _PLAIN_NAME.fullmatch(raw) is not None
        and not raw.lower().endswith(PART_SUFFIX)
        and raw.split(".", 1)[0].rstrip(" ").upper() not in _RESERVED_WINDOWS
    )


def _is_unsafe_char(ch: str) -> bool:
    """Control and format characters (NUL, newline, bidi overrides) and lone surrogates."""
    category = unicodedata.category(ch)
    return category in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _split_ext(name: str) -> tuple[str, str]:
    """Split off a short extension; a 'extension' longer than 32 bytes is part of the stem."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) + 1 > _MAX_EXT_BYTES or " " in ext:
        return name, ""
    return stem, "." + ext


def _fit(stem: str, ext: str, limit: int) -> str:
    """`stem + ext` in at most `limit` UTF-8 bytes, cutting the stem on a character boundary."""
    budget = limit - len(ext.encode())
    raw = stem.encode()
    if len(raw) > budget:
        stem = raw[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return stem + ext


def _is_single_safe_component(name: str) -> bool:
    """True when `name` is exactly what `safe_name` would keep (used on journal input)."""
    return bool(name) and _clean_component(name) == name


# ------------------------------------------------------------- Content-Disposition


def parse_content_disposition(value: str) -> str | None:
    """The file name in a Content-Disposition header, or None.

    Accepts Getty's unquoted form (`attachment; filename=GettyImages-1.jpg`), quoted strings
    with backslash escapes, and RFC 5987/6266 `filename*=UTF-8''%E2%82%AC.jpg`, which wins
    over `filename`. Junk parameters are skipped rather than failing the download.
    """
    params = _parse_params(value)
    extended = params.get("filename*")
    if extended is not None:
        decoded = _decode_ext_value(extended)
        if decoded:
            return decoded
    plain = params.get("filename")
    return plain or None


def _parse_params(value: str) -> dict[str, str]:
    """`name=value` pairs after the disposition type; the first occurrence of a name wins."""
    params: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in "=;":
            j += 1
        key = value[i:j].strip().lower()
        if j >= n or value[j] == ";":
            i = j + 1
            continue
        raw, i = _read_value(value, j + 1)
        if key and key not in params:
            params[key] = raw
    return params


def _read_value(value: str, i: int) -> tuple[str, int]:
    """Read a quoted-string (with escapes) or a token up to `;`; return it and the next index."""
    n = len(value)
    while i < n and value[i] in " \t":
        i += 1
    if i < n and value[i] == '"':
        out: list[str] = []
        i += 1
        while i < n and value[i] != '"':
            if value[i] == "\\" and i + 1 < n:
                i += 1
            out.append(value[i])
            i += 1
        end = value.find(";", i)
        return "".join(out), (n if end < 0 else end + 1)
    end = value.find(";", i)
    end = n if end < 0 else end
    return value[i:end].strip(), end + 1


def _decode_ext_value(raw: str) -> str | None:
    """Decode RFC 5987 `charset'lang'pct-encoded`; None if malformed or an unknown charset."""
    parts = raw.strip().strip('"').split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0].strip().lower()
    if charset not in ("utf-8", "iso-8859-1", "latin-1", "us-ascii"):
        return None
    data = unquote_to_bytes(parts[2])
    try:
        return data.decode("utf-8" if charset == "utf-8" else "latin-1")
    except UnicodeDecodeError:
        return None


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
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
        for candidate in _series(clean):
            if len(out) >= _CANDIDATES:
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


def _series(clean: str) -> Iterator[str]:
    """`name`, `stem (2).ext`, `stem (3).ext` ... up to the collision limit."""
    stem, ext = _split_ext(clean)
    yield clean
    for n in range(2, _MAX_COLLISIONS + 1):
        yield _fit(stem, f" ({n}){ext}", MAX_NAME_BYTES)


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
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:
                    self._synced = max(self._synced, target)
                self._cond.notify_all()


# ----------------------------------------------------------------------- part file


@dataclass(slots=True)
class _Batch:
    """Bytes waiting to be written at `offset` in one pwrite."""

    offset: int
    chunks: list[bytes]
    size: int = 0


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
        await self._run(_pwrite_all, self.fd, data, offset, None, what="write")

    async def write_hashed(self, offset: int, chunks: list[bytes], hasher: Any | None) -> int:
        """Write `chunks` back to back at `offset` and feed them to `hasher`, in one thread hop.

        Hashing next to the write keeps SHA-256 off the event loop too (hashlib releases the
        GIL on large buffers). Returns the number of bytes written.
        """
        written: int = await self._run(_write_chunks, self.fd, chunks, offset, hasher, what="write")
        return written

    async def truncate(self, size: int) -> None:
        """Cut (or extend with zeros) the `.part` to `size` bytes."""
        await self._run(os.ftruncate, self.fd, size, what="truncate")

    async def preallocate(self, size: int) -> None:
        """Reserve `size` bytes on disk now, so ENOSPC comes before the download, not after."""
        await self._run(_preallocate, self.fd, size, what="preallocate")

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
        job = _Finish(fd, self.path, tail, hasher, durable, self.out.dir_sync)
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
            job = _Finish(None, None, tail, hasher, durable, self.out.dir_sync)
            try:
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
                got = await asyncio.to_thread(_create_exclusive, path, names, first, hasher)
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
        fd, on_disk = await asyncio.to_thread(_open_regular, path, flags)
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
        return await asyncio.to_thread(_hash_file, os.fspath(path), upto)
    except OSError as exc:
        raise _storage_error(exc, Path(path), "read") from exc


class HashFollower:
    """SHA-256 of a file written out of order (segments), computed while it is written.

    `available(pos)` says up to where the bytes from `pos` on are final on disk (the position
    of the segment writer covering `pos`). The follower reads them back from the page cache
    right behind the writers and hashes them in order, so a segmented download does not end
    with a second full read of the file; `poke()` after each write wakes it.
    """

    def __init__(self, path: Path, total: int, available: Callable[[int], int]) -> None:
        self.path, self.total, self.available = path, total, available
        self._changed = asyncio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def run(self) -> Any:
        """The hasher of all `total` bytes; waits for the writers as needed (cancel to stop)."""
        hasher = hashlib.sha256()
        try:
            fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error(exc, self.path, "read") from exc
        pos = 0
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
                    await asyncio.to_thread(_hash_range, fd, pos, n, hasher)
                except OSError as exc:
                    raise _storage_error(exc, self.path, "read") from exc
                pos += n
        finally:
            os.close(fd)
        return hasher


# ------------------------------------------------------ blocking helpers (threads)


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
    """One pwritev for the whole batch (no join copy); a short write finishes with pwrite."""
    if len(chunks) == 1 or len(chunks) > _IOV_MAX:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        total = _pwrite_all(fd, data, offset, hasher)
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
    directory: Path, names: Sequence[str], first: _Batch | None, hasher: Any | None
) -> tuple[str, int, int] | None:
    """Create `NAME.part` for the first NAME whose final file and `.part` are both absent.

    O_EXCL makes the `.part` itself the reservation on disk, atomic against other threads
    and processes. Writes `first` into it. None when every name is taken.
    """
    for name in names:
        if os.path.lexists(directory / name):
            continue
        try:
            fd = os.open(directory / (name + PART_SUFFIX), _PART_FLAGS | os.O_EXCL, 0o644)
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
    part: Path | None
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
        directory = self.part.parent
        for name in names:
            try:
                _rename_noreplace(self.part, directory / name)
            except FileExistsError:
                continue
            if self.durable:
                self.dir_sync.after_rename()
            return name
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(directory / names[0]))

    def create_and_run(self, directory: Path, names: Sequence[str]) -> tuple[str | None, str]:
        """A file that was never written before its end: create, write, finish, in one go."""
        got = _create_exclusive(directory, names, None, None)
        if got is None:
            return None, ""
        name, fd, _ = got
        self.fd, self.part = fd, directory / (name + PART_SUFFIX)
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


def _rename_noreplace(src: Path, dst: Path) -> None:
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
