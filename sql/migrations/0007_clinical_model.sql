-- The clinical model a medical director signs off (docs/clinical-rules.md).
--
-- New report kinds: adverse_event, and stock_incident, which concerns the clinic's
-- controlled substances and no patient (so it has no patient_ref). The grade derived
-- from one reading is named for what it is: the hypertension reading grade. The default
-- rules change and grow; each change is a new version by migration.

ALTER TABLE reports DROP CONSTRAINT reports_kind_check;
ALTER TABLE reports ADD CONSTRAINT reports_kind_check CHECK (kind IN (
    'blood_pressure', 'dissociation', 'adverse_event', 'misuse_concern', 'stock_incident'));
ALTER TABLE reports ALTER COLUMN patient_ref DROP NOT NULL;
ALTER TABLE reports ADD CONSTRAINT reports_patient_ref_check
    CHECK ((kind = 'stock_incident') = (patient_ref IS NULL));

ALTER TABLE report_versions RENAME COLUMN ctcae_grade TO hypertension_reading_grade;

-- Rules that named the old fact name the new one (a new version each).
UPDATE alert_rules
SET definition = replace(definition::text, '"field": "ctcae_grade"',
                         '"field": "hypertension_reading_grade"')::jsonb,
    version = version + 1, updated_at = now()
WHERE definition::text LIKE '%"field": "ctcae_grade"%';

