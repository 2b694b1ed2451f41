-- The DEA clocks of a theft or loss (21 CFR 1301.76(b)) in the clinic's time zone.
--
-- Every clinic has an IANA time zone (NULL until set: its DEA clocks are then counted
-- in UTC, and say so). Each theft or loss is an alert of its own (grouped by report),
-- with its own clocks and the zone they were counted in; resolving one records when the
-- DEA was notified and the Form 106 number, or why it was not reportable.

-- Validated by the service (zoneinfo) when it is set; the check only keeps out junk.
ALTER TABLE clinics ADD COLUMN timezone text
    CHECK (timezone ~ '^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$' AND length(timezone) <= 64);

ALTER TABLE alerts DROP CONSTRAINT alerts_group_by_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_group_by_check
    CHECK (group_by IN ('clinic', 'patient', 'report'));
ALTER TABLE alerts
    -- The zone dea_notice_due and dea_form106_due were counted in; NULL: UTC, the
    -- clinic had none.
    ADD COLUMN dea_clock_zone text,
    ADD COLUMN dea_notified_on date,
    ADD COLUMN dea_form106_number text CHECK (length(dea_form106_number) BETWEEN 1 AND 64),
    ADD COLUMN dea_not_reportable_reason text
        CHECK (length(dea_not_reportable_reason) BETWEEN 1 AND 2000);

-- The theft-or-loss rule groups by report: every incident its own alert and clocks. Its
-- clinic overrides that grouped by clinic do too (an override may not group more
-- coarsely than the protected rule, so they would otherwise stop applying).
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    description = 'Theft or loss of ketamine or esketamine (DEA Schedule III), as a stock incident (or a misuse concern filed before stock incidents existed). Each incident is an alert of its own: written notice to the DEA field office by the end of the next business day after discovery (in the clinic''s time zone, skipping weekends and US federal holidays), and DEA Form 106 within 45 days. Source: 21 CFR 1301.76(b).',
    definition = jsonb_set(definition, '{group_by}', '"report"')
WHERE id = 'controlled-substance-theft-or-loss';
UPDATE alert_rules SET version = version + 1, updated_at = now(),
    definition = jsonb_set(definition, '{group_by}', '"report"')
WHERE overrides_rule_id = 'controlled-substance-theft-or-loss'
  AND definition ->> 'group_by' = 'clinic'
  AND jsonb_typeof(definition -> 'pattern') IS DISTINCT FROM 'object';

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
