"""The commands around a run, as functions: plan, status, history, search."""
