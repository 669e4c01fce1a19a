"""`bulkgetty status DIR`: what the journal says about a folder, offline.

It opens the journal read-only and sends no request, so it is safe next to a running run
and on a machine without credentials. `verify=True` re-hashes every finished file and names
those that are missing or changed since they were verified (a rerun would fetch them again
only with `--reacquire-expired` once their URI expired).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bulkgetty.errors import UsageError
from bulkgetty.stages.journal import (
    STATE_DIR,
    Journal,
    RunRow,
    failure_counts,
    iter_done,
    runs,
    waiting_reasons,
)

__all__ = (
    "ChangedFile",
    "JournalStatus",
    "ReasonTally",
    "group_reasons",
    "journal_status",
    "reason_lines",
)

#: Failure reasons shown per group; the report has every asset's own.
MAX_GROUPS: Final = 10
#: Asset ids named per reason at the end of a run (the report has them all).
MAX_IDS: Final = 3
#: Distinct reasons a run's tally keeps apart; later new ones count as "other reasons".
MAX_TALLIED: Final = 1000
_NUMBER = re.compile(r"\d{4,}")
_OTHER = "other reasons (see the report)"


@dataclass(frozen=True, slots=True)
class ChangedFile:
    """A finished file that is not what was verified: missing, another size or other bytes."""

    id: str
    path: str
    problem: str


@dataclass(frozen=True, slots=True)
class JournalStatus:
    """Counts per state, failure reasons grouped, bytes, spends and runs of one folder."""

    out_dir: str
    assets: int
    done: int
    #: Bought (URI known) but the file is not finished: a rerun spends nothing on these.
    acquired: int
    pending: int
    in_doubt: int
    failed: int
    waiting_for_quota: int
    bytes_done: int
    spends: int
    #: (reason, assets), most frequent first; numbers of 4+ digits (ids) read as N.
    failures: tuple[tuple[str, int], ...]
    waiting: tuple[tuple[str, int], ...]
    runs: int
    last_run: RunRow | None
    #: None unless verified.
    verified: int | None = None
    changed: tuple[ChangedFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [{"reason": r, "assets": n} for r, n in self.failures]
        data["waiting"] = [{"reason": r, "assets": n} for r, n in self.waiting]
        return data

    def lines(self) -> list[str]:
        """The human report, one fact a line."""
        out = [
            f"{self.out_dir}: {self.assets} assets in the journal, {self.runs} run"
            + ("" if self.runs == 1 else "s"),
            f"  done               {self.done:>8}  ({_mb(self.bytes_done)})",
            f"  acquired, unfinished {self.acquired:>6}  (bought; a rerun spends nothing on them)",
            f"  pending            {self.pending:>8}",
            f"  in doubt           {self.in_doubt:>8}  (a rerun checks the download history)",
            f"  failed             {self.failed:>8}",
            f"  waiting for quota  {self.waiting_for_quota:>8}",
            f"  downloads spent    {self.spends:>8}",
        ]
        out += reason_lines("failed", [(r, n, ()) for r, n in self.failures])
        out += reason_lines("waiting", [(r, n, ()) for r, n in self.waiting])
        if self.last_run is not None:
            r = self.last_run
            state = "unfinished" if r.finished is None else f"exit {r.exit_code}"
            out.append(f"last run: #{r.id} {r.manifest} ({state}, {r.spends} spent)")
        if self.verified is not None:
            out.append(f"verified {self.verified} finished files: {len(self.changed)} changed")
            out += [f"  {c.path}: {c.problem} (asset {c.id})" for c in self.changed]
        return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _reason_key(reason: str) -> str:
    """Reasons that differ only in ids or numbers are one reason."""
    return _NUMBER.sub("N", reason) or "(no reason recorded)"


def _ranked(merged: dict[str, int]) -> list[tuple[str, int]]:
    """Most frequent first; past MAX_GROUPS the rest are one "other reasons" group."""
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) > MAX_GROUPS:
        rest = sum(n for _, n in ranked[MAX_GROUPS - 1 :])
        ranked = [*ranked[: MAX_GROUPS - 1], (_OTHER, rest)]
    return ranked


def group_reasons(counts: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Merge reasons that differ only in ids or numbers; most frequent first, at most 10."""
    merged: dict[str, int] = {}
    for reason, n in counts:
        key = _reason_key(reason)
        merged[key] = merged.get(key, 0) + n
    return tuple(_ranked(merged))


