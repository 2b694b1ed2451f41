-- Reads that cost the same at year six as on an empty database (issue 17,
-- docs/performance.md "Reads at year six"): each list's first and later pages come from
-- an index in the list's order, from where the cursor points, whatever the history.
-- Every index here is paid for on each write of its table, so each is one a read needs.

-- The alert queue of a clinic (GET /api/v1/alerts?clinic=..&status=..): most severe
-- first, then oldest, in the order the list sorts by (the severity's rank negated, so
-- that the cursor is one row comparison the index seeks to). It replaces the index on
-- (clinic_id, status), which is its prefix: one index on alerts in place of the other.
CREATE INDEX alerts_clinic_queue_idx ON alerts (
    clinic_id, status,
    (-(CASE severity WHEN 'info' THEN 0 WHEN 'high' THEN 1 WHEN 'urgent' THEN 2
                     WHEN 'critical' THEN 3 END)),
    first_seen_at, id
);
DROP INDEX alerts_queue_idx;
-- No such index without the clinic (for users granted every clinic): with both, the
-- planner took the clinic-less one for a clinic's later pages when it expected few rows
-- after the cursor, and read every clinic's alerts past it. Across every clinic the open
-- queue is small enough to sort; a list of every clinic's resolved alerts is sorted.
-- A patient's alerts for their timeline (alerts grouped by patient); alerts grouped
-- otherwise are found through the sessions and reports they link.
CREATE INDEX alerts_patient_idx ON alerts (clinic_id, group_key) WHERE group_by = 'patient';

-- Audit search within a clinic (its chain), newest first: without it, the newest
-- entries of every chain are read and the other chains' left out. One more index
-- written by every audited action; the primary key (chain, seq) cannot give the
-- time order.
CREATE INDEX audit_entries_chain_time_idx ON audit_entries (chain, recorded_at, seq);
-- Audit search by object ("who read this patient's timeline, this report"), newest
-- first: without it the whole trail is read for an object seen rarely. Entries about no
-- object (sign-ins, lists) are left out of it.
CREATE INDEX audit_entries_object_idx ON audit_entries (object_type, object_id, recorded_at)
    WHERE object_id IS NOT NULL;
