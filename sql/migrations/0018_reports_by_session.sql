-- The reports of a treatment session (a REMS form's adverse events, a page of forms at a
-- time): the versions that name a session, found by it without reading a clinic's
-- every report. Partial: most reports name no session, and cost nothing here.
CREATE INDEX report_versions_session_idx ON report_versions ((body ->> 'session_id'))
    WHERE body ? 'session_id';
