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

from bulkgetty.stages.files.names import (
    MAX_NAME_BYTES,
    PART_SUFFIX,
    extension_for,
    parse_content_disposition,
    safe_name,
)
from bulkgetty.stages.files.parts import (
    HashFollower,
    NewPart,
    OutputDir,
    PartFile,
    SequentialWriter,
    open_part,
    sha256_file,
)
from bulkgetty.stages.files.writes import WRITE_BATCH

__all__ = (
    "MAX_NAME_BYTES",
    "PART_SUFFIX",
    "WRITE_BATCH",
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
