"""Decide, from the journal alone, what each asset needs: nothing, a transfer, or a purchase.

A pure function of a journal record, the clock and the output folder, so that `run` and
`plan` can never disagree about what will be spent, and so it is tested without a network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bulkgetty.stages.journal import AssetState, Record

__all__ = ("URI_SAFETY_MARGIN", "Action", "Decision", "decide", "reacquire_message")


#: A URI this close to its expiry is treated as expired: a video may take longer than that.
URI_SAFETY_MARGIN = 600.0


class Action(StrEnum):
    ALREADY_DONE = "already_done"
    TRANSFER = "transfer"
    ACQUIRE = "acquire"
    RESOLVE_DOUBT = "resolve_doubt"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""

    @property
    def may_spend(self) -> bool:
        return self.action in (Action.ACQUIRE, Action.RESOLVE_DOUBT)


def reacquire_message(why: str) -> str:
    """The one wording users see when only another purchase can finish an asset."""
    return f"{why}; run again with --reacquire-expired to spend another download on it"


def _file_is_whole(out_dir: Path, record: Record) -> bool:
    if not record.path or record.bytes is None:
        return False
    try:
        return os.stat(out_dir / record.path).st_size == record.bytes
    except OSError:
        return False


def _uri_valid(record: Record, now: float) -> bool:
    return bool(record.uri) and (record.uri_expires or 0.0) - URI_SAFETY_MARGIN > now


def decide(record: Record, *, now: float, out_dir: Path, reacquire_expired: bool) -> Decision:
    """What this run must do for one asset; never a purchase of something already bought."""
    state = record.state
    if state is AssetState.DONE and _file_is_whole(out_dir, record):
        return Decision(Action.ALREADY_DONE)
    if state in (AssetState.INTENT, AssetState.IN_DOUBT):
        return Decision(Action.RESOLVE_DOUBT, "an earlier download request may have been charged")
    if _uri_valid(record, now):
        return Decision(Action.TRANSFER)
    if record.spends == 0:
        return Decision(Action.ACQUIRE)
    why = (
        f"finished file {record.path} is missing or changed and its delivery URI expired"
        if state is AssetState.DONE
        else "its delivery URI expired (or was lost) before the file was complete"
    )
    if reacquire_expired:
        return Decision(Action.ACQUIRE, why)
    return Decision(Action.FAIL, reacquire_message(why))
