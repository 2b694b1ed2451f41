-- Versions of treatment sessions and their observations (issue 15): every change keeps
-- the state it made, and an amendment its reason, as reports keep report_versions.
--
-- A session's version counts the changes to its row: opening it (1), the dose, the
-- discharge and each amendment. Observations are stored once and amended in place, each
-- amendment adding a version here first. Both tables are append-only, like
-- report_versions.

ALTER TABLE treatment_sessions ADD COLUMN version integer NOT NULL DEFAULT 0;
ALTER TABLE session_observations ADD COLUMN version integer NOT NULL DEFAULT 1;

CREATE TABLE treatment_session_versions (
    session_id  uuid NOT NULL REFERENCES treatment_sessions (id),
    version     integer NOT NULL CHECK (version >= 1),
    -- What made it: opened, dosed, discharged, amended (or migrated: the state a
    -- session had when versions began to be kept).
    change      text NOT NULL
        CHECK (change IN ('opened', 'dosed', 'discharged', 'amended', 'migrated')),
    -- The session's fields after the change (sessions/service.py, _STATE).
    state       jsonb NOT NULL,
    reason      text CHECK (reason IS NOT NULL OR change <> 'amended'),
    changed_by  bigint NOT NULL REFERENCES users (id),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, version)
);

CREATE TABLE session_observation_versions (
    observation_id  uuid NOT NULL REFERENCES session_observations (id),
    version         integer NOT NULL CHECK (version >= 1),
    observed_at     timestamptz NOT NULL,
    vitals          jsonb NOT NULL,
    -- Null for the first version (the observation as recorded).
    reason          text CHECK (reason IS NOT NULL OR version = 1),
    changed_by      bigint NOT NULL REFERENCES users (id),
    changed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (observation_id, version)
);

CREATE TRIGGER treatment_session_versions_append_only
    BEFORE UPDATE OR DELETE ON treatment_session_versions
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER treatment_session_versions_no_truncate
    BEFORE TRUNCATE ON treatment_session_versions
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER session_observation_versions_append_only
    BEFORE UPDATE OR DELETE ON session_observation_versions
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER session_observation_versions_no_truncate
    BEFORE TRUNCATE ON session_observation_versions
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- The sessions and observations stored before versions were kept: their state now.
INSERT INTO treatment_session_versions (session_id, version, change, state, changed_by)
SELECT s.id, 1, 'migrated',
       jsonb_build_object(
           'weight_kg', s.weight_kg, 'age_band', s.age_band, 'prescriber', s.prescriber,
           'network_ref', s.network_ref, 'checklist', s.checklist, 'dose_mg', s.dose_mg,
           'dosed_at', s.dosed_at, 'lot', s.lot, 'infusion_minutes', s.infusion_minutes,
           'dose_override_reason', s.dose_override_reason,
           'discharged_at', s.discharged_at, 'discharge', s.discharge),
       s.created_by
FROM treatment_sessions s;
UPDATE treatment_sessions SET version = 1;
INSERT INTO session_observation_versions (observation_id, version, observed_at, vitals, changed_by)
SELECT o.id, 1, o.observed_at, o.vitals, o.created_by FROM session_observations o;

GRANT SELECT, INSERT ON treatment_session_versions, session_observation_versions
    TO safetyreport_app;
GRANT UPDATE ON session_observations TO safetyreport_app;
