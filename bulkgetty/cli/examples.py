"""The examples and exit statuses at the end of each command's `--help` (cli.py's epilogs).

Apart from cli.py so that the command layer stays readable; the text is the user's first
documentation after the README, so it says what each exit status means.
"""

from __future__ import annotations

__all__ = (
    "HISTORY_EXAMPLES",
    "MERGE_EXAMPLES",
    "PLAN_EXAMPLES",
    "RUN_EXAMPLES",
    "SEARCH_EXAMPLES",
    "STATUS_EXAMPLES",
)

RUN_EXAMPLES = """\
examples:
  bulkgetty run manifests/sample.csv --out ./downloads --sandbox
  GETTY_API_KEY=... GETTY_API_SECRET=... bulkgetty run assets.csv --out /data/getty
  bulkgetty run ids.txt --out out --asset-type video --max-downloads 100 --json

On a terminal: live progress, then a summary table. Not a terminal, or --quiet: one summary
line. --json: one event per line (schema in the README). Ctrl-C stops cleanly (a second one
at once); run the same command again to resume.

exit status: 0 all on disk; 3 some wait for quota (run again later);
             1 some failed for good (see the report); 2 could not start, nothing spent
             (bad manifest or options, credentials refused, the API cannot be reached).
"""

PLAN_EXAMPLES = """\
examples:
  bulkgetty plan manifests/sample.csv --sandbox
  bulkgetty plan assets.csv --out /data/getty --max-downloads 500
  bulkgetty plan assets.csv --json
  bulkgetty plan assets.csv --shards 64 --parallel 16       # per-shard caps for a job array

Reads the manifest and GET /v3/products (and the journal of --out DIR); spends nothing.
exit status: 0 the run fits; 3 some assets would wait for quota;
             2 bad manifest or options, credentials refused, or the API cannot be reached
               (each connect failure is shown on stderr; it gives up within a minute).
"""

STATUS_EXAMPLES = """\
examples:
  bulkgetty status ./downloads
  bulkgetty status /data/getty --verify
  bulkgetty status /data/getty --json

Offline: reads DIR/.bulkgetty/journal.sqlite only (safe while a run is going).
exit status: 0; 1 when --verify finds a finished file missing or changed; 2 no journal.
"""

HISTORY_EXAMPLES = """\
examples:
  bulkgetty history --out last30days.csv
  bulkgetty history --date-from 2026-01-01 --date-to 2026-03-31 --product-type premiumaccess \\
      --out q1.csv
  bulkgetty history --company --out team.jsonl

Reads every page of GET /v3/downloads; each asset once, with the product and size bought.
The manifest format follows --out's extension; `bulkgetty run` accepts it as written.
"""

SEARCH_EXAMPLES = """\
examples:
  bulkgetty search "mountain lake" --out lakes.csv --limit 50
  bulkgetty search "city night" --asset-type video --out clips.jsonl

Each result with the product_type (and product_id) of its largest download.
"""

MERGE_EXAMPLES = """\
examples:
  bulkgetty merge out/shard-* --manifest assets.csv --out out/merged
"""
