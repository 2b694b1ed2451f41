-- Ingest closer to the limit (issue 17, docs/performance.md).
--
-- An Idempotency-Key is claimed in the statement that takes its lock (a placeholder row)
-- and its response stored into that row before the commit (idempotency.py); a key whose
-- time is up is taken over in place.
GRANT UPDATE ON idempotency_keys TO safetyreport_app;
