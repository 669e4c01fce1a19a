"""File names in a worker process: taken only where no other process can take them too.

`OutputDir` keeps its reservations in memory, which one process shares and N processes do
not. Why a worker's names still never collide (the argument, rule by rule):

1. A new file's name is settled on disk: `NewPart` creates `NAME.part` with O_EXCL among
   `candidates`, and the final rename never replaces a file (RENAME_NOREPLACE). Both are
   atomic across processes, as they already were across threads.
2. A resumed file's name (the journal's) is granted by the main process alone, with the
   same `OutputDir.reserve(prefer=...)` as in one process; a name it cannot grant is not
   sent at all (the asset starts afresh under a name settled by rule 1). The worker takes
   the granted name as given (`reserve`) and reopens its `.part`.
3. What rule 1 cannot see is a granted name whose `.part` is missing (deleted, never
   synced): a new file could create it in another worker just before the resume reopens
   it. So every name the journal held for an unfinished asset when the workers started
   (`part_names_in_use`) is never offered to a new file (`candidates` skips it). A name
   the journal learns later was created by rule 1, so its `.part` exists while it is
   resumable, and O_EXCL refuses it to everyone else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bulkgetty.errors import StorageError
from bulkgetty.stages.files import OutputDir

__all__ = ("WorkerOutputDir",)


class WorkerOutputDir(OutputDir):
    """The output folder as a worker process sees it (see the module docstring)."""

    def __init__(
        self, path: str | os.PathLike[str], held: Iterable[str], *, inline: bool = False
    ) -> None:
        super().__init__(path, inline=inline)
        #: Casefolded names the journal held for unfinished assets (rule 3).
        self.held = frozenset(name.casefold() for name in held)
        #: owner -> the name the main process granted it for the job now running (rule 2).
        self.granted: dict[str, str] = {}

    def grant(self, owner: str, name: str | None) -> None:
        """The main process granted `owner` its journal name for the job it sends now."""
        if name is None:
            self.granted.pop(owner, None)
        else:
            self.granted[owner] = name

    def forget(self, owner: str) -> None:
        """The owner's job ended here: its next attempt may run in another worker."""
        self.granted.pop(owner, None)
        self.release(owner)

    def reserve(self, name: str, owner: str, *, prefer: str | None = None) -> str:
        if prefer is not None and self.granted.get(owner) == prefer:
            return self._take(prefer, owner)
        # Only a resume reserves, and only with the name granted to it (rule 2).
        raise StorageError(f"{name!r} was not granted to {owner} by the main process")

    def candidates(self, name: str, owner: str, *, after: str | None = None) -> list[str]:
        out: list[str] = []
        while not out:  # every candidate held: go on along the series
            got = super().candidates(name, owner, after=after)
            out = [c for c in got if c.casefold() not in self.held or self._own(c, owner)]
            after = got[-1]
        return out

    def _own(self, name: str, owner: str) -> bool:
        return self.granted.get(owner, "").casefold() == name.casefold()
