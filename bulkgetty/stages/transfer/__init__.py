"""The delivery stage: GET one signed delivery URI into `NAME.part`, verify it, rename it.

One room per concept: `records` (what an attempt is asked, returns and leaves for resume),
`redirects` (every hop checked, no secret sent on), `attempt` (names, the single stream and
resume; its docstring holds the stage's reasons), `adaptive` (a large file's stream split into
ranges on the way, only when it is slow), `segments` (byte ranges over several
connections), `tracker` (what an attempt may claim to the journal, and when it must forget
every byte); response checks are in `stages/validate.py`.
"""

from bulkgetty.stages.transfer.attempt import transfer
from bulkgetty.stages.transfer.records import (
    Segment,
    TransferOptions,
    TransferResult,
    TransferState,
)
from bulkgetty.stages.validate import redact_url

__all__ = (
    "Segment",
    "TransferOptions",
    "TransferResult",
    "TransferState",
    "redact_url",
    "transfer",
)
