"""The state folder `DIR/.bulkgetty`: private, locked, with room kept for the journal.

Private: the journal holds delivery URIs, each a bearer credential for its paid file for 24 h,
so the folder is 0700 and its files 0600 whatever the umask. Locked: one run per folder.

Shared filesystems (job arrays writing to NFS, Lustre, CIFS...): the lock is `flock`, which
Linux's NFS client turns into a whole-file lock held by the server (NLM on v3, the protocol on
v4), so a second process on another host is refused too; a mount with `nolock`/`local_lock`
keeps locks on one host only and cannot protect a folder shared by hosts. WAL needs shared
memory between the processes using the database, which a network filesystem cannot give, so
there the journal uses the rollback journal instead (`journal_mode_for`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from bulkgetty.errors import JournalError

__all__ = (
    "MEMORY_FILESYSTEMS",
    "NETWORK_FILESYSTEMS",
    "RESERVE_BYTES",
    "STATE_DIR",
    "filesystem_type",
    "journal_mode_for",
    "keep_reserve",
    "on_memory_filesystem",
    "private_file",
    "private_state_dir",
    "release_reserve",
    "take_lock",
)

#: Everything bulkgetty keeps besides finished files lives here, inside the output folder.
STATE_DIR: Final = ".bulkgetty"
#: Bytes kept free for the journal in `DIR/.bulkgetty/reserve`: on a full disk they are given
#: back so that the URIs of the POSTs still in flight can be committed (a URI that arrived is
#: a paid download). Enough for a few hundred small commits.
RESERVE_BYTES: Final = 256 * 1024


def private_state_dir(state_dir: Path) -> None:
    """The state folder is the owner's alone (0700), whatever the umask.

    The journal holds delivery URIs: each is a bearer credential for its paid file for 24 h,
    so on a shared machine or a cluster filesystem no other local user may read them.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if state_dir.stat().st_mode & 0o077:
        os.chmod(state_dir, 0o700)


def private_file(path: Path) -> None:
    """Create `path` as 0600 (or tighten it to 0600): the owner's alone, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def take_lock(
    state_dir: Path, out_dir: Path, advice: str = "wait for it to finish or stop it first"
) -> int:
    """Hold an exclusive lock for the life of the run; a second run fails at once (and is
    told `advice`). The team ledger's workers take the same lock on their folders."""
    lock_path = state_dir / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalError(
            f"another bulkgetty run (pid {holder}) is using {out_dir}; {advice}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def keep_reserve(state_dir: Path) -> None:
    """Hold RESERVE_BYTES for the journal (best effort: a disk already full has none)."""
    path = state_dir / "reserve"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size < RESERVE_BYTES:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError:
        os.ftruncate(fd, 0)  # no room: keep no half reserve that frees nothing useful
    finally:
        os.close(fd)


def release_reserve(state_dir: Path) -> bool:
    """The disk is full: give the reserve back so pending commits fit; False if none."""
    path = state_dir / "reserve"
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return False
    return size > 0


def journal_mode_for(state_dir: Path) -> str:
    """WAL on local disks; the rollback journal (DELETE) on network filesystems.

    WAL keeps its index in shared memory (`-wal`/`-shm` beside the database), which only
    works between processes on one host: SQLite documents WAL as unsafe on NFS, CIFS and
    cluster filesystems. `BULKGETTY_JOURNAL_MODE` overrides the choice.
    """
    forced = os.environ.get("BULKGETTY_JOURNAL_MODE", "").strip().upper()
    if forced in ("WAL", "DELETE", "TRUNCATE", "PERSIST"):
        return forced
    return "DELETE" if filesystem_type(state_dir) in NETWORK_FILESYSTEMS else "WAL"


#: Filesystem types (as /proc/self/mounts names them) kept in memory: an fsync there costs
#: nothing and a file operation microseconds.
MEMORY_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs"})


def on_memory_filesystem(path: Path) -> bool:
    """Whether `path` (or the folder it would be created in) lies on a memory filesystem."""
    return filesystem_type(path) in MEMORY_FILESYSTEMS


#: Filesystem types (as /proc/self/mounts names them) shared between hosts.
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.juicefs",
        "9p",
        "afs",
        "ocfs2",
        "gfs2",
    }
)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (longest mount prefix), or None if unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype
