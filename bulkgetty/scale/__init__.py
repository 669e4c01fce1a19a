"""Scale-out: job-array shards, merging shard folders, and the team ledger's commands."""
