-- Treatment sessions (issue 15): the monitored dose, its pre-dose checklist, the timed
-- observations and the discharge. Named treatment_sessions, never "sessions" (that
-- table holds sign-in sessions).
--
-- The checklist's blood pressure, each observation and the discharge reading run through
-- the same rule engine as reports (alerts/evaluate.py); the alerts they raise or join are
-- linked to the session's reading in alert_session_readings, as reports' are in
-- alert_reports. The discharge override raises the new default rule discharge-override.

CREATE TABLE treatment_sessions (
    id                   uuid PRIMARY KEY,
    clinic_id            bigint NOT NULL REFERENCES clinics (id),
    patient_ref          text NOT NULL,
    drug                 text NOT NULL,
    weight_kg            double precision,
    age_band             text CHECK (age_band IN ('under_65', '65_and_over')),
    prescriber           text,
    -- systolic, diastolic, fasting, cns_depressants, pregnancy_possible,
    -- transport_arranged: as validated (sessions/types.py).
    checklist            jsonb NOT NULL,
    dose_mg              double precision,
    dosed_at             timestamptz,
    lot                  text,
    infusion_minutes     integer,
    -- The reason a nurse dosed despite an open hold (also on the alert itself).
    dose_override_reason text,
    discharged_at        timestamptz,
    -- moaa_s, systolic, diastolic, escort, override_reason (if any), unmet criteria.
    discharge            jsonb,
    created_by           bigint NOT NULL REFERENCES users (id),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((dose_mg IS NULL) = (dosed_at IS NULL)),
    CHECK ((discharged_at IS NULL) = (discharge IS NULL))
);
CREATE INDEX treatment_sessions_clinic_created_idx
    ON treatment_sessions (clinic_id, created_at DESC, id DESC);
CREATE INDEX treatment_sessions_created_idx ON treatment_sessions (created_at DESC, id DESC);
CREATE INDEX treatment_sessions_clinic_patient_idx ON treatment_sessions (clinic_id, patient_ref);

CREATE TABLE session_observations (
    id           uuid PRIMARY KEY,
    session_id   uuid NOT NULL REFERENCES treatment_sessions (id),
    observed_at  timestamptz NOT NULL,
    -- systolic, diastolic, pulse, respiratory_rate, spo2, moaa_s, cadss_total: those given.
    vitals       jsonb NOT NULL,
    created_by   bigint NOT NULL REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_observations_session_idx ON session_observations (session_id, observed_at);

-- An alert raised or joined by a reading of a session: its checklist (reading_id is the
-- session's id), an observation (the observation's id), its dose or its discharge.
CREATE TABLE alert_session_readings (
    alert_id        uuid NOT NULL REFERENCES alerts (id),
    session_id      uuid NOT NULL REFERENCES treatment_sessions (id),
    reading         text NOT NULL CHECK (reading IN ('checklist', 'observation', 'dose', 'discharge')),
    reading_id      uuid NOT NULL,
    trigger_values  jsonb NOT NULL DEFAULT '{}',
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, reading_id)
);
CREATE INDEX alert_session_readings_session_idx ON alert_session_readings (session_id);

GRANT SELECT, INSERT, UPDATE ON treatment_sessions TO safetyreport_app;
GRANT SELECT, INSERT ON session_observations, alert_session_readings TO safetyreport_app;

-- Discharging an esketamine patient before the fitness-to-leave criteria are met, with a
-- recorded reason (docs/clinical-rules.md, Treatment sessions).
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition,
                         protected, guidance, ack_minutes)
VALUES ('discharge-override', 1, 'Discharged before the fitness-to-leave criteria were met', 'high',
    'An esketamine patient discharged with an override although a fitness-to-leave criterion was unmet (fewer than 120 minutes since the dose, no blood pressure 35-50 minutes after it, MOAA/S below 5, blood pressure above the hold level, no escort). Source: Spravato REMS (monitoring for at least 2 hours and until the patient is ready to leave); Spravato label (blood pressure about 40 minutes after the dose).',
    true, '{"kinds": [], "when": {"field": "discharge_override", "op": "==", "value": true}, "pattern": null, "group_by": "patient", "dea_deadlines": false}',
    false,
    'Review the override with the nurse and the prescriber today: check the reason, that the patient reached home safely, and record any adverse event as a report.',
    NULL);

INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, guidance, ack_minutes)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected, r.guidance,
       r.ack_minutes
FROM alert_rules r WHERE r.id = 'discharge-override';
