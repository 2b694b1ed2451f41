-- Each patient's course (issue 15): the network pseudonym linking a patient's sessions
-- across the network's clinics, and the esketamine protocol-frequency rule.
--
-- network_ref is optional: a pseudonym the network assigns (4-64 of A-Z a-z 0-9 -, see
-- sessions/types.py), never a name or a record number. The frequency rule and the
-- patient timeline (patients/) count a patient's sessions at every clinic by it.

ALTER TABLE treatment_sessions ADD COLUMN network_ref text
    CHECK (network_ref ~ '^[A-Za-z0-9-]{4,64}$');
CREATE INDEX treatment_sessions_network_ref_idx ON treatment_sessions (network_ref)
    WHERE network_ref IS NOT NULL;
CREATE INDEX treatment_sessions_patient_dosed_idx
    ON treatment_sessions (clinic_id, patient_ref, dosed_at) WHERE dosed_at IS NOT NULL;

-- Esketamine more often than the label's induction and optimisation schedule: more than
-- 2 sessions in a course-week of weeks 1-4, more than 1 in weeks 5-8. The dose of a
-- session gives it the facts course_week and course_week_sessions (sessions/service.py,
-- patients/course.py); no report carries them.
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition,
                         protected, guidance, ack_minutes)
VALUES ('esketamine-frequency', 1, 'Esketamine sessions more often than the protocol', 'high',
    'An esketamine session more often than twice a week in weeks 1-4 of the patient''s course, or more often than weekly in weeks 5-8 (weeks are 7-day periods from the first esketamine dose; sessions counted at every clinic by network_ref). Source: SPRAVATO prescribing information, section 2 (induction twice weekly in weeks 1-4, once weekly in weeks 5-8).',
    true, '{"kinds": [], "when": {"all": [{"field": "drug", "op": "==", "value": "esketamine_nasal"}, {"any": [{"all": [{"field": "course_week", "op": "<=", "value": 4}, {"field": "course_week_sessions", "op": ">", "value": 2}]}, {"all": [{"field": "course_week", "op": ">=", "value": 5}, {"field": "course_week", "op": "<=", "value": 8}, {"field": "course_week_sessions", "op": ">", "value": 1}]}]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}',
    false,
    'Check the treatment plan with the prescriber before the next session: confirm the schedule, and whether the patient is also treated at another clinic of the network.',
    NULL);

INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, guidance, ack_minutes)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected, r.guidance,
       r.ack_minutes
FROM alert_rules r WHERE r.id = 'esketamine-frequency';