-- The default rules (network rules; a clinic's overrides stay as they are).
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Pre-dose blood pressure above the hold criteria', severity = 'high', enabled = true, protected = false,
    description = 'Pre-dose reading above 140 systolic (150 if the patient is 65 or over) or above 90 diastolic, on any report that carries a pre-dose pressure: evaluate before dosing. Source: esketamine phase 3 trials held the dose above 140/90 (above 150 systolic over 65); Spravato REMS.',
    definition = '{"kinds": [], "when": {"all": [{"field": "phase", "op": "==", "value": "pre_dose"}, {"any": [{"field": "diastolic", "op": ">", "value": 90}, {"field": "systolic", "op": ">", "value": 150}, {"all": [{"field": "systolic", "op": ">", "value": 140}, {"not": {"field": "age_band", "op": "==", "value": "65_and_over"}}]}]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'bp-pre-dose-hold';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Hypertension CTCAE grade 3 reading', severity = 'high', enabled = true, protected = false,
    description = 'Systolic 160 or more, or diastolic 100 or more, below the markedly abnormal range (which has its own rules). Source: CTCAE v5.0 Hypertension grade 3, applied to one reading.',
    definition = '{"kinds": [], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 160}, {"field": "diastolic", "op": ">=", "value": 100}]}, {"not": {"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 110}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'bp-ctcae-grade-3';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Markedly abnormal blood pressure', severity = 'urgent', enabled = true, protected = false,
    description = 'Diastolic 110 or more with systolic below 180 and diastolic below 120: markedly abnormal in the esketamine trials (180 or more systolic, or 110 or more diastolic). At 180 systolic or 120 diastolic the severe-hypertension and hypertensive-emergency rules take over. Recheck; no discharge. Source: Doherty et al., CNS Drugs 2020.',
    definition = '{"kinds": [], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 110}]}, {"not": {"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 120}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'bp-markedly-abnormal';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Hypertensive emergency', severity = 'critical', enabled = true, protected = true,
    description = 'Systolic 180 or more or diastolic 120 or more together with a target-organ symptom (severe headache, chest pain, shortness of breath, visual change, neurological deficit, confusion, seizure). Source: ACC/AHA 2017 hypertensive emergency; CTCAE v5.0 grade 4.',
    definition = '{"kinds": [], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 120}]}, {"field": "symptoms", "op": "not_empty"}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'bp-hypertensive-crisis';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Respiratory depression', severity = 'critical', enabled = true, protected = true,
    description = 'Respiratory rate below 8 per minute, SpO2 below 90 %, or respiratory depression observed. Source: Spravato label boxed warning (respiratory depression); CTCAE v5.0 Hypoxia; the thresholds of 8 and 90 % are conventions.',
    definition = '{"kinds": [], "when": {"any": [{"field": "respiratory_rate", "op": "<", "value": 8}, {"field": "spo2", "op": "<", "value": 90}, {"field": "respiratory_depression", "op": "==", "value": true}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'respiratory-depression';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Sedation: MOAA/S 3 or 2', severity = 'high', enabled = true, protected = false,
    description = 'MOAA/S of 3 (responds only to loud or repeated name) or 2, on any report that carries it (a dissociation report, or vomiting). Source: MOAA/S scale levels; the threshold of 3 is a convention.',
    definition = '{"kinds": [], "when": {"all": [{"field": "moaa_s", "op": "<=", "value": 3}, {"field": "moaa_s", "op": ">=", "value": 2}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'sedation-moaa-s-3';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Deep sedation: MOAA/S 1', severity = 'urgent', enabled = true, protected = false,
    description = 'MOAA/S of 1 (responds only to a painful squeeze), on any report that carries it. Source: MOAA/S scale levels; the threshold of 1 is a convention.',
    definition = '{"kinds": [], "when": {"field": "moaa_s", "op": "==", "value": 1}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'sedation-moaa-s-1';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Loss of consciousness: MOAA/S 0', severity = 'critical', enabled = true, protected = false,
    description = 'MOAA/S of 0, no response, on any report that carries it: loss of consciousness in the Spravato label.',
    definition = '{"kinds": [], "when": {"field": "moaa_s", "op": "==", "value": 0}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'sedation-loss-of-consciousness';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Dissociation present (CADSS above 4)', severity = 'info', enabled = false, protected = false,
    description = 'CADSS-23 total above 4. Expected after a dose: counted, not queued, so this rule is disabled by default (the score stays in the report and the patient''s history). Source: esketamine post-hoc analyses split at a total above 4; domain reference, second edition.',
    definition = '{"kinds": ["dissociation"], "when": {"field": "cadss_total", "op": ">", "value": 4}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'dissociation-present';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Serious adverse event: reportable case', severity = 'critical', enabled = true, protected = false,
    description = 'Any seriousness criterion (death, life-threatening, hospitalisation, disability, congenital anomaly, other medically important event). A marketed product''s serious event goes to the manufacturer or to FDA MedWatch (Form 3500); 21 CFR 312.32 applies to IND studies. Source: ICH E2B; FDA Form 3500.',
    definition = '{"kinds": [], "when": {"field": "seriousness", "op": "not_empty"}, "pattern": null, "group_by": "patient", "dea_deadlines": false}'
WHERE id = 'serious-adverse-event';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Theft or loss of a controlled substance', severity = 'critical', enabled = true, protected = true,
    description = 'Theft or loss of ketamine or esketamine (DEA Schedule III), as a stock incident (or a misuse concern filed before stock incidents existed): written notice to the DEA field office within one business day of discovery, and DEA Form 106 within 45 days. Source: 21 CFR 1301.76(b).',
    definition = '{"kinds": ["misuse_concern", "stock_incident"], "when": {"any": [{"field": "incident_type", "op": "in", "value": ["theft", "loss"]}, {"field": "concern_type", "op": "in", "value": ["theft", "loss"]}]}, "pattern": null, "group_by": "clinic", "dea_deadlines": true}'
WHERE id = 'controlled-substance-theft-or-loss';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Inventory discrepancy', severity = 'high', enabled = true, protected = false,
    description = 'Any inventory count discrepancy of a controlled substance. Source: DEA guidance on recordkeeping (21 CFR 1304.04).',
    definition = '{"kinds": ["misuse_concern", "stock_incident"], "when": {"any": [{"field": "incident_type", "op": "==", "value": "inventory_discrepancy"}, {"field": "concern_type", "op": "==", "value": "inventory_discrepancy"}]}, "pattern": null, "group_by": "clinic", "dea_deadlines": false}'
WHERE id = 'inventory-discrepancy';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Pattern of inventory discrepancies', severity = 'urgent', enabled = true, protected = false,
    description = '3 or more inventory discrepancies at one clinic within 30 days: a continuing pattern of small discrepancies counts as significant loss. Source: DEA guidance; the 30-day window is a convention.',
    definition = '{"kinds": ["misuse_concern", "stock_incident"], "when": {"any": [{"field": "incident_type", "op": "==", "value": "inventory_discrepancy"}, {"field": "concern_type", "op": "==", "value": "inventory_discrepancy"}]}, "pattern": {"min_count": 3, "window_days": 30}, "group_by": "clinic", "dea_deadlines": false}'
WHERE id = 'pattern-of-discrepancies';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    name = 'Cluster of markedly raised blood pressure', severity = 'urgent', enabled = true, protected = false,
    description = 'Post-dose readings with systolic 180 or more from 3 or more distinct patients at one clinic within 7 days (re-checks of one patient and pre-dose readings are not a cluster). Source: domain reference, second edition (clusters count distinct patients, post-dose readings only); the numbers are a convention.',
    definition = '{"kinds": [], "when": {"all": [{"field": "phase", "op": "==", "value": "post_dose"}, {"field": "systolic", "op": ">=", "value": 180}]}, "pattern": {"min_count": 3, "window_days": 7, "count": "patients"}, "group_by": "clinic", "dea_deadlines": false}'
WHERE id = 'pattern-blood-pressure-cluster';
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('bp-severe-hypertension', 1, 'Severe hypertension', 'urgent',
    'Systolic 180 or more or diastolic 120 or more without a target-organ symptom: recheck within minutes; no discharge. Source: ACC/AHA 2017 (severe hypertension, formerly hypertensive urgency).',
    true, '{"kinds": [], "when": {"all": [{"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 120}]}, {"field": "symptoms", "op": "empty"}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('target-organ-symptom', 1, 'Target-organ symptom', 'critical',
    'A target-organ symptom (severe headache, chest pain, shortness of breath, visual change, neurological deficit, confusion, seizure) below 180 systolic and 120 diastolic, or without a pressure: an event of its own, not a hypertension grade. Source: ACC/AHA 2017; domain reference, second edition.',
    true, '{"kinds": [], "when": {"all": [{"field": "symptoms", "op": "not_empty"}, {"not": {"any": [{"field": "systolic", "op": ">=", "value": 180}, {"field": "diastolic", "op": ">=", "value": 120}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', true);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('hypotension', 1, 'Hypotension', 'high',
    'Systolic below 90 or diastolic below 60 (without severe hypotension or syncope, which are urgent). Source: CTCAE v5.0 Hypotension; the thresholds are a convention.',
    true, '{"kinds": [], "when": {"all": [{"any": [{"field": "systolic", "op": "<", "value": 90}, {"field": "diastolic", "op": "<", "value": 60}]}, {"not": {"any": [{"field": "systolic", "op": "<", "value": 80}, {"field": "syncope", "op": "==", "value": true}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('hypotension-severe', 1, 'Severe hypotension or syncope', 'urgent',
    'Systolic below 80, or syncope reported. Source: CTCAE v5.0 Hypotension; the threshold is a convention.',
    true, '{"kinds": [], "when": {"any": [{"field": "systolic", "op": "<", "value": 80}, {"field": "syncope", "op": "==", "value": true}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('heart-rate', 1, 'Heart rate out of range', 'high',
    'Pulse below 50 or above 130 per minute (without the urgent range). Source: convention (domain reference, second edition).',
    true, '{"kinds": [], "when": {"all": [{"any": [{"field": "pulse", "op": "<", "value": 50}, {"field": "pulse", "op": ">", "value": 130}]}, {"not": {"any": [{"field": "pulse", "op": "<", "value": 40}, {"field": "pulse", "op": ">", "value": 150}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('heart-rate-severe', 1, 'Heart rate far out of range', 'urgent',
    'Pulse below 40 or above 150 per minute. Source: convention (domain reference, second edition).',
    true, '{"kinds": [], "when": {"any": [{"field": "pulse", "op": "<", "value": 40}, {"field": "pulse", "op": ">", "value": 150}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('breathing-impaired', 1, 'Breathing impaired', 'high',
    'Respiratory rate below 10 per minute or SpO2 below 94 % (without respiratory depression, which is critical). Source: Spravato label boxed warning (respiratory depression); CTCAE v5.0 Hypoxia; the thresholds are conventions.',
    true, '{"kinds": [], "when": {"all": [{"any": [{"field": "respiratory_rate", "op": "<", "value": 10}, {"field": "spo2", "op": "<", "value": 94}]}, {"not": {"any": [{"field": "respiratory_rate", "op": "<", "value": 8}, {"field": "spo2", "op": "<", "value": 90}, {"field": "respiratory_depression", "op": "==", "value": true}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('suicidal-behaviour', 1, 'Suicidal intent, plan or recent behaviour', 'critical',
    'C-SSRS screener: suicidal thoughts with some intent (Q4) or with a plan (Q5), or suicidal behaviour in the past 3 months (Q6): do not leave the patient alone; immediate evaluation. Source: Spravato label boxed warning (suicidal thoughts and behaviours); C-SSRS screener triage.',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "suicidality"}, {"any": [{"field": "cssrs.q4", "op": "==", "value": true}, {"field": "cssrs.q5", "op": "==", "value": true}, {"field": "cssrs.q6", "op": "==", "value": true}]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', true);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('suicidal-ideation', 1, 'Suicidal ideation', 'high',
    'PHQ-9 item 9 of 1 or more, or a yes to C-SSRS screener Q1-Q3 (wish to be dead, suicidal thoughts, thoughts of a method), without intent, plan or recent behaviour: assess before discharge. Source: Spravato label boxed warning; PHQ-9; C-SSRS screener triage (Q1-Q3: convention).',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "suicidality"}, {"any": [{"field": "phq9_item9", "op": ">=", "value": 1}, {"field": "cssrs.q1", "op": "==", "value": true}, {"field": "cssrs.q2", "op": "==", "value": true}, {"field": "cssrs.q3", "op": "==", "value": true}]}, {"not": {"any": [{"field": "cssrs.q4", "op": "==", "value": true}, {"field": "cssrs.q5", "op": "==", "value": true}, {"field": "cssrs.q6", "op": "==", "value": true}]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('emergence-rescue-medication', 1, 'Emergence reaction needing rescue medication', 'high',
    'An emergence reaction treated with rescue medication (without a transfer to an emergency department, which is urgent). Source: ketamine prescribing information (emergence reactions).',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "emergence_reaction"}, {"field": "rescue_medication", "op": "==", "value": true}, {"not": {"field": "ed_transfer", "op": "==", "value": true}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('emergence-ed-transfer', 1, 'Emergence reaction: transfer to an emergency department', 'urgent',
    'An emergence reaction that led to a transfer to an emergency department. Source: ketamine prescribing information (emergence reactions).',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "emergence_reaction"}, {"field": "ed_transfer", "op": "==", "value": true}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('vomiting-while-sedated', 1, 'Vomiting while sedated', 'urgent',
    'Vomiting at MOAA/S 3 or less: risk of aspiration. Source: anaesthesia practice (protective airway reflexes with sedation); MOAA/S scale.',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "vomiting"}, {"field": "moaa_s", "op": "<=", "value": 3}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('fall', 1, 'Fall', 'high',
    'A fall during or after treatment. Source: convention (domain reference, second edition).',
    true, '{"kinds": ["adverse_event"], "when": {"field": "category", "op": "==", "value": "fall"}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('urological-symptoms', 1, 'Urological symptoms', 'high',
    'Dysuria, urinary frequency or pelvic pain (without haematuria, which is urgent): ketamine-associated cystitis is possible. Source: ketamine prescribing information (ulcerative and interstitial cystitis).',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "urological"}, {"field": "urological_symptoms", "op": "not_empty"}, {"not": {"field": "urological_symptoms", "op": "any_of", "value": ["haematuria"]}}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('urological-haematuria', 1, 'Haematuria', 'urgent',
    'Haematuria in a patient treated with ketamine: possible ketamine-associated ulcerative cystitis; refer to urology. Source: ketamine prescribing information (ulcerative and interstitial cystitis).',
    true, '{"kinds": ["adverse_event"], "when": {"all": [{"field": "category", "op": "==", "value": "urological"}, {"field": "urological_symptoms", "op": "any_of", "value": ["haematuria"]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('pregnancy-exposure', 1, 'Pregnancy exposure', 'high',
    'Exposure during pregnancy. Source: Spravato label (embryo-fetal toxicity).',
    true, '{"kinds": ["adverse_event"], "when": {"field": "category", "op": "==", "value": "pregnancy_exposure"}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('suspected-staff-diversion', 1, 'Suspected diversion by staff', 'urgent',
    'A stock incident of suspected diversion by an employee: the registrant must act on it, and a theft or significant loss also needs the DEA notice. Source: 21 CFR 1301.91-1301.92 (employee responsibility to report diversion).',
    true, '{"kinds": ["stock_incident"], "when": {"field": "incident_type", "op": "==", "value": "suspected_staff_diversion"}, "pattern": null, "group_by": "clinic", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('device-tampered', 1, 'Tampered device', 'high',
    'A damaged or tampered device: quarantine it and its lot; a product complaint to the manufacturer is due. Source: Spravato REMS; manufacturer product-complaint process.',
    true, '{"kinds": ["stock_incident"], "when": {"field": "incident_type", "op": "==", "value": "device_tampered"}, "pattern": null, "group_by": "clinic", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('pattern-patient-misuse', 1, 'Repeated misuse concerns for one patient', 'high',
    '2 or more misuse concerns about one patient within 90 days. Source: convention (the window); domain reference, second edition.',
    true, '{"kinds": ["misuse_concern"], "when": {"field": "concern_type", "op": "not_in", "value": ["staff_suspected", "inventory_discrepancy", "theft", "loss", "device_tampered"]}, "pattern": {"min_count": 2, "window_days": 90}, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('dast10-moderate', 1, 'DAST-10 score 3 or more', 'high',
    'A DAST-10 score of 3 or more (moderate or worse drug-use problems). Source: Skinner 1982; DAST-10 cut-off of 3 (moderate).',
    true, '{"kinds": ["misuse_concern"], "when": {"field": "dast10_score", "op": ">=", "value": 3}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition, protected)
VALUES ('dose-off-protocol', 1, 'IV ketamine dose off protocol', 'high',
    'IV ketamine above 1.0 mg/kg, or an infusion shorter than 40 minutes. Source: Sanacora et al., JAMA Psychiatry 2017 (APA consensus: 0.5 mg/kg over 40 minutes).',
    true, '{"kinds": [], "when": {"all": [{"field": "drug", "op": "==", "value": "ketamine_iv"}, {"any": [{"field": "dose_mg_per_kg", "op": ">", "value": 1.0}, {"field": "infusion_minutes", "op": "<", "value": 40}]}]}, "pattern": null, "group_by": "patient", "dea_deadlines": false}', false);

-- Every rule changed above gets its version row; the migrate command audits them.
INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected
FROM alert_rules r
WHERE NOT EXISTS (
    SELECT 1 FROM alert_rule_versions v WHERE v.rule_id = r.id AND v.version = r.version
);
