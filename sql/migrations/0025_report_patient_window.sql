-- Ingest that does not slow down with history, and closer to the limit (issue 17,
-- docs/performance.md).
--
-- A pattern rule grouped by patient reads one patient's reports in its window (the
-- repeated-urgent rule: 30 days): through (clinic_id, patient_ref) alone it read every
-- report of the patient, all years of them, and filtered them by time. With the time in
-- the index it reads only the window. It replaces the index on (clinic_id, patient_ref),
-- of which it is an extension (any query that used that one can use this one).
CREATE INDEX reports_clinic_patient_occurred_idx ON reports (clinic_id, patient_ref, occurred_at);
DROP INDEX reports_clinic_patient_idx;

-- An Idempotency-Key is claimed in the statement that takes its lock (a placeholder row)
-- and its response stored into that row before the commit (idempotency.py); a key whose
-- time is up is taken over in place.
GRANT UPDATE ON idempotency_keys TO safetyreport_app;
