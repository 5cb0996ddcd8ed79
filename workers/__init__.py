"""Long-lived Dramatiq workers: one queue per stage (ingest, infer, post-process, publish)."""
