-- At the chair: what to do now, how soon someone must acknowledge, and holds.
--
-- guidance: what to do now, in one or two sentences; required on every rule from here on
-- and versioned with it (versions older than this migration had none: NULL there).
-- ack_minutes: the rule's acknowledgement deadline; NULL takes the severity's setting
-- (SAFETYREPORT_ACK_MINUTES_*). definition.hold marks a rule whose alert holds the dose
-- until a nurse records an override with a reason (the override columns on alerts).
-- Every rule changed here gets a new version; the migrate command audits them.

ALTER TABLE alert_rules
    ADD COLUMN guidance text CHECK (length(guidance) BETWEEN 1 AND 1000),
    ADD COLUMN ack_minutes integer CHECK (ack_minutes BETWEEN 1 AND 1440);
ALTER TABLE alert_rule_versions
    ADD COLUMN guidance text,
    ADD COLUMN ack_minutes integer;

ALTER TABLE alerts
    ADD COLUMN override_reason text CHECK (length(override_reason) BETWEEN 1 AND 2000),
    ADD COLUMN overridden_by bigint REFERENCES users (id),
    ADD COLUMN overridden_at timestamptz,
    ADD CONSTRAINT alerts_override_complete CHECK (
        (override_reason IS NULL) = (overridden_at IS NULL)
        AND (overridden_at IS NULL) = (overridden_by IS NULL));

-- The default rules. Minutes: the pre-dose hold and every critical rule need an
-- acknowledgement within minutes, whatever the severity's setting says.
UPDATE alert_rules r
SET guidance = g.guidance, ack_minutes = g.ack_minutes,
    definition = CASE WHEN g.hold THEN r.definition || '{"hold": true}'::jsonb
                      ELSE r.definition END,
    version = r.version + 1, updated_at = now()
