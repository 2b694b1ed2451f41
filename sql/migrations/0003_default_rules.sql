-- The default rule set: one rule per row of the default-rules table in docs/clinical-rules.md.
-- Rules are data: admins and safety officers change them through /api/v1/rules, and
-- every change makes a new version. Thresholds marked as conventions are configurable
-- that way and say so in their descriptions.

INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('bp-pre-dose-hold', 1, 'Pre-dose blood pressure above the hold criteria', 'high',
    'Pre-dose reading above 140 systolic (150 if the patient is 65 or over) or above 90 diastolic: evaluate before dosing. Source: esketamine phase 3 trials held the dose above 140/90 (above 150 systolic over 65); Spravato REMS. The table''s level is ''warning'', raised here as high.',
    true, '{"kinds": ["blood_pressure"], "when": {"all": [{"field": "phase", "op": "==", "value": "pre_dose"}, {"any": [{"field": "diastolic", "op": ">", "value": 90}, {"field": "systolic", "op": ">", "value": 150}, {"all": [{"field": "systolic", "op": ">", "value": 140}, {"not": {"field": "age_band", "op": "==", "value": "65_and_over"}}]}]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('bp-ctcae-grade-3', 1, 'Hypertension CTCAE grade 3', 'high',
    'Systolic 160 or more, or diastolic 100 or more (and not markedly abnormal or a crisis, which have their own rules). Source: CTCAE v5.0 Hypertension grade 3.',
    true, '{"kinds": ["blood_pressure"], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 160}, {"field": "diastolic", "op": ">=", "value": 100}]}, {"not": {"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 110}]}}, {"not": {"any": [{"field": "systolic", "op": ">", "value": 180}, {"field": "diastolic", "op": ">", "value": 120}, {"field": "symptoms", "op": "not_empty"}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('bp-markedly-abnormal', 1, 'Markedly abnormal blood pressure', 'urgent',
    'Systolic 180 or more, or diastolic 110 or more, without crisis criteria. Source: Doherty et al., CNS Drugs 2020 (''markedly abnormal'' in the esketamine trials).',
    true, '{"kinds": ["blood_pressure"], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 110}]}, {"not": {"any": [{"field": "systolic", "op": ">", "value": 180}, {"field": "diastolic", "op": ">", "value": 120}, {"field": "symptoms", "op": "not_empty"}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('bp-hypertensive-crisis', 1, 'Hypertensive crisis', 'critical',
    'Systolic above 180 or diastolic above 120, or any crisis symptom (severe headache, chest pain, shortness of breath, visual change, neurological deficit, confusion, seizure) with any reading. Source: ACC/AHA 2017 hypertensive urgency and emergency; CTCAE v5.0 grade 4.',
    true, '{"kinds": ["blood_pressure"], "when": {"any": [{"field": "systolic", "op": ">", "value": 180}, {"field": "diastolic", "op": ">", "value": 120}, {"field": "symptoms", "op": "not_empty"}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('sedation-moaa-s-3', 1, 'Sedation: MOAA/S 3 or 2', 'high',
    'MOAA/S of 3 (responds only to loud or repeated name) or 2. Source: MOAA/S scale levels; the threshold of 3 is a convention.',
    true, '{"kinds": ["dissociation"], "when": {"all": [{"field": "moaa_s", "op": "<=", "value": 3}, {"field": "moaa_s", "op": ">=", "value": 2}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('sedation-moaa-s-1', 1, 'Deep sedation: MOAA/S 1', 'urgent',
    'MOAA/S of 1 (responds only to a painful squeeze). Source: MOAA/S scale levels; the threshold of 1 is a convention.',
    true, '{"kinds": ["dissociation"], "when": {"field": "moaa_s", "op": "==", "value": 1}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('sedation-loss-of-consciousness', 1, 'Loss of consciousness: MOAA/S 0', 'critical',
    'MOAA/S of 0, no response: loss of consciousness in the Spravato label.',
    true, '{"kinds": ["dissociation"], "when": {"field": "moaa_s", "op": "==", "value": 0}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('respiratory-depression', 1, 'Respiratory depression', 'critical',
    'SpO2 below 90 % or respiratory depression observed. Source: Spravato REMS risk of respiratory depression; the 90 % threshold is a convention.',
    true, '{"kinds": ["dissociation"], "when": {"any": [{"field": "spo2", "op": "<", "value": 90}, {"field": "respiratory_depression", "op": "==", "value": true}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('dissociation-present', 1, 'Dissociation present (CADSS above 4)', 'info',
    'CADSS-23 total above 4. Source: esketamine post-hoc analyses split at a total above 4.',
    true, '{"kinds": ["dissociation"], "when": {"field": "cadss_total", "op": ">", "value": 4}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('not-resolved-at-120-minutes', 1, 'Not resolved 120 minutes after the dose', 'high',
    'Sedation or dissociation not resolved 120 minutes or more after the dose: the patient must stay monitored until it has. Source: Spravato REMS (at least 2 hours and until resolved).',
    true, '{"kinds": ["dissociation"], "when": {"all": [{"field": "resolved", "op": "==", "value": false}, {"field": "minutes_after_dose", "op": ">=", "value": 120}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('serious-adverse-event', 1, 'Serious adverse event: reportable case', 'critical',
    'Any seriousness criterion (death, life-threatening, hospitalisation, disability, congenital anomaly, other medically important event). Source: ICH E2B; 21 CFR 312.32.',
    true, '{"kinds": [], "when": {"field": "seriousness", "op": "not_empty"}, "pattern": null, "group_by": "patient", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('controlled-substance-theft-or-loss', 1, 'Theft or loss of a controlled substance', 'critical',
    'Theft or loss of ketamine or esketamine (DEA Schedule III): written notice to the DEA field office within one business day of discovery, and DEA Form 106 within 45 days. Source: 21 CFR 1301.76(b).',
    true, '{"kinds": ["misuse_concern"], "when": {"field": "concern_type", "op": "in", "value": ["theft", "loss"]}, "pattern": null, "group_by": "clinic", "dea_deadlines": true}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('inventory-discrepancy', 1, 'Inventory discrepancy', 'high',
    'Any inventory count discrepancy of a controlled substance. Source: DEA guidance on recordkeeping (21 CFR 1304.04).',
    true, '{"kinds": ["misuse_concern"], "when": {"field": "concern_type", "op": "==", "value": "inventory_discrepancy"}, "pattern": null, "group_by": "clinic", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('pattern-of-discrepancies', 1, 'Pattern of inventory discrepancies', 'urgent',
    '3 or more inventory discrepancies at one clinic within 30 days: a continuing pattern of small discrepancies counts as significant loss. Source: DEA guidance; the 30-day window is a convention.',
    true, '{"kinds": ["misuse_concern"], "when": {"field": "concern_type", "op": "==", "value": "inventory_discrepancy"}, "pattern": {"min_count": 3, "window_days": 30}, "group_by": "clinic", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('pattern-blood-pressure-cluster', 1, 'Cluster of markedly raised blood pressure', 'urgent',
    '3 or more blood-pressure reports with systolic 180 or more at one clinic within 7 days. Source: convention.',
    true, '{"kinds": ["blood_pressure"], "when": {"field": "systolic", "op": ">=", "value": 180}, "pattern": {"min_count": 3, "window_days": 7}, "group_by": "clinic", "dea_deadlines": false}');
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition)
VALUES ('pattern-patient-repeated-urgent', 1, 'Repeated urgent events for one patient', 'urgent',
    'The same patient with 2 or more urgent or critical events within 30 days. Source: convention.',
    true, '{"kinds": [], "when": {"field": "alert_severity", "op": "in", "value": ["urgent", "critical"]}, "pattern": {"min_count": 2, "window_days": 30}, "group_by": "patient", "dea_deadlines": false}');

INSERT INTO alert_rule_versions (rule_id, version, name, severity, description, enabled, definition, changed_by)
SELECT id, version, name, severity, description, enabled, definition, 'system:migration' FROM alert_rules;
