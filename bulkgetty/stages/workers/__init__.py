"""Worker processes for the transfer stage: every core moves bytes, one process spends.

The main process keeps the purchases, the journal (its single writer), the report, the
events, the retry and re-buy decisions and the names granted to resumes; N worker processes
run `transfer` calls (`pool.WorkerPool.transfer` has its signature, so `AssetSteps` calls
one or the other). `wire` is what crosses the pipes, `child` a worker process, `names` why
files still never share a name across processes.

Nothing is imported here: a worker process imports `child` and what it needs, not the pool.
"""
