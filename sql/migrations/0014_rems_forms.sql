-- The SPRAVATO REMS Patient Monitoring Form of each esketamine treatment session, and
-- the two alerts the periodic session check raises (rems/checks.py): a form still not
-- submitted when due (rems-form-overdue) and a session still open 4 hours after its
-- dose (session-open-too-long). Each is raised once: the row it is about records when
-- the check claimed it (rems_forms.overdue_checked_at,
-- treatment_sessions.open_too_long_checked_at) in the transaction that raises the alert
-- (none is raised where the clinic disabled the rule; the row is not checked again).
--
-- A form is made when its session is discharged (the monitoring is over and the form's
-- content complete) and is due 7 days after the dose (after the session's opening when
-- no dose was recorded). Its content is read from the session when shown, so an adverse
-- event reported after the discharge still appears; at submission the content sent is
-- kept with the REMS confirmation number.

CREATE TABLE rems_forms (
    id                   uuid PRIMARY KEY,
    session_id           uuid NOT NULL UNIQUE REFERENCES treatment_sessions (id),
    clinic_id            bigint NOT NULL REFERENCES clinics (id),
    due_at               timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    submitted_at         timestamptz,
    submitted_by         bigint REFERENCES users (id),
    confirmation_number  text,
    -- The prefilled content as it was when submitted.
    submitted_content    jsonb,
    overdue_checked_at   timestamptz,
    CHECK ((submitted_at IS NULL) = (confirmation_number IS NULL)),
    CHECK ((submitted_at IS NULL) = (submitted_by IS NULL))
);
CREATE INDEX rems_forms_clinic_due_idx ON rems_forms (clinic_id, due_at, id);
CREATE INDEX rems_forms_due_idx ON rems_forms (due_at, id);
CREATE INDEX rems_forms_overdue_unalerted_idx ON rems_forms (due_at)
    WHERE submitted_at IS NULL AND overdue_checked_at IS NULL;

ALTER TABLE treatment_sessions ADD COLUMN open_too_long_checked_at timestamptz;
CREATE INDEX treatment_sessions_open_dosed_idx ON treatment_sessions (dosed_at)
    WHERE discharged_at IS NULL AND dosed_at IS NOT NULL AND open_too_long_checked_at IS NULL;

-- The two alerts link to their session as its readings do: the form (reading_id is the
-- form's id) and the session left open (reading_id derived from the session's id).
ALTER TABLE alert_session_readings DROP CONSTRAINT alert_session_readings_reading_check;
ALTER TABLE alert_session_readings ADD CONSTRAINT alert_session_readings_reading_check
    CHECK (reading IN ('checklist', 'observation', 'dose', 'discharge', 'rems_form', 'open_too_long'));

GRANT SELECT, INSERT, UPDATE ON rems_forms TO safetyreport_app;

-- Esketamine sessions discharged before this migration get their form too.
INSERT INTO rems_forms (id, session_id, clinic_id, due_at)
SELECT gen_random_uuid(), s.id, s.clinic_id, coalesce(s.dosed_at, s.created_at) + interval '7 days'
FROM treatment_sessions s
WHERE s.drug = 'esketamine_nasal' AND s.discharged_at IS NOT NULL;

INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition,
                         protected, guidance, ack_minutes)
VALUES
('rems-form-overdue', 1, 'REMS Patient Monitoring Form overdue', 'high',
    'The SPRAVATO REMS Patient Monitoring Form of an esketamine treatment session was not recorded as submitted within 7 days of the session. Source: SPRAVATO REMS (a Patient Monitoring Form is completed and submitted for each treatment session).',
    true, '{"kinds": [], "when": {"field": "rems_form_overdue", "op": "==", "value": true}, "pattern": null, "group_by": "report", "dea_deadlines": false}',
    false,
    'Complete the Patient Monitoring Form in the SPRAVATO REMS portal today from the form''s prefilled content, then record its confirmation number here (POST /api/v1/rems/forms/{id}/submission).',
    NULL),
('session-open-too-long', 1, 'Treatment session still open 4 hours after the dose', 'high',
    'A treatment session still not discharged 4 hours after its dose: the patient may still be in the clinic unwell, or left without a discharge being recorded. Source: issue 15; SPRAVATO REMS (monitoring for at least 2 hours and until the patient is ready to leave).',
    true, '{"kinds": [], "when": {"field": "session_open_too_long", "op": "==", "value": true}, "pattern": null, "group_by": "report", "dea_deadlines": false}',
    false,
    'Find the patient now: if still in the clinic, reassess and record observations; if already gone, record the discharge with what is known and call the patient.',
    NULL);

INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, guidance, ack_minutes)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected, r.guidance,
       r.ack_minutes
FROM alert_rules r WHERE r.id IN ('rems-form-overdue', 'session-open-too-long');
