-- The fitness-to-leave criteria as data, like the rules (issue 15): one row per
-- criterion of a drug, its kind of check and the numbers it checks with, its place in a
-- 422 (field and rule) and its sources (docs/clinical-rules.md#fitness-to-leave-esketamine,
-- whose table tests/test_clinical_rules_doc.py compares with these rows). The checks are
-- code (sessions/criteria.py); their numbers are here, nowhere else. The blood pressure's
-- hold level is the pre-dose hold rule's (below_hold_level evaluates the hold rules in
-- force), so it has no number of its own here.
CREATE TABLE discharge_criteria (
    drug      text NOT NULL,
    rule      text NOT NULL,
    field     text NOT NULL,
    -- minutes_since_dose {"minutes"}, blood_pressure_between {"from_minutes",
    -- "to_minutes", "due_minutes": when the flowsheet's timer calls for it},
    -- blood_pressure_at_discharge, below_hold_level, moaa_s_at_least {"value"}, escort.
    check_kind text NOT NULL CHECK (check_kind IN (
        'minutes_since_dose', 'blood_pressure_between', 'blood_pressure_at_discharge',
        'below_hold_level', 'moaa_s_at_least', 'escort')),
    params    jsonb NOT NULL DEFAULT '{}',
    -- What the nurse reads: the criterion met, and the 422's message when it is not.
    label     text NOT NULL,
    message   text NOT NULL,
    sources   text NOT NULL,
    position  integer NOT NULL,
    PRIMARY KEY (drug, rule)
);

INSERT INTO discharge_criteria (drug, rule, field, check_kind, params, label, message, sources, position)
VALUES
    ('esketamine_nasal', 'monitored_120_minutes', 'discharged_at', 'minutes_since_dose',
     '{"minutes": 120}', 'At least 120 minutes since the dose',
     'fewer than 120 minutes since the dose', 'spravato-rems, issue-15', 1),
    ('esketamine_nasal', 'blood_pressure_35_to_50_minutes', 'observations', 'blood_pressure_between',
     '{"from_minutes": 35, "to_minutes": 50, "due_minutes": 40}',
     'A blood pressure between 35 and 50 minutes after the dose',
     'no blood pressure observed between 35 and 50 minutes after the dose',
     'spravato-label, issue-15', 2),
    ('esketamine_nasal', 'required_at_discharge', 'systolic', 'blood_pressure_at_discharge',
     '{}', 'A blood pressure at discharge', 'no blood pressure at discharge',
     'spravato-label, issue-15', 3),
    ('esketamine_nasal', 'above_hold_level', 'systolic', 'below_hold_level', '{}',
     'Blood pressure at discharge not above the pre-dose hold level',
     'blood pressure at discharge above the pre-dose hold level', 'phase3-hold, spravato-rems', 4),
    ('esketamine_nasal', 'moaa_s_5', 'moaa_s', 'moaa_s_at_least', '{"value": 5}',
     'MOAA/S 5 at discharge', 'MOAA/S below 5 at discharge', 'moaa-s, spravato-rems', 5),
    ('esketamine_nasal', 'escort', 'escort', 'escort', '{}',
     'Someone accompanies the patient home', 'nobody recorded to accompany the patient home',
     'spravato-label', 6);

GRANT SELECT ON discharge_criteria TO safetyreport_app;