FROM (VALUES
    ('bp-pre-dose-hold', 5, true,
     'Do not dose. Recheck blood pressure in 5 minutes; dose only if it is then within the limits (systolic 140 or less, 150 or less if 65 or over, and diastolic 90 or less), or after the prescriber has assessed the patient and you have recorded an override with the reason.'),
    ('bp-hypertensive-crisis', 5, false,
     'Give no further dose; stay with the patient, call the prescriber now and call 911 for transfer to an emergency department. Recheck blood pressure every 5 minutes until the patient is handed over.'),
    ('target-organ-symptom', 5, false,
     'Give no further dose; stay with the patient, recheck blood pressure and pulse now and call the prescriber. Call 911 for chest pain, shortness of breath, a neurological deficit, confusion or a seizure.'),
    ('respiratory-depression', 5, false,
     'Stop the session and stay with the patient: stimulate, open the airway, give oxygen and call the prescriber now. Call 911 (and start rescue breathing) if breathing does not recover at once or SpO2 stays below 90 %.'),
    ('sedation-loss-of-consciousness', 5, false,
     'Stay with the patient: check airway, breathing and pulse, give oxygen, place them on their side and call the prescriber now; give no further dose. Call 911 and start CPR if breathing or pulse is absent.'),
    ('suicidal-behaviour', 5, false,
     'Do not leave the patient alone; remove means of self-harm and get an immediate evaluation by the prescriber or a mental-health clinician. Call 911 if the patient is at imminent risk or tries to leave; no discharge until evaluated.'),
    ('serious-adverse-event', 10, false,
     'Make sure the patient is getting the care the event needs, and tell the prescriber and the safety officer today. The case is reportable: to the manufacturer or FDA MedWatch (Form 3500), or to the sponsor for an IND study.'),
    ('controlled-substance-theft-or-loss', 10, false,
     'Secure the remaining stock and the records, and tell the DEA registrant and the safety officer now. Written notice to the DEA field office is due within one business day of discovery, and DEA Form 106 within 45 days.'),
    ('bp-severe-hypertension', NULL, false,
     'Give no further dose; recheck blood pressure within 5 minutes and tell the prescriber now, and do not discharge until it has come down and the prescriber agrees. Call 911 if a severe headache, chest pain, shortness of breath, visual or neurological change or confusion appears.'),
    ('bp-markedly-abnormal', NULL, false,
     'Give no further dose; keep the patient seated and quiet, recheck blood pressure in 5 minutes and tell the prescriber. Do not discharge until it has come down and the prescriber agrees.'),
    ('heart-rate-severe', NULL, false,
     'Give no further dose; recheck pulse and blood pressure now and call the prescriber. Call 911 if the patient has chest pain, fainting, shortness of breath or confusion.'),
    ('hypotension-severe', NULL, false,
     'Lay the patient flat with legs raised, recheck blood pressure and pulse and call the prescriber now; give no further dose. Call 911 if the patient does not recover promptly or loses consciousness.'),
    ('sedation-moaa-s-1', NULL, false,
     'Stay with the patient: keep the airway open, monitor breathing and SpO2 continuously, give oxygen if SpO2 falls and call the prescriber now. Give no further dose; call 911 if breathing is impaired or the patient stops responding.'),
    ('vomiting-while-sedated', NULL, false,
     'Turn the patient on their side, clear the airway and stay with them, watching breathing and SpO2. Tell the prescriber now; call 911 if breathing is impaired or SpO2 stays low (possible aspiration).'),
    ('emergence-ed-transfer', NULL, false,
     'Send the dose, the time given and the vital signs with the patient to the emergency department, and tell the prescriber and the safety officer. Record the outcome when the hospital reports it.'),
    ('urological-haematuria', NULL, false,
     'Tell the prescriber, who should review further ketamine treatment and refer the patient to urology. Ask the patient to seek care at once for heavy bleeding, clots or being unable to pass urine.'),
    ('suspected-staff-diversion', NULL, false,
     'Secure the stock and the records, restrict the employee''s access to controlled substances and tell the DEA registrant now. A confirmed theft or significant loss also needs the DEA notice and Form 106.'),
    ('pattern-of-discrepancies', NULL, false,
     'Count the controlled-substance stock now with a second staff member, reconcile the records and tell the DEA registrant. A continuing pattern counts as significant loss: decide on the DEA notice and Form 106.'),
    ('pattern-blood-pressure-cluster', NULL, false,
     'Check the clinic''s blood-pressure cuffs and measuring technique, and review dosing and patient selection with the medical director. Follow up each patient whose pressure has not yet come down.'),
    ('pattern-patient-repeated-urgent', NULL, false,
     'Review this patient''s recent urgent events with the prescriber before the next session, and reconsider the dose or the treatment plan.'),
    ('bp-ctcae-grade-3', NULL, false,
     'Recheck blood pressure in 5 minutes and tell the prescriber if it stays this high. No dose while it is this high, and no discharge until it has come down.'),
    ('breathing-impaired', NULL, false,
     'Stimulate the patient and encourage deep breaths, give oxygen if SpO2 stays below 94 % and recheck within 5 minutes. Tell the prescriber if it does not improve; no further dose until it has.'),
    ('heart-rate', NULL, false,
     'Recheck pulse and blood pressure in 5 minutes and ask about chest pain, palpitations or dizziness; tell the prescriber if it persists. No further dose until it is back in range or the prescriber agrees.'),
    ('hypotension', NULL, false,
     'Keep the patient lying down and recheck blood pressure in 5 minutes; tell the prescriber if it persists. Do not let the patient stand or leave until it has recovered.'),
    ('sedation-moaa-s-3', NULL, false,
     'Stay with the patient and monitor SpO2, breathing and blood pressure continuously, rechecking MOAA/S every 5 to 15 minutes. Tell the prescriber if sedation deepens or does not lighten.'),
    ('not-resolved-at-120-minutes', NULL, false,
     'Keep monitoring; do not discharge until sedation and dissociation have resolved and the prescriber agrees. The patient must not drive today: arrange an escort home.'),
    ('emergence-rescue-medication', NULL, false,
     'Keep the patient in a quiet, low-stimulus room under continuous observation, with vital signs, until the reaction and the rescue medication''s sedation have resolved. Tell the prescriber, who should review the next session''s dose.'),
    ('suicidal-ideation', NULL, false,
     'Assess with the C-SSRS and tell the prescriber; no discharge until a clinician has reviewed the risk and a safety plan is in place. If intent, a plan or recent behaviour emerges, do not leave the patient alone.'),
    ('fall', NULL, false,
     'Check the patient for injury, especially to the head, recheck vital signs and tell the prescriber. The patient walks only with help until fully recovered; refer for assessment if injured.'),
    ('urological-symptoms', NULL, false,
     'Tell the prescriber, who should review ketamine treatment and arrange a urine test. Ask the patient to report blood in the urine at once.'),
    ('pregnancy-exposure', NULL, false,
     'Tell the prescriber, who should hold further doses until the patient has been counselled and the treatment reviewed. Report the exposure to the manufacturer''s pregnancy registry.'),
    ('device-tampered', NULL, false,
     'Do not use the device; quarantine it and the rest of its lot, record the lot number and tell the safety officer. A product complaint to the manufacturer is due.'),
    ('inventory-discrepancy', NULL, false,
     'Recount with a second staff member and reconcile against the dispensing records today, and tell the DEA registrant. Stock missing without explanation is a loss: DEA notice and Form 106.'),
    ('dose-off-protocol', NULL, false,
     'Confirm the dose, the weight and the infusion time with the prescriber; pause a running infusion until it is confirmed. Watch sedation, blood pressure and breathing closely.'),
    ('dast10-moderate', NULL, false,
     'Tell the prescriber before the next session, who should review the substance-use history and the treatment plan and offer a referral where indicated.'),
    ('pattern-patient-misuse', NULL, false,
     'Review the patient''s misuse concerns with the prescriber before the next session, and consider closer supervision or a change to the treatment plan.'),
    ('dissociation-present', NULL, false,
     'Expected after a dose: keep the patient in a quiet room under observation until it resolves. Tell the prescriber if it is distressing or lasts past 2 hours.')
) AS g (id, ack_minutes, hold, guidance)
WHERE r.id = g.id AND r.clinic_ids IS NULL;