@dataclass(slots=True)
class ReasonTally:
    """Reasons counted one asset at a time, grouped as `status` groups them, with the first
    MAX_IDS asset ids of each: what the end of a run prints when no one watched it."""

    counts: dict[str, int] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, asset_id: str) -> None:
        key = _reason_key(reason)
        if key not in self.counts and len(self.counts) >= MAX_TALLIED:
            key = _OTHER
        self.counts[key] = self.counts.get(key, 0) + 1
        named = self.ids.setdefault(key, [])
        if len(named) < MAX_IDS:
            named.append(asset_id)

    def groups(self) -> list[tuple[str, int, Sequence[str]]]:
        """(reason, assets, up to MAX_IDS ids), most frequent first, at most MAX_GROUPS."""
        return [(r, n, self.ids.get(r, ())) for r, n in _ranked(self.counts)]


def reason_lines(title: str, groups: Iterable[tuple[str, int, Sequence[str]]]) -> list[str]:
    """`TITLE, by reason:` and one `N × reason` line a group (with its ids when known)."""
    out = [f"  {n:>6} × {reason}" + _ids(ids, n) for reason, n, ids in groups]
    return [f"{title}, by reason:", *out] if out else []


def _ids(ids: Sequence[str], n: int) -> str:
    if not ids:
        return ""
    more = ", …" if n > len(ids) else ""
    return f" (ids: {', '.join(ids)}{more})"


def journal_status(out_dir: Path, *, verify: bool = False) -> JournalStatus:
    """Read DIR's journal (read-only, no lock, no network); optionally re-hash finished files."""
    if not (out_dir / STATE_DIR / "journal.sqlite").exists():
        raise UsageError(f"{out_dir} has no bulkgetty journal: run `bulkgetty run ... --out DIR`")
    journal = Journal(out_dir, read_only=True)
    try:
        totals = journal.totals()
        all_runs = runs(journal)
        changed = tuple(_verify(out_dir, journal)) if verify else ()
        verified = totals.by_state.get("done", 0) if verify else None
        failures = group_reasons(failure_counts(journal))
        waiting = group_reasons(waiting_reasons(journal))
    finally:
        journal.close()
    s = totals.by_state
    return JournalStatus(
        out_dir=str(out_dir),
        assets=sum(s.values()),
        done=s.get("done", 0),
        acquired=s.get("acquired", 0),
        pending=s.get("pending", 0),
        in_doubt=totals.in_doubt,
        failed=s.get("failed", 0),
        waiting_for_quota=s.get("waiting_for_quota", 0),
        bytes_done=totals.bytes_done,
        spends=totals.spends,
        failures=failures,
        waiting=waiting,
        runs=len(all_runs),
        last_run=all_runs[-1] if all_runs else None,
        verified=verified,
        changed=changed,
    )


def _verify(out_dir: Path, journal: Journal) -> list[ChangedFile]:
    changed: list[ChangedFile] = []
    for record in iter_done(journal):
        path = out_dir / (record.path or "")
        problem = _check_file(path, record.bytes, record.sha256)
        if problem is not None:
            changed.append(ChangedFile(record.asset.id, str(path), problem))
    return changed


def _check_file(path: Path, size: int | None, sha256: str | None) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if size is not None and st.st_size != size:
        return f"{st.st_size} bytes, {size} were verified"
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if sha256 is not None and digest != sha256:
        return "content changed (sha256 differs)"
    return None
