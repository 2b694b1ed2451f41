-- What the rules saw of each reading of a treatment session (issue 15: pattern rules
-- count patients as they do for reports): the facts a report carrying the same values
-- would have, written by sessions/service.py just before the rules run on the reading
-- (and again when an amendment corrects it). Pattern rules count these beside reports
-- (alerts/evaluate.py). Readings recorded before this migration are not in it: they
-- raised their single-reading alerts but count in no pattern.

CREATE TABLE session_readings (
    reading_id   uuid PRIMARY KEY,
    session_id   uuid NOT NULL REFERENCES treatment_sessions (id),
    reading      text NOT NULL
        CHECK (reading IN ('checklist', 'observation', 'dose', 'discharge')),
    clinic_id    bigint NOT NULL REFERENCES clinics (id),
    patient_ref  text NOT NULL,
    -- blood_pressure when the reading carries a pressure, else dissociation.
    kind         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    body         jsonb NOT NULL,
    hypertension_reading_grade integer,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- A pattern reads its window of one clinic, or of one patient's linked identities.
CREATE INDEX session_readings_clinic_time_idx ON session_readings (clinic_id, occurred_at);
CREATE INDEX session_readings_patient_time_idx
    ON session_readings (clinic_id, patient_ref, occurred_at);

GRANT SELECT, INSERT, UPDATE ON session_readings TO safetyreport_app;