-- A clinic override replaces its network rule at its clinics: it inherits what to do,
-- the minutes and the hold.
UPDATE alert_rules o
SET guidance = b.guidance, ack_minutes = b.ack_minutes,
    definition = CASE WHEN b.definition @> '{"hold": true}'::jsonb
                      THEN o.definition || '{"hold": true}'::jsonb ELSE o.definition END,
    version = o.version + 1, updated_at = now()
FROM alert_rules b
WHERE o.overrides_rule_id = b.id AND o.guidance IS NULL AND b.guidance IS NOT NULL;

-- Any other rule (a clinic's own) says honestly that nobody has written its guidance.
UPDATE alert_rules
SET guidance = 'No guidance has been written for this rule yet: follow the clinic''s protocol and tell the prescriber and the safety officer.',
    version = version + 1, updated_at = now()
WHERE guidance IS NULL;

ALTER TABLE alert_rules ALTER COLUMN guidance SET NOT NULL;

INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, guidance, ack_minutes)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected, r.guidance,
       r.ack_minutes
FROM alert_rules r
WHERE NOT EXISTS (
    SELECT 1 FROM alert_rule_versions v WHERE v.rule_id = r.id AND v.version = r.version
);

-- Changes proposed before guidance existed get the guidance and minutes of the rule they
-- change (or override), so that they can still be read and approved.
UPDATE alert_rule_changes ch
SET proposal = ch.proposal
    || jsonb_build_object('guidance', coalesce(
           (SELECT guidance FROM alert_rules WHERE id = ch.rule_id),
           (SELECT guidance FROM alert_rules WHERE id = ch.overrides_rule_id),
           'No guidance has been written for this rule yet: follow the clinic''s protocol and tell the prescriber and the safety officer.'))
    || jsonb_build_object('ack_minutes', coalesce(
           (SELECT ack_minutes FROM alert_rules WHERE id = ch.rule_id),
           (SELECT ack_minutes FROM alert_rules WHERE id = ch.overrides_rule_id)))
WHERE NOT ch.proposal ? 'guidance';
